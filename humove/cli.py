"""`humove` command line: run pipelines, inspect runs, and the motion / trainer tools."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.markup import escape

# Imports of the engine, Arrow and the model libraries happen inside the commands that need them: `humove --help`
# and `humove status` start in a fraction of a second (tests/test_cli.py checks which modules they import).
# Help is plain text: typer's rich help shows a value (`<bool>`) after every flag.
app = typer.Typer(help="Build the HuMoVe dataset on Ray and train EchoMotion on its shards.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False, rich_markup_mode=None)
console = Console(stderr=True)


def _out() -> Console:
    """stdout for tables: the terminal's width on a terminal; written to a file or a pipe (logs, `| less`), wide
    enough that a status table is never cut at rich's default of 80 columns."""
    return Console() if sys.stdout.isatty() else Console(width=max(Console().width, 250))


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"humove {version('humove')}")
        raise typer.Exit()


@app.callback()
def _main(_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                        help="print humove's version and exit")) -> None:
    """Build the HuMoVe dataset on Ray and train EchoMotion on its shards."""


class RichProgress:
    """Per-stage bar with item counts, rate, and ok / rejected / error tallies (the callbacks of
    `humove.engine.Progress`). A finished stage shows the counts `humove status` shows; a stage with nothing to do
    gets one line instead of an empty bar."""

    def __init__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bars = Progress(
            TextColumn("[bold]{task.fields[stage]:<10}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[tally]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.tally: dict[str, dict[str, int]] = {}
        self.done: dict[str, int] = {}

    def message(self, text: str) -> None:
        console.print(f"[yellow]{escape(text)}", soft_wrap=True)

    def start(self, stage: str, total: int, done: int = 0) -> None:
        self.done[stage] = done
        if not total:  # `finish` says so in one line
            return
        if not self.bars.live.is_started:
            self.bars.start()
        self.tally[stage] = {"ok": 0, "rejected": 0, "error": 0}
        self.tasks[stage] = self.bars.add_task(stage, total=total, stage=stage, rate="", tally="")

    def grow(self, stage: str, items: int) -> None:
        if not items:
            return
        task_id = self.tasks.get(stage)
        if task_id is None:
            self.start(stage, items, self.done.get(stage, 0))
        else:
            self.bars.update(task_id, total=self.bars.tasks[task_id].total + items)

    def advance(self, stage: str, records: list[dict], items: int) -> None:
        if stage not in self.tasks:
            return
        tally = self.tally[stage]
        for record in records:
            tally[record["status"]] = tally.get(record["status"], 0) + 1
        task_id = self.tasks[stage]
        task = self.bars.tasks[task_id]
        rate = f"{(task.completed + items) / max(task.elapsed or 1e-9, 1e-9):.2f} it/s"
        self.bars.update(task_id, advance=items, rate=rate,
                         tally=f"ok {tally['ok']} · rejected {tally['rejected']} · error {tally['error']}")

    def finish(self, stage: str, summary=None) -> None:
        from humove.progress import status_counts

        counts = status_counts(summary) if summary else ""
        task_id = self.tasks.get(stage)
        if task_id is not None:
            self.bars.update(task_id, completed=self.bars.tasks[task_id].total,
                             **({"tally": counts} if counts else {}))
        elif stage in self.done:
            console.print(f"stage {stage}: nothing to do ({self.done[stage]} done{'; ' + counts if counts else ''})",
                          markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bars.live.is_started:
            self.bars.stop()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def _fail_os(text: str) -> None:
    """One line for an OS refusal (disk full, read-only, permission): `humove: <stage>: <path>: <reason>`, and
    for each line of a run that cannot go on (a stage that cannot set up, resources the cluster lacks)."""
    for line in text.splitlines():
        console.print(f"humove: {line}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


PROGRESS_HELP = ("seconds between the progress lines printed when output is not a terminal, and written to "
                 "<run_dir>/run.log (default: $HUMOVE_PROGRESS_EVERY_S or 30)")


METRICS_HELP = ("serve the run's per-stage progress as Prometheus metrics at http://HOST:PORT/metrics while it runs "
                "(default: the pipeline's run.metrics_port; none)")
METRICS_HOST_HELP = ("the address the metrics endpoint listens on (default: run.metrics_host, 127.0.0.1: this "
                     "machine only); a node's cluster address to let Prometheus scrape it")


DEBUG_HELP = "show the full traceback of an error, and humove's debug log on stderr (e.g. Ray lines kept off screen)"


@app.command()
def run(
    pipeline: Path = typer.Argument(..., help="pipeline YAML, e.g. pipelines/demo.yaml"),
    run_dir: str = typer.Option(..., "--run-dir", help="local folder or s3:// / gs:// prefix"),
    ray_address: str = typer.Option(None, "--ray-address", help="join a Ray cluster ('auto'); default: embedded"),
    executor: Literal["ray", "local"] = typer.Option(
        None, "--executor", help="ray, or local (in-process, for debugging); default: the pipeline's run.executor"),
    force: list[str] = typer.Option([], "--force", metavar="STAGE", help="re-run this stage and everything after it"),
    until: str = typer.Option(None, "--until", metavar="STAGE", help="stop after this stage (a stage of the "
                              "pipeline; `humove stages` lists the built-in ones)"),
    start: str = typer.Option(None, "--from", metavar="STAGE", help="start at this stage, leaving out the stages "
                              "before it, e.g. --from ingest --set ingest.source=DIR (your own videos)"),
    set_: list[str] = typer.Option([], "--set", metavar="STAGE.KEY=VALUE", help="override a config value (YAML); "
                                                                                 "repeat for several"),
    break_lock: bool = typer.Option(False, "--break-lock", help="remove a dead run's lock (object stores)"),
    shared_fs: bool = typer.Option(False, "--shared-fs", help="the local run dir is mounted on every Ray node at "
                                                              "the same path (required on a multi-node cluster)"),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    progress_every: float = typer.Option(None, "--progress-every", min=0.001, help=PROGRESS_HELP),
    metrics_port: int = typer.Option(None, "--metrics-port", min=1, max=65535, metavar="PORT", help=METRICS_HELP),
    metrics_host: str = typer.Option(None, "--metrics-host", metavar="HOST", help=METRICS_HOST_HELP),
) -> None:
    """Run a pipeline on a run dir, then print its status and write <run_dir>/report.html; re-running resumes."""
    run_pipeline(pipeline, run_dir, ray_address, executor, force, until, set_, break_lock, debug=debug, start=start,
                 shared_fs=shared_fs, progress_every_s=progress_every, metrics_port=metrics_port,
                 metrics_host=metrics_host)


def _display(progress_every_s: float):
    """Bars on a terminal; where output goes to a file (nohup, Slurm, Kubernetes logs) bars would show only at
    the end, so plain lines every `progress_every_s` seconds instead."""
    from humove.progress import ProgressLines

    if console.is_terminal and sys.stdout.isatty():
        return RichProgress()
    return ProgressLines(lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
                         progress_every_s)


def run_pipeline(pipeline, run_dir, ray_address=None, executor=None, force=(), until=None, overrides=(),
                 break_lock=False, debug=False, start=None, shared_fs=False, progress_every_s=None,
                 metrics_port=None, metrics_host=None) -> str:
    """Run, print the status table, write the report; returns the report's path."""
    from humove import engine
    from humove.config import ConfigError
    from humove.executors import ClusterError
    from humove.lock import RunLockedError
    from humove.progress import progress_interval
    from humove.run_config import load_run_pipeline
    from humove.worker import StageSetupError

    if debug:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logging.getLogger("humove").addHandler(handler)
        logging.getLogger("humove").setLevel(logging.DEBUG)
    try:
        config, stages, settings = load_run_pipeline(pipeline, run_dir, list(overrides), start=start)
        progress_every_s = progress_interval(progress_every_s)
        progress = _display(progress_every_s)
        runner = engine.Runner(config, stages, run_dir, executor=executor, ray_address=ray_address,
                               force=list(force), until=until, break_lock=break_lock, progress=progress,
                               shared_fs=shared_fs, progress_every_s=progress_every_s, settings=settings,
                               metrics_port=metrics_port, metrics_host=metrics_host)
        console.print(f"[bold]humove[/bold] pipeline [cyan]{config.name}[/cyan] → {runner.run_dir} "
                      f"(executor: {runner.executor_name})")
        try:
            runner.run()
        finally:
            progress.close()
    except KeyboardInterrupt:
        if debug:
            raise
        console.print("humove: interrupted; finished batches are kept, run the same command again to resume",
                      markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except StageSetupError as exc:
        if debug:  # where the stage raised (in a Ray actor, too), before the driver's traceback
            console.print(exc.details, markup=False, highlight=False, soft_wrap=True)
            raise
        _fail_os(str(exc))
    except (engine.RunStorageError, ClusterError) as exc:
        if debug:
            raise
        _fail_os(str(exc))
    except (ConfigError, RunLockedError, ValueError, ImportError) as exc:
        if debug:
            raise
        _fail(str(exc))
    except OSError as exc:  # e.g. the pipeline file cannot be read
        if debug:
            raise
        _fail_os(": ".join(str(part) for part in (exc.filename, exc.strerror or exc) if part))
    _print_status(runner.ledger, debug)
    return _write_report(runner.ledger, None, debug)


@app.command()
def demo(run_dir: str = typer.Option("runs/demo", "--run-dir"),
         executor: Literal["ray", "local"] = typer.Option(None, "--executor", help="default: ray"),
         train_steps: int = typer.Option(40, "--train-steps", help="steps of the tiny model (0: build only)"),
         debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP)) -> None:
    """The whole main job offline: rendered videos with known motion → paired video + motion + caption shards
    (pipelines/demo.yaml), motion error against the known motion, a tiny EchoMotion trained on the shards and
    sampled once."""
    from humove.config import builtin_pipeline
    from humove.demo import evaluate_demo_motion, train_and_sample
    from humove.schemas.shard import DEFAULT_OUTPUT_DIR
    from humove.storage import Storage

    run_pipeline(builtin_pipeline("demo.yaml"), run_dir, executor=executor, debug=debug)
    _out().print(evaluate_demo_motion(run_dir))
    out = _write_report(_inspected_ledger(run_dir, None, False), None, debug)  # now with the motion error
    lines = [f"shards: {Storage(run_dir).join(DEFAULT_OUTPUT_DIR)}", f"report: {out}",
             f"motion error: {Storage(run_dir).join('motion_eval.json')}"]
    if train_steps:
        train_dir, sample_dir = train_and_sample(run_dir, console, steps=train_steps)
        lines += [f"checkpoint: {train_dir / 'checkpoints'}", f"sample (joint mode): {sample_dir}"]
    console.print("\n[bold green]demo done.[/bold green]\n" + "\n".join(lines) + f"\ninspect: humove status {run_dir}")


@app.command("eval-motion")
def eval_motion(pred: str = typer.Argument(..., help="run dir, dataset folder or folder of *.motion.npz"),
                truth: str = typer.Argument(..., help="the same kinds, or a folder of source-video motion such as "
                                                      "the demo's <run_dir>/samples; 'demo' = that folder"),
                out: str = typer.Option(None, "--out", help="also write the results as JSON here")) -> None:
    """MPJPE, PA-MPJPE and acceleration error (mm, 24 joints), foot sliding (m/s) where the truth's feet stand and
    depth drift (m) between two motion sets, matched by key (a run dir's clips against source-video motion: by
    video and time)."""
    from humove.demo import motion_table
    from humove.evaluation import compare_sets, ground_truth_for, load_motion_set, write_results

    try:
        predicted = load_motion_set(pred)
        known = ground_truth_for(pred, truth, predicted)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    rows = compare_sets(predicted, known)
    if not rows:
        _fail(f"no key is in both sets: {_some_keys(predicted)} predicted, {_some_keys(known)} known (a run dir is "
              "keyed by clip id, a dataset by sample key, a folder by file name without .motion.npz)")
    _out().print(motion_table(rows, f"{pred} against {truth}"))
    if out:
        write_results(rows, out)
        console.print(f"results: {out}")


def _some_keys(motions: dict) -> str:
    keys = sorted(motions)
    return f"{len(keys)}" + (f" (e.g. {', '.join(keys[:3])})" if keys else "")


PIPELINE_HELP = "the run's pipeline file: read its custom stages with their own classes"
ALLOW_CUSTOM_HELP = "import the custom stage classes that <run_dir>/run.json names (only for run dirs you trust)"


def _inspected_ledger(run_dir: str, pipeline: Path | None, allow_custom_stages: bool):
    """A run dir opened for reading. Its run.json names stage classes, but only built-in ones are imported:
    custom stages are read by their stored columns unless the user names the pipeline or opts in."""
    from humove.ledger import Ledger

    classes = None
    if pipeline:
        from humove.config import load_pipeline

        classes = {stage.name: stage.cls for stage in load_pipeline(pipeline)[1]}
    return Ledger(run_dir, stage_classes=classes, allow_custom_stages=allow_custom_stages)


def _inspect(action, debug: bool):
    """Run a read of a run dir, turning its expected failures into one line."""
    try:
        return action()
    except OSError as exc:
        if debug:
            raise
        if isinstance(exc, FileNotFoundError) and exc.filename is None:  # "not a humove run dir"
            _fail(str(exc))
        _fail_os(": ".join(str(part) for part in (exc.filename, exc.strerror or exc) if part))
    except (ImportError, ValueError) as exc:  # unknown stage, missing client, corrupt part (names the file)
        if debug:
            raise
        _fail(str(exc))


def _print_status(ledger, debug: bool) -> None:
    from humove.report import status_table

    _out().print(status_table(_inspect(ledger.summary, debug)))


def _write_report(ledger, out: str | None, debug: bool, options=None) -> str:
    from humove.report import write_report

    target = out or ledger.storage.join("report.html")
    _inspect(lambda: write_report(ledger, target, options), debug)
    console.print(f"report: {target}")
    return target


@app.command()
def status(run_dir: str = typer.Argument(..., help="run dir"),
           pipeline: Path = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
           allow_custom_stages: bool = typer.Option(False, "--allow-custom-stages", help=ALLOW_CUSTOM_HELP),
           debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP)) -> None:
    """Per stage: ok / rejected by reason / error / quarantined / pending."""
    ledger = _inspect(lambda: _inspected_ledger(run_dir, pipeline, allow_custom_stages), debug)
    _print_status(ledger, debug)


@app.command()
def report(run_dir: str = typer.Argument(..., help="run dir"),
           out: str = typer.Option(None, "--out", help="HTML path (default <run_dir>/report.html; its previews go "
                                   "to the folder beside it: report.html → report/)"),
           clips: int = typer.Option(6, "--clips", min=0, help="kept clips shown with previews"),
           examples: int = typer.Option(2, "--examples", min=0, help="refused clips shown per stage and reason"),
           pipeline: Path = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
           allow_custom_stages: bool = typer.Option(False, "--allow-custom-stages", help=ALLOW_CUSTOM_HELP),
           debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP)) -> str:
    """Write the HTML report: funnel, rejection reasons, histograms with thresholds, clip previews with the fitted
    motion (previews are cached: a report written again renders only what changed)."""
    from humove.report import ReportOptions

    ledger = _inspect(lambda: _inspected_ledger(run_dir, pipeline, allow_custom_stages), debug)
    return _write_report(ledger, out, debug, ReportOptions(kept_clips=clips, examples_per_reason=examples))


@app.command("config")
def show_config(run_dir: str = typer.Argument(..., help="run dir"),
                unset: list[str] = typer.Option([], "--unset", help="drop a kept --set value: STAGE.KEY"),
                debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP)) -> None:
    """Print the config the run dir was last built with (YAML; secrets masked) and the --set values later runs
    keep; --unset drops a kept value."""
    from humove.ledger import Ledger
    from humove.lock import RunLockedError
    from humove.run_config import config_yaml, recorded_config, unset_setting

    for key in unset:
        try:
            value = _inspect(lambda key=key: unset_setting(run_dir, key), debug)
        except RunLockedError as exc:
            _fail(str(exc))
        console.print(f"dropped --set {key}={value}: the next run uses the pipeline's value", markup=False,
                      highlight=False, soft_wrap=True)
    text = _inspect(lambda: config_yaml(recorded_config(Ledger(run_dir))), debug)
    sys.stdout.write(text)


@app.command("stages")
def list_stages() -> None:
    """List the built-in stages with their version and resources."""
    from rich.table import Table

    from humove.registry import BUILTIN_STAGES, load_stage_class

    table = Table("stage", "version", "class", "resources", "description")
    for name in BUILTIN_STAGES:
        cls = load_stage_class(name)
        res = cls.resources
        table.add_row(name, str(cls.version), BUILTIN_STAGES[name],
                      f"cpu {res.num_cpus} gpu {res.num_gpus} batch {res.batch_size}", cls.description)
    _out().print(table)


def _register_tool_commands() -> None:
    """Motion and trainer tools live with their libraries; their heavy imports happen inside each command."""
    from humove.model.cli import TRAIN_CONTEXT, cache_command, ingest_motion_command, sample_command, train_command
    from humove.motion.cli import smpl_app

    app.add_typer(smpl_app, name="smpl", help="SMPL body model files: convert official pickles once, inspect.")
    app.command("train", context_settings=TRAIN_CONTEXT)(train_command)
    app.command("sample")(sample_command)
    app.command("ingest-motion")(ingest_motion_command)
    app.command("cache-encodings")(cache_command)


_register_tool_commands()


def main() -> None:
    """Console entry (`humove`, `python -m humove.cli`).

    Ends the process with `os._exit` once the command has finished, its output is flushed and Ray is shut down:
    in rare runs a native library's static destructor aborted at interpreter exit ("terminate called without an
    active exception") after all work had been written, turning a finished run into a failed exit code.
    """
    import logging
    import os

    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # `python -m humove.cli`
    main()
