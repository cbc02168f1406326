"""The CLI under real conditions: started from a terminal, interrupted with Ctrl-C, refused by the OS, pointed at
bad run dirs, and inspecting run dirs it must not trust. Ray runs start the real CLI as the foreground job of a
pseudo-terminal, as an interactive shell does; the others call the CLI in-process."""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_engine import fail_writes_into
from toy_stages import SQUARE_SCHEMA
from typer.testing import CliRunner

from humove.cli import app
from humove.ledger import Ledger

REPO = Path(__file__).resolve().parent.parent


def toy_pipeline(tmp_path: Path, executor: str = "local", count: int = 4, square: dict | None = None) -> Path:
    path = tmp_path / "pipeline.yaml"
    stages = [{"stage": "toy_stages:ToySource", "config": {"count": count}},
              {"stage": "toy_stages:ToySquare", "config": square or {}}]
    path.write_text(yaml.safe_dump({"name": "toy", "run": {"executor": executor}, "stages": stages}))
    return path


def humove(*args: str):
    """The CLI in-process (no `os._exit`), its stdout and stderr captured."""
    return CliRunner().invoke(app, [str(a) for a in args])


# A terminal ---------------------------------------------------------------------------------------------------

class Terminal:
    """A command as the foreground job of a new pseudo-terminal (its controlling terminal, like a shell's)."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a new session whose controlling terminal is the pty
            try:
                os.chdir(REPO)
                os.execve(args[0], args, env)
            finally:
                os._exit(127)
        self.output = b""
        self.code: int | None = None

    def read(self, seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, min(0.2, deadline - time.time())))
            if ready:
                try:
                    self.output += os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    return

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after `timeout` seconds."""
        deadline = time.time() + timeout
        while self.code is None and time.time() < deadline:
            self.read(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        self.read(0.2)
        return self.code

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")  # the terminal sends SIGINT to its foreground process group

    def text(self) -> str:
        """What the terminal showed, without colour and cursor codes."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", self.output.decode(errors="replace"))

    def close(self) -> None:
        if self.code is None:
            os.killpg(self.pid, signal.SIGKILL)  # a hung run and the Ray processes in its group
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def terminal_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment, with a fake `ffmpeg` first on PATH that, like the real one, touches its
    terminal: from a background process group (a Ray worker) the kernel stops it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ffmpeg"
    fake.write_text("#!/bin/sh\n# fake ffmpeg for the tests: reads its terminal, as the real one sets it up\n"
                    "if [ -t 0 ]; then read -r line; fi\nexit 1\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TERM": "xterm",
            "COLUMNS": "120"}


def test_a_run_started_from_a_terminal_does_not_hang_and_logs_no_ray_error(tmp_path):
    """Workers run `ffmpeg` at set-up (as `import scenedetect` does); from a terminal that used to stop them.
    The same run also shows that Ray logs no error line (`core_worker.cc ... constructor arguments in the object
    store`) and that `humove run` writes the report."""
    pipeline = toy_pipeline(tmp_path, "ray", count=4, square={"setup_command": ["ffmpeg", "-v", "quiet"]})
    run_dir = tmp_path / "run"
    terminal = Terminal([sys.executable, "-m", "humove.cli", "run", str(pipeline), "--run-dir", str(run_dir)],
                        terminal_env(tmp_path))
    try:
        code = terminal.wait(timeout=240)
    finally:
        terminal.close()
    output = terminal.text()
    assert code == 0, f"the run did not finish (exit {code}):\n{output}"
    assert {s.stage: s.ok for s in Ledger(str(run_dir)).summary()} == {"toy_source": 4, "toy_square": 8}
    assert "constructor arguments in the object store" not in output, output
    assert " E " not in output and "ERROR" not in output, output
    assert (run_dir / "report.html").read_text().count("toy_square") >= 1
    assert f"report: {run_dir / 'report.html'}" in output.replace("\n", "")


def test_ctrl_c_stops_a_ray_run_within_seconds_and_keeps_finished_batches(tmp_path):
    # Enough work that the run cannot end between the first finished batch and the Ctrl-C: with 12 videos a loaded
    # machine once finished the whole run first (exit 0). 40 videos of 2 s each is about 40 s on 2 cores; the test
    # interrupts after the first batch, so it does not wait for them.
    count = 40
    pipeline = toy_pipeline(tmp_path, "ray", count=count, square={"slow_seconds": 2.0})
    run_dir = tmp_path / "run"
    terminal = Terminal([sys.executable, "-m", "humove.cli", "run", str(pipeline), "--run-dir", str(run_dir)],
                        terminal_env(tmp_path))
    try:
        deadline = time.time() + 240
        parts = run_dir / "toy_square"
        while time.time() < deadline and not list(parts.glob("part-*.parquet")):
            assert terminal.wait(timeout=0.5) is None, f"the run ended early:\n{terminal.text()}"
        assert list(parts.glob("part-*.parquet")), f"no batch finished:\n{terminal.text()}"
        interrupted = time.time()
        terminal.ctrl_c()
        code = terminal.wait(timeout=30)
        seconds = time.time() - interrupted
    finally:
        terminal.close()
    output = terminal.text()
    assert code == 130, f"exit {code} after Ctrl-C:\n{output}"
    assert seconds < 10, f"Ctrl-C took {seconds:.1f} s"
    assert "humove: interrupted; finished batches are kept" in output and "Traceback" not in output, output
    finished = Ledger(str(run_dir)).records("toy_square")
    assert 0 < finished.num_rows < 2 * count and set(finished["status"].to_pylist()) == {"ok"}


# OS errors and bad run dirs -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("folder", "error", "where", "stage"), [
    ("toy_square", OSError(errno.ENOSPC, "No space left on device"), "fsync", "toy_square"),
    ("", OSError(errno.EROFS, "Read-only file system"), "open", "run"),
    ("toy_source", PermissionError(errno.EACCES, "Permission denied"), "open", "toy_source"),
])
def test_os_errors_print_one_line_naming_stage_path_and_reason(tmp_path, monkeypatch, folder, error, where, stage):
    run_dir = tmp_path / "run"
    fail_writes_into(monkeypatch, f"{run_dir}/{folder}", error, where)
    result = humove("run", toy_pipeline(tmp_path), "--run-dir", run_dir)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(f"humove: {stage}: {run_dir}/{folder}") and lines[-1].endswith(error.strerror)
    assert "Traceback" not in result.output and 'File "' not in result.output, result.output
    assert [line for line in lines if line.startswith("humove: ")] == [lines[-1]]
    assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name]
    debug = humove("run", toy_pipeline(tmp_path), "--run-dir", run_dir, "--debug")
    assert isinstance(debug.exception, RuntimeError) and isinstance(debug.exception.__cause__, OSError)


def test_bad_options_and_run_dirs_fail_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    result = humove("run", toy_pipeline(tmp_path), "--run-dir", run_dir, "--executor", "bogus")
    assert result.exit_code == 2 and "'bogus' is not one of 'ray', 'local'" in result.output, result.output
    assert not run_dir.exists(), "nothing may be written before the options are checked"
    result = humove("run", toy_pipeline(tmp_path), "--run-dir", run_dir, "--set", "toy_square.nope=1")
    assert result.exit_code == 2 and not run_dir.exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    result = humove("run", toy_pipeline(tmp_path), "--run-dir", a_file)
    assert result.exit_code == 2 and f"run dir {a_file} is a file" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_run_writes_the_report_and_status_names_a_corrupt_part(tmp_path):
    run_dir = tmp_path / "run"
    result = humove("run", toy_pipeline(tmp_path), "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert "toy_square" in (run_dir / "report.html").read_text()
    bad = run_dir / "toy_square" / "part-00000000000000000000-corrupt0.parquet"
    bad.write_bytes(b"not parquet")
    result = humove("status", run_dir)
    assert result.exit_code == 2 and str(bad) in result.output.replace("\n", ""), result.output
    assert "Traceback" not in result.output


# Run dirs that name code ------------------------------------------------------------------------------------

def test_status_and_report_never_import_the_code_a_run_dir_names(tmp_path, monkeypatch):
    """A crafted run.json names a module that would run code at import: inspecting the run dir must not."""
    marker = tmp_path / "imported.txt"
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "crafted_stage.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "from toy_stages import ToySquare as Crafted\n")
    monkeypatch.syspath_prepend(str(code_dir))
    run_dir = tmp_path / "run"
    ledger = Ledger(str(run_dir))
    ledger.write_run_info({"pipeline": "crafted", "max_attempts": 3,
                           "stages": [{"name": "crafted", "class": "crafted_stage:Crafted"}]})
    rows = [{"id": f"c{i}", "input_id": f"c{i}", "status": "ok", "attempt": 1, "stage_version": "1",
             "schema_version": 1, "created_at": _utc(0), "video_id": f"v{i}", "square": i} for i in range(3)]
    ledger.append("crafted", SQUARE_SCHEMA.to_table(rows))
    result = humove("status", run_dir)
    assert result.exit_code == 0 and "crafted" in result.output, result.output
    assert humove("report", run_dir).exit_code == 0
    assert not marker.exists(), "inspecting a run dir imported the code its run.json names"
    assert json.loads((run_dir / "run.json").read_text())["stages"][0]["class"] == "crafted_stage:Crafted"
    # With the explicit opt-in it is imported (which proves the module above would have run).
    result = humove("status", run_dir, "--allow-custom-stages")
    assert result.exit_code == 0 and marker.exists(), result.output


def _utc(milliseconds: int):
    import datetime as dt

    return dt.datetime.fromtimestamp(milliseconds / 1000, tz=dt.UTC)


# Your own videos on any pipeline ----------------------------------------------------------------------------------

def test_own_videos_go_through_a_pipeline_that_starts_earlier_with_from_ingest(tmp_path):
    """`--set ingest.source=DIR` on demo.yaml (which starts at keywords) is refused before anything is written, with
    the command that works; that command (`--from ingest`) probes the user's own videos."""
    from fixtures_video import write_video

    videos = tmp_path / "my videos"
    videos.mkdir()
    mine = {write_video(str(videos / "walk.mp4"), frames=36, fps=24, width=96, height=80),
            write_video(str(videos / "jump.mp4"), frames=48, fps=24, width=96, height=80)}  # two contents
    demo, run_dir = REPO / "pipelines" / "demo.yaml", tmp_path / "run"
    refused = humove("run", demo, "--run-dir", run_dir, "--executor", "local", "--set", f"ingest.source={videos}")
    assert refused.exit_code == 2, refused.output
    assert "'ingest' works on the records of 'download' and never reads source — to start at ingest, add " \
           "`--from ingest`" in refused.output
    assert not run_dir.exists()
    done = humove("run", demo, "--run-dir", run_dir, "--executor", "local", "--from", "ingest", "--until", "ingest",
                  "--set", f"ingest.source={videos}")
    assert done.exit_code == 0, done.output
    records = Ledger(str(run_dir)).records("ingest").to_pylist()
    assert {r["source_path"] for r in records} == mine and {r["status"] for r in records} == {"ok"}
    assert [s["name"] for s in json.loads((run_dir / "run.json").read_text())["stages"]][:2] == ["ingest", "shots"]
