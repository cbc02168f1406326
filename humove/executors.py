"""Executors run a map stage's worker over its pending items and yield finished records batch by batch, as
they complete, so the driver can persist them at once (a crash keeps completed work).

- `LocalExecutor`: in-process, one worker, for debugging and small jobs.
- `RayExecutor`: Ray Data streaming `map_batches` over an actor pool (the stage's model loads once per actor;
  GPU stages get a pool of `concurrency` actors with `num_gpus` each; a pool grows with the cluster up to
  `max_concurrency`, `pool_limit`). A stage with `prepare_resources` gets two operators in the same streaming
  dataset: `prepare` on CPU actors, then the model's pool on the prepared rows, so a GPU never waits for decoding.
  Works on the embedded Ray (`ray.init()`) or a cluster (`--ray-address auto`). The driver's environment
  (`config.worker_environment`) reaches a cluster's workers through Ray's `runtime_env` in `ray.init` (the
  embedded Ray's inherit it), and each actor pool gets what changed since Ray started.

Before the first stage runs, `check_resources` holds every stage's request against what the executor has: on
Ray, each worker's CPUs, GPUs and memory must fit one alive node and a fixed pool of GPU workers the cluster's
total (Ray itself would wait forever, logging only an autoscaler line); locally, GPUs asked for need CUDA here.
`check_run_dir` refuses a local run dir on a cluster of several nodes unless it is shared (`--shared-fs`) and
every node sees it.

What Ray says about failures humove handles (a lost node, a worker that died, a retried task) goes to the
`humove.ray` debug log, with one line of ours per lost node; a Ray that does not start, or a cluster that does
not answer, is one `RayStartError` line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from humove.items import WorkFile, envelope_rows, read_groups
from humove.registry import load_stage_class
from humove.stage import MapStage, Resources
from humove.worker import PrepareWorker, StageSetupError, StageWorker, finalize, make_stage

EXECUTORS = ("ray", "local")
WORKER_RESTARTS = 2  # a worker process that dies (segfault, OOM kill) is restarted this often, then its batch fails
RECHECK_S = 5.0      # how often a pre-flight waiting for resources looks at the cluster again
WAIT_NOTICE_S = 30.0  # and how often it says that it is still waiting
READERS = 2  # tasks reading a stage's work files at once (they ask for no CPU: without a cap, Ray starts many)
READ_UNIT = 8  # batches one such task reads at most (a Ray task costs ~10 ms here: one per batch would slow a run)
READ_SPREAD = 32  # and fewer where the work has fewer than READ_UNIT times this many batches (every worker busy)
DIRECT_ROWS = 4_096  # a work of at most this many items goes to Ray from the driver itself, without read tasks


class WorkerDied(RuntimeError):
    """The worker process died while processing an item (a crash in native code, or out of memory)."""


class ClusterError(RuntimeError):
    """The run cannot go on with this cluster: one line per problem (the CLI prints each as `humove: <line>`;
    `--debug` shows what Ray said, kept in the `humove.ray` debug log)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class ClusterResourceError(ClusterError):
    """Stages ask for resources the cluster (or this machine) does not have: one line per stage."""


class RayStartError(ClusterError):
    """Ray did not start, or the cluster at `--ray-address` could not be joined."""


class SharedStorageError(ClusterError):
    """A local run dir on a cluster of several nodes that the user has not said is shared, or that a node does
    not see."""


def _stage_name(stage_ref: str) -> str:
    return load_stage_class(stage_ref).name


def _map_stages(stages: list) -> list:
    """The stages that run in workers (`config.ResolvedStage`); aggregate stages run in the driver."""
    return [stage for stage in stages if issubclass(stage.cls, MapStage)]


class LocalExecutor:
    name = "local"

    def check_resources(self, stages: list, wait_s: float = 0, say: Callable[[str], None] = print) -> None:
        """Stages asking for GPUs need as many CUDA devices here: every stage runs in this process, and a stage
        that asks for a GPU would otherwise fail item by item. `wait_s` does not apply: this machine cannot grow."""
        wanted = [stage for stage in _map_stages(stages) if stage.resources.num_gpus]
        if not wanted:
            return
        devices = _cuda_devices()
        problems = [f"stage {stage.name!r} asks for {_count(stage.resources.num_gpus, 'GPU')} per worker; this "
                    f"machine has {_count(devices, 'CUDA device')} (local executor) — set resources.num_gpus: 0 "
                    f"and device: cpu, or run it where {_count(stage.resources.num_gpus, 'GPU')} can be used"
                    for stage in wanted if stage.resources.num_gpus > devices]
        if problems:
            raise ClusterResourceError(problems)

    def check_run_dir(self, run_dir: str, shared_fs: bool) -> None:
        """Every stage runs in this process, on this machine's run dir."""

    def map(self, stage_ref: str, config: dict, run_dir: str, work: WorkFile,
            resources: Resources, prepare_resources: Resources | None = None) -> Iterator[list[dict]]:
        """`work`: the items to run and their attempts (`humove.items`), read a batch at a time. `prepare` runs
        inline, just before the model, in this process."""
        worker = StageWorker(stage_ref, config, run_dir)
        if worker.setup_failed:
            raise StageSetupError(_stage_name(stage_ref), worker.setup_failed)
        for batch in work.envelopes(resources.batch_size):
            yield [record for records in worker.process(batch) for record in records]


def _read_envelopes(units: pa.Table, root: str, to: int | None) -> pa.Table:
    """In a Ray task: the batches `units` names (`WorkFile.read_units`) as envelope rows."""
    return pa.concat_tables([envelope_rows(batch, to) for url, first, count in zip(
        units["url"].to_pylist(), units["first"].to_pylist(), units["count"].to_pylist(), strict=True)
        for batch in read_groups(root, url, first, count)])


def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# The environment the job's workers started with: given in `ray.init`, or inherited by the embedded Ray's (Ray is
# initialized once per process).
_job_env: dict[str, str] = {}


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, worker_env: dict[str, str] | None = None,
                 connect_timeout_s: float = 60.0, say: Callable[[str], None] | None = None):
        """Start the embedded Ray, or join the cluster at `address` (its head must accept a connection within
        `connect_timeout_s`). A failure is one `RayStartError` line; Ray's own report goes to the debug log.
        `say` gets the run's notices from Ray's side, such as a lost node (default: stderr)."""
        import ray

        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        # Token auth of the embedded cluster stays on; only its start-up notice is kept off the progress display.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        self.worker_env = dict(worker_env or {})
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "logging_level": logging.WARNING,
                      "configure_logging": True, "ignore_reinit_error": True}
            if address or os.environ.get("RAY_ADDRESS"):
                # A cluster's workers start from their own node's environment: `runtime_env` gives them the
                # driver's. (The embedded Ray's processes start from this one and inherit it as it is now.)
                kwargs["runtime_env"] = {"env_vars": self.worker_env}
            if address:
                _wait_for_head(address, connect_timeout_s)
            # The embedded Ray's processes (raylet, and the workers it forks) inherit our stdin: never a terminal,
            # or a child that touches it from their background process group is stopped by the kernel.
            try:
                with _stdin_from_devnull():
                    if address:
                        ray.init(address=address, **kwargs)
                    else:
                        ray.init(**kwargs)
            except Exception as exc:  # noqa: BLE001 - whatever Ray raises, the user gets one line
                _ray_logger.debug("ray.init failed", exc_info=True)
                raise RayStartError([_start_failure(address, exc)]) from exc
            _job_env.clear()
            _job_env.update(self.worker_env)
        _inline_actor_constructor_args()
        _divert_handled_ray_lines(say)
        self._ray = ray
        for name in ("ray.data", "ray.data._internal"):  # keep the terminal for our own progress bars
            logging.getLogger(name).setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI draws its own per-stage bar
        context.print_on_execution_start = False
        context.execution_options.verbose_progress = False
        context.max_errored_blocks = -1  # a batch whose worker died is skipped; map() re-runs its items alone

    def check_resources(self, stages: list, wait_s: float = 0, say: Callable[[str], None] = print) -> None:
        """Every stage's request against the cluster; what it cannot hold is a `ClusterResourceError`, at once
        or, on a cluster that may grow (`wait_s` > 0), after asking the autoscaler for it and waiting that long."""
        problems = resource_problems(stages, self._alive_nodes())
        if problems and wait_s <= 0:
            raise ClusterResourceError(problems)
        if not problems:
            return
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=resource_bundles(stages))
        say(f"waiting up to {wait_s:g} s for the cluster to grow (run.wait_for_resources_s): {problems[0]}")
        noticed = time.monotonic()
        deadline = noticed + wait_s
        try:
            while problems and time.monotonic() < deadline:
                time.sleep(max(0.0, min(RECHECK_S, deadline - time.monotonic())))
                problems = resource_problems(stages, self._alive_nodes())
                if problems and time.monotonic() - noticed >= WAIT_NOTICE_S:
                    noticed = time.monotonic()
                    say(f"still waiting for the cluster to grow ({deadline - noticed:.0f} s left): {problems[0]}")
        finally:
            request_resources(bundles=[])  # the stages' own workers ask for themselves when they start
        if problems:
            raise ClusterResourceError([f"{problem} (waited {wait_s:g} s)" for problem in problems])

    def _alive_nodes(self) -> list[dict[str, float]]:
        return [node["Resources"] for node in self._ray.nodes() if node.get("Alive")]

    def check_run_dir(self, run_dir: str, shared_fs: bool) -> None:
        """A local run dir on a cluster of several nodes: each stage's workers write files (videos, clips, motion)
        that a later stage's workers, on any node, read. Without `shared_fs` that is an error (the files would be
        spread over the nodes' own disks, and lost to the stages after); with it, every node must see a marker
        file this driver writes into the run dir, or the node is named."""
        nodes = [node for node in self._ray.nodes() if node.get("Alive")]
        if len(nodes) < 2:
            return
        if not shared_fs:
            raise SharedStorageError([
                f"run dir {run_dir} is a local path, but the Ray cluster has {len(nodes)} nodes: each node's "
                "workers would write their files on its own disk, out of reach of the stages after them — use an "
                "object store (--run-dir s3://…), or a folder every node mounts at this path and say so with "
                "--shared-fs (run.shared_fs: true)"])
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = uuid.uuid4().hex
        marker = os.path.join(run_dir, f".shared-fs-check-{token}")
        with open(marker, "w") as handle:
            handle.write(token)
        try:
            look = self._ray.remote(num_cpus=0, max_retries=0)(_holds_token)
            answers = {node["NodeID"]: look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node["NodeID"], soft=False)).remote(marker, token) for node in nodes}
            ready, _ = self._ray.wait(list(answers.values()), num_returns=len(answers), timeout=SHARED_FS_CHECK_S)
            blind = []
            for node in nodes:
                answer = answers[node["NodeID"]]
                seen = answer in ready and _answer(self._ray, answer)
                if seen is not True:
                    why = "does not see" if seen is False else f"did not answer ({seen or 'timed out'}) whether it sees"
                    blind.append(f"--shared-fs: node {node['NodeID'][:8]} ({node['NodeManagerAddress']}) {why} "
                                 f"{marker}, which this machine wrote into the run dir — mount the run dir at the "
                                 "same path on every node, or use an object store (--run-dir s3://…)")
        finally:
            os.unlink(marker)
        if blind:
            raise SharedStorageError(blind)

    def _pool_size(self, resources: Resources) -> int:
        """A pool's start: `concurrency` when set, else as many workers as the cluster's GPUs (GPU stages) or CPUs
        fit, up to `max_concurrency`."""
        if resources.concurrency:
            return resources.concurrency
        cluster = self._ray.cluster_resources()
        if resources.num_gpus:
            return _capped(resources, max(1, int(cluster.get("GPU", 0) // resources.num_gpus)))
        return _capped(resources, max(1, int(cluster.get("CPU", 1) // max(resources.num_cpus, 0.01))))

    def map(self, stage_ref: str, config: dict, run_dir: str, work: WorkFile,
            resources: Resources, prepare_resources: Resources | None = None) -> Iterator[list[dict]]:
        """Yield finished records batch by batch (`work`: the items to run and their attempts, `humove.items`).
        Items whose worker process died (their batch failed even after restarts) are run again one per batch,
        so a crashing item cannot take its batch-mates down; an item that still gets no result becomes its own
        `error` record (`WorkerDied`) and is retried on the next run."""
        done: list[pa.Array] = []  # the input ids that got records (about 15 bytes each)

        def not_done(rows: WorkFile) -> WorkFile:
            finished = pa.chunked_array(done, pa.string()).combine_chunks()
            return rows.where(lambda table: pc.invert(pc.is_in(table["input_id"], value_set=finished)), batch_size=1)

        nodes = [node for node in self._ray.nodes() if node.get("Alive")]
        for records in self._map_once(stage_ref, config, run_dir, work, resources, prepare_resources):
            done.append(pa.array(list(dict.fromkeys(record["input_id"] for record in records)), pa.string()))
            yield records
        if sum(len(ids) for ids in done) == work.num_rows:  # each item's records come in one batch: none lost
            return
        lost = not_done(work)
        try:
            prepare_batched = prepare_resources is not None and prepare_resources.batch_size > 1
            # Items on a node that was lost did not cause it: they run again too.
            if lost.num_rows and (resources.batch_size > 1 or prepare_batched or self._lost_since(nodes)):
                single = resources.model_copy(update={"batch_size": 1})
                single_prepare = prepare_resources.model_copy(update={"batch_size": 1}) if prepare_resources else None
                for records in self._map_once(stage_ref, config, run_dir, lost, single, single_prepare,
                                              one_at_a_time=True):
                    done.append(pa.array(list(dict.fromkeys(record["input_id"] for record in records)),
                                         pa.string()))
                    yield records
                lost, ran = not_done(lost), lost
                ran.remove()
            if lost.num_rows:
                stage = make_stage(stage_ref, config, run_dir)
                died = WorkerDied("the worker process died while processing this item (crash or out of memory)")
                for envelopes in lost.envelopes(resources.batch_size):
                    yield [record for env in envelopes
                           for record in finalize(stage, env["item"], died, env["attempt"])]
        finally:
            lost.remove()

    def _lost_since(self, nodes: list[dict]) -> list[dict]:
        """Of `nodes` (alive before a pass), those lost since, each said in one line: no longer alive, or whose
        raylet no longer accepts a connection (Ray marks a node dead only after it missed heartbeats a while)."""
        alive = {node["NodeID"] for node in self._ray.nodes() if node.get("Alive")}
        lost = [node for node in nodes if node["NodeID"] not in alive
                or not _accepts(node["NodeManagerAddress"], node["NodeManagerPort"])]
        for node in lost:
            _report_lost_node(node["NodeID"], node["NodeManagerAddress"])
        return lost

    def _map_once(self, stage_ref: str, config: dict, run_dir: str, work: WorkFile, resources: Resources,
                  prepare_resources: Resources | None, one_at_a_time: bool = False) -> Iterator[list[dict]]:
        """One Ray Data pass. `one_at_a_time` gives each actor a single task in flight, so an item that kills its
        worker cannot take a queued neighbour down with it."""
        blocks = work.num_batches
        dataset = self._work_dataset(work, unit=1 if one_at_a_time else None)
        worker_args = {"stage_ref": stage_ref, "config": config, "run_dir": run_dir}
        model_pool = min(self._pool_size(resources), blocks)
        if prepare_resources is not None and self.fits_side_by_side(resources, prepare_resources):
            # Both pools are fixed in size and together fit the cluster. CPU shares: the model's pool first when
            # it runs on GPUs, else half each (the model's CPU work and the preparation are of one order).
            cpus = self._ray.cluster_resources().get("CPU", 1)
            if not resources.num_gpus and not resources.concurrency:
                model_pool = max(1, min(model_pool, int(cpus // (resources.num_cpus + prepare_resources.num_cpus))))
            spare = max(prepare_resources.num_cpus, cpus - model_pool * resources.num_cpus)
            prepare_pool = min(prepare_resources.concurrency or int(spare // prepare_resources.num_cpus), blocks)
            # Prepared rows carry numpy arrays, pickled into a binary column, to the model's pool.
            dataset = self._map_pool(dataset, PrepareWorker, worker_args, prepare_resources, max(1, prepare_pool),
                                     one_at_a_time)
        dataset = self._map_pool(dataset, StageWorker, worker_args, resources, model_pool, one_at_a_time)
        for batch in _batches(dataset):
            per_item = [json.loads(text) for text in batch["records"]]
            failed = next((records["setup_failed"] for records in per_item if isinstance(records, dict)), None)
            if failed:
                raise StageSetupError(_stage_name(stage_ref), failed)
            yield [record for records in per_item for record in records]

    def stream(self, stages: list, run_dir: str, works: list[WorkFile]) -> Iterator[dict[int, list[list[dict]]]]:
        """Consecutive map stages as one streaming Ray Data pipeline, every stage's pool alive at once
        (`stream_pools`), or, on a cluster too small for a worker of each stage, workers that each run all of them
        (`chain_pool`). `stages`: `StreamStage`s; `works[i]`: the items stage i has to run now (`humove.items`),
        besides those its upstream stage passes on while the stream runs. Yields, as the stream gives them, the
        finished records per stage position: {position: [one item's records, ...]}. Items whose batch was lost (a
        worker that died after its restarts, a lost node) are simply missing: the caller runs them again."""
        from humove.worker import FINISHED, StreamChainWorker, StreamPrepareWorker, StreamStageWorker

        nodes = self._alive_nodes()
        entering = [self._work_dataset(work, to=position) for position, work in enumerate(works) if work.num_rows]
        dataset = entering[0].union(*entering[1:]) if len(entering) > 1 else entering[0]
        arguments = [{"stage_ref": stage.ref, "config": stage.config, "run_dir": run_dir, "position": position,
                      "carry_item": stage.carry_item, "feeds_next": position < len(stages) - 1}
                     for position, stage in enumerate(stages)]
        chain = chain_pool([s.resources for s in stages], nodes)
        if chain:
            dataset = self._map_pool(dataset, StreamChainWorker, {"stages": arguments}, chain.resources, chain.size,
                                     one_at_a_time=False)
        else:
            pools = stream_pools([(s.resources, s.prepare_resources) for s in stages], nodes)
            for stage_arguments, pool in zip(arguments, pools, strict=True):
                if pool.prepare:
                    prepare_arguments = {k: v for k, v in stage_arguments.items()
                                         if k not in ("carry_item", "feeds_next")}
                    dataset = self._map_pool(dataset, StreamPrepareWorker, prepare_arguments,
                                             pool.prepare_resources, pool.prepare, one_at_a_time=False)
                dataset = self._map_pool(dataset, StreamStageWorker, stage_arguments, pool.resources, pool.size,
                                         one_at_a_time=False)
        batches = _batches(dataset)
        try:
            for batch in batches:
                finished: dict[int, list[list[dict]]] = {}
                for to, text in zip(batch["to"], batch["item"], strict=True):
                    if to != FINISHED:
                        continue
                    answer = json.loads(text)
                    if "setup_failed" in answer:
                        raise StageSetupError(stages[answer["stage"]].name, answer["setup_failed"])
                    finished.setdefault(answer["stage"], []).append(answer["records"])
                yield finished
        finally:  # a run that stops (a stage that cannot set up) stops the stream now, not when Ray shuts down
            batches.close()

    def _work_dataset(self, work: WorkFile, to: int | None = None, unit: int | None = None):
        """Work files as a Ray Data dataset of envelope rows (`items.envelope_rows`). A small work
        (`DIRECT_ROWS`) is handed over by the driver, a block per batch. A larger one is read by tasks from the
        run dir, `unit` batches a block (default: up to `READ_UNIT`, fewer for a work of few batches, so that
        every worker gets some; a worker's task then runs that many batches): the driver hands out only where
        they lie (`WorkFile.read_units`, a row of a few bytes each). The tasks ask for no CPU: the stages' fixed
        pools may hold them all (Ray Data's own readers and repartitioning wait for one, and would never start).
        `from_blocks`, not `from_arrow`: the driver describes its blocks itself, where `from_arrow` starts a Ray
        task per block to do it, whose idle worker Ray 2.60 later stops with a SIGABRT report on the driver's
        output (a crash after the worker's shutdown, results intact; seen in runs on a busy machine)."""
        if work.num_rows <= DIRECT_ROWS:
            return self._ray.data.from_blocks([envelope_rows(table, to) for table in work.tables()])
        unit = unit or max(1, min(READ_UNIT, work.num_batches // READ_SPREAD))
        units = [pa.table({"url": [url], "first": [first], "count": [count]})
                 for url, first, count in work.read_units(unit)]
        dataset = self._ray.data.from_blocks(units)
        return dataset.map_batches(_read_envelopes, batch_format="pyarrow", batch_size=None, num_cpus=0,
                                   concurrency=min(READERS, len(units)),
                                   fn_kwargs={"root": work.storage.root, "to": to})

    def streamable(self, stages: list) -> int:
        """How many of `stages`, from the first, one stream can hold at once on this cluster (`streamable`)."""
        return streamable(stages, self._alive_nodes())

    def fits_side_by_side(self, resources: Resources, prepare_resources: Resources) -> bool:
        """Whether the cluster holds a prepare worker and a model worker at once; if not, two pools would wait on
        each other, so the model's workers prepare their own items (as the local executor does)."""
        return resources.num_cpus + prepare_resources.num_cpus <= self._ray.cluster_resources().get("CPU", 0)

    def _map_pool(self, dataset, worker_class: type, worker_args: dict, resources: Resources, pool: int,
                  one_at_a_time: bool):
        """`dataset.map_batches(worker_class)` on a pool of `pool` actors (models stay loaded) that grows as nodes
        join where `pool_limit` allows (never below `pool`; a pass of one task per actor, `one_at_a_time`, re-runs
        a few items: fixed). A growing pool's actors still starting when the work ends are killed mid-creation;
        what Ray logs about that goes to the debug log (`_handled`)."""
        ray = self._ray
        remote_args = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus or None,
                       "max_restarts": WORKER_RESTARTS, "max_task_retries": WORKER_RESTARTS}
        # What the job's workers did not get in `ray.init` (Ray was already running, or a variable changed since).
        changed = {name: value for name, value in self.worker_env.items() if _job_env.get(name) != value}
        if changed:
            remote_args["runtime_env"] = {"env_vars": changed}
        if resources.memory_gb:
            remote_args["memory"] = resources.memory_gb * 1024**3
        in_flight = {"max_tasks_in_flight_per_actor": 1} if one_at_a_time else {}
        most = pool if one_at_a_time else pool_limit(resources, pool)
        compute = (ray.data.ActorPoolStrategy(size=pool, **in_flight) if most == pool else
                   ray.data.ActorPoolStrategy(min_size=pool, max_size=most, initial_size=pool))
        with warnings.catch_warnings():
            # Ray 2.60 (pinned) has no named parameter for actor restarts yet; `**ray_remote_args` is its only way.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            return dataset.map_batches(
                worker_class,
                fn_constructor_kwargs=worker_args,
                batch_size=resources.batch_size,
                batch_format="numpy",
                compute=compute,
                **{k: v for k, v in remote_args.items() if v is not None},
            )


def _batches(dataset) -> Iterator[dict]:
    """The dataset's output blocks as numpy batches, as they finish. Ray Data's planning note for a pool whose
    items only arrive from the operator before it ("The minimum number of concurrent actors … received 0
    input(s)": a model pool after its prepare pool, a later stage of a stream) is expected here and not shown."""
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
            first = next(batches, None)
        if first is None:
            return
        yield first
        yield from batches
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()


@contextlib.contextmanager
def _stdin_from_devnull():
    """fd 0 is /dev/null while the block runs (processes started in it inherit that), then restored."""
    try:
        saved = os.dup(0)
    except OSError:  # no stdin at all: leave /dev/null there
        saved = None
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 0)
            os.close(saved)
        os.close(devnull)


def _inline_actor_constructor_args() -> None:
    """Ray Data 2.60 hands each pool actor its DataContext and map function as object-store references. With
    restarts enabled, Ray core then logs an error at every run: a restart would fail if those objects were lost
    (ray-project/ray#53727). Both are a few KB, so we pass them by value at actor creation: a restarted actor then
    gets its arguments from the creation task itself, never from the object store."""
    from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator

    start_actor = vars(ActorPoolMapOperator).get("_start_actor")
    if start_actor is None or getattr(start_actor, "inlines_arguments", False):
        return  # another Ray version: leave it as it is

    def _start_actor(self, *args, **kwargs):
        # The two are cached properties; values in the instance dict shadow them during actor creation only.
        shadowed = {name: self.__dict__.pop(name, None) for name in ("_data_context_ref", "_map_transformer_ref")}
        self.__dict__["_data_context_ref"] = self.data_context
        self.__dict__["_map_transformer_ref"] = self._map_transformer
        try:
            return start_actor(self, *args, **kwargs)
        finally:
            for name, value in shadowed.items():
                if value is None:
                    self.__dict__.pop(name, None)
                else:
                    self.__dict__[name] = value

    _start_actor.inlines_arguments = True
    ActorPoolMapOperator._start_actor = _start_actor


# Ray prints to the driver's terminal what its log monitor streams (the error logs of its GCS and raylets, the
# workers' output) and the cluster's error messages (as lines of `raylet`). Its lines about failures humove
# handles itself go to the `humove.ray` debug log instead (`--debug` shows them); every other line is printed as
# Ray prints it. Handled:
# - the GCS's "Failed to kill actor … Socket closed" (or "… Connection reset by peer", or "… Cancelling all calls":
#   the same race seen from the socket's other side, or as the channel closes) when a pool actor it stops exits
#   before answering: in Ray 2.60 the stop's success path (ray-project/ray#53412; the line is gone upstream in
#   #58544), most often at the end of a growing pool, whose actors still starting are stopped too;
# - "… submit failed. There are N retries remaining, so the task will be retried": Ray retries it;
# - "A worker died or was killed while executing a task …": `map()` runs its items again, or records `WorkerDied`;
# - "The node with node id: … has been marked dead …": a lost node, told as one line of ours (its items run again);
# - Ray Data's "An exception was raised from a task of operator … Ignoring this exception", with a traceback, for
#   each batch whose worker died (a crash, a lost node): `map()` runs those items again.
_BENIGN_GCS_LINE = re.compile(r"Failed to kill actor .*(Socket closed|Connection reset by peer|Cancelling all calls)")
# - the raylet's "N PYTHON worker processes have been started on node … maximum expected startup concurrency":
#   a stream starts every stage's pool at once, on purpose.
_STARTUP_CONCURRENCY = re.compile(r"PYTHON worker processes have been started on node")
_RETRIED_TASK = re.compile(r"submit failed\. There are \d+ retries remaining, so the task will be retried"
                           r"|A worker died or was killed while executing a task")
_NODE_DEAD = re.compile(r"node id: (?P<node>[0-9a-f]+) and address: (?P<address>\S+) .*has been marked dead", re.S)
_IGNORED_BLOCK = "An exception was raised from a task of operator"
_ray_logger = logging.getLogger("humove.ray")
_say_lost_node: Callable[[str], None] | None = None  # the current run's notices; default: stderr
_lost_nodes: set[str] = set()


def _divert_handled_ray_lines(say: Callable[[str], None] | None = None) -> None:
    """Wrap Ray's printer of streamed lines (once per process) and filter Ray Data's errored-block records, as
    the comment above says; `say` gets the lost-node lines."""
    global _say_lost_node
    _say_lost_node = say
    logger = logging.getLogger("ray.data._internal.execution.streaming_executor_state")
    if not any(isinstance(f, _HandledBlockErrors) for f in logger.filters):
        logger.addFilter(_HandledBlockErrors())
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return  # another Ray version: leave its printing as it is
    with dispatcher._lock:  # the log monitor's lines
        dispatcher.handlers = [(name, handler if getattr(handler, "diverts_handled_lines", False) else
                                _without_handled_lines(handler)) for name, handler in dispatcher.handlers]
    printer = getattr(ray_worker, "print_to_stdstream", None)  # the error messages' (looked up at each call)
    if printer is not None and not getattr(printer, "diverts_handled_lines", False):
        ray_worker.print_to_stdstream = _without_handled_lines(printer)


def _without_handled_lines(print_logs):
    def handler(data: dict, *args, **kwargs) -> None:
        lines = data.get("lines") or []
        handled = [line for line in lines if _handled(data.get("pid"), line)]
        for line in handled:
            _ray_logger.debug("ray (%s): %s", data.get("pid"), line)
        if len(handled) < len(lines):
            kept = {**data, "lines": [line for line in lines if line not in handled]} if handled else data
            print_logs(kept, *args, **kwargs)

    handler.diverts_handled_lines = True
    return handler


def _handled(pid, line: str) -> bool:
    """Whether a streamed line is one humove handles; only the lines of Ray's own processes (pid a name such as
    `raylet`), never a worker's output."""
    if not isinstance(pid, str):
        return False
    if pid == "gcs_server" and _BENIGN_GCS_LINE.search(line):
        return True
    if _RETRIED_TASK.search(line) or (pid == "raylet" and _STARTUP_CONCURRENCY.search(line)):
        return True
    dead = _NODE_DEAD.search(line)
    if dead:
        _report_lost_node(dead["node"], dead["address"])
    return bool(dead)


def _report_lost_node(node: str, address: str) -> None:
    if node in _lost_nodes:
        return
    _lost_nodes.add(node)
    text = f"lost Ray node {node[:8]} ({address}): the items it was running run again on the others"
    if _say_lost_node:
        _say_lost_node(text)
    else:
        print(f"humove: {text}", file=sys.stderr)


class _HandledBlockErrors(logging.Filter):
    """Ray Data's record of a batch it skipped (`max_errored_blocks`): to the debug log, traceback included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(_IGNORED_BLOCK) or "Ignoring this exception" not in message:
            return True
        _ray_logger.debug("ray data: %s", message, exc_info=record.exc_info)
        return False


def _accepts(host: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _wait_for_head(address: str, timeout_s: float) -> None:
    """Wait until the cluster's head (`HOST:PORT`) accepts a TCP connection. Ray would try 20 times, about 40 s
    each, printing a warning every few seconds, before its own error; `auto` and `ray://` addresses are Ray's."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=max(0.1, min(2.0, timeout_s))):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                reason = (exc.strerror or "no answer").lower()
                raise RayStartError([f"cannot reach the Ray cluster at {address}: {reason} for {timeout_s:g} "
                                     "s — check --ray-address and that its head is running (ray start --head); "
                                     "run.ray_connect_timeout_s waits longer"]) from None
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _start_failure(address: str | None, exc: Exception) -> str:
    """Ray's start-up error in one line: its first line (Ray's messages may embed a whole traceback)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    what = f"cannot join the Ray cluster at {address}" if address else "cannot start Ray"
    return f"{what}: {type(exc).__name__}: {first} (--debug shows Ray's report)"


SHARED_FS_CHECK_S = 60.0  # how long each node has to answer whether it sees the run dir


def _holds_token(path: str, token: str) -> bool:
    """In a task on one node: whether the marker file the driver wrote is there, with its content."""
    try:
        with open(path) as handle:
            return handle.read() == token
    except OSError:
        return False


def _answer(ray, ref) -> bool | str:
    try:
        return ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - e.g. the node died meanwhile: said in the error line
        return type(exc).__name__


# Resource pre-flight ---------------------------------------------------------------------------------------------

_EPSILON = 1e-9
_FIELDS = {"GPU": "num_gpus", "CPU": "num_cpus", "memory": "memory_gb"}


def _shape(resources: Resources | None) -> dict[str, float]:
    """One worker's Ray resource request, in Ray's names and units (memory in bytes), GPUs first."""
    if resources is None:
        return {}
    shape = {"GPU": resources.num_gpus, "CPU": resources.num_cpus, "memory": (resources.memory_gb or 0) * 1024**3}
    return {key: value for key, value in shape.items() if value}


def _holds(node: dict[str, float], shape: dict[str, float]) -> int:
    """How many workers of this shape fit on the node."""
    return min((math.floor(node.get(key, 0.0) / value + _EPSILON) for key, value in shape.items()), default=0)


def _plain(key: str, value: float) -> str:
    value = value / 1024**3 if key == "memory" else value
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def _count(value: float, unit: str) -> str:
    return f"{_plain(unit, value)} {unit}{'' if value == 1 else 's'}"


def _amount(key: str, value: float) -> str:
    return f"{_plain(key, value)} GB of memory" if key == "memory" else _count(value, key)


def _cluster_summary(nodes: list[dict[str, float]]) -> str:
    cpus, gpus = (sum(node.get(key, 0.0) for node in nodes) for key in ("CPU", "GPU"))
    return ", ".join([_count(cpus, "CPU"), *([_count(gpus, "GPU")] if gpus else []), _count(len(nodes), "node")])


def resource_problems(stages: list, nodes: list[dict[str, float]]) -> list[str]:
    """One line for each stage whose request the cluster cannot hold (`nodes`: each alive node's total resources,
    as Ray names them): a worker, or one of its prepare workers, larger than every node; or a fixed pool of GPU
    workers (`concurrency`) larger than the cluster."""
    summary = _cluster_summary(nodes)
    problems = [_worker_problem(stage.name, "worker", stage.resources, nodes, summary)
                or _worker_problem(stage.name, "prepare worker", stage.prepare_resources, nodes, summary)
                or _pool_problem(stage.name, stage.resources, nodes, summary)
                for stage in _map_stages(stages)]
    return [problem for problem in problems if problem]


def _worker_problem(stage: str, workers: str, resources: Resources | None, nodes: list[dict[str, float]],
                    summary: str) -> str | None:
    shape = _shape(resources)
    if not shape or any(_holds(node, shape) for node in nodes):
        return None
    largest = {key: max((node.get(key, 0.0) for node in nodes), default=0.0) for key in shape}
    short = [key for key in shape if largest[key] < shape[key]]
    asked = f"stage {stage!r} asks for {' and '.join(_amount(key, shape[key]) for key in short or shape)} per {workers}"
    if not short:
        return f"{asked}; no node has all of it at once ({summary}) — add such nodes, or ask for less"
    key = short[0]
    if key == "GPU" and not largest[key]:
        return (f"{asked}; the cluster has 0 GPUs ({summary}) — set resources.num_gpus: 0 and device: cpu, "
                "or add GPU nodes")
    fix = "add larger nodes"  # a stage's prepare workers are sized by the stage itself
    if workers == "worker":
        fix = f"set resources.{_FIELDS[key]}: {_plain(key, largest[key])} or less, or add larger nodes"
    return f"{asked}; its largest node has {_amount(key, largest[key])} ({summary}) — {fix}"


def _pool_problem(stage: str, resources: Resources, nodes: list[dict[str, float]], summary: str) -> str | None:
    if not (resources.num_gpus and resources.concurrency):
        return None
    held = sum(_holds(node, _shape(resources)) for node in nodes)
    if held >= resources.concurrency:
        return None
    return (f"stage {stage!r} asks for a fixed pool of {resources.concurrency} workers with "
            f"{_count(resources.num_gpus, 'GPU')} each; the cluster holds {held} of them ({summary}) — "
            f"set resources.concurrency: {held}, or add GPU nodes")


def resource_bundles(stages: list) -> list[dict[str, float]]:
    """The workers every stage asks for, as bundles for Ray's autoscaler (`request_resources`)."""
    bundles = []
    for stage in _map_stages(stages):
        resources = stage.resources
        workers = (resources.concurrency or 1) if resources.num_gpus else 1
        bundles += [_shape(resources)] * workers + [_shape(stage.prepare_resources)]
    return [bundle for bundle in bundles if bundle]


# Stream pools ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamStage:
    """One stage of a stream, as its workers are built (`RayExecutor.stream`). `carry_item`: whether the next
    stage's items keep this stage's item columns (False for a source's listed items: `worker.next_item`)."""
    name: str
    ref: str
    config: dict
    resources: Resources
    prepare_resources: Resources | None
    carry_item: bool


@dataclass(frozen=True)
class StreamPool:
    """A stage's pools in a stream, as they start: `size` model workers of `resources`, and `prepare` CPU workers
    of `prepare_resources` ahead of them (0: the model's workers prepare their own items). Each grows as nodes
    join where `pool_limit` allows."""
    size: int
    resources: Resources
    prepare: int = 0
    prepare_resources: Resources | None = None


def _min_pool(resources: Resources) -> int:
    return resources.concurrency or 1


def _capped(resources: Resources, workers: int) -> int:
    return min(workers, resources.max_concurrency) if resources.max_concurrency else workers


def pool_limit(resources: Resources, start: int) -> int | None:
    """The most workers a pool of `resources` that starts with `start` may grow to as nodes join (None: as many as
    the cluster holds): `max_concurrency` where set; else a CPU pool without a fixed `concurrency` grows with the
    cluster, and every other pool stays at `start` (a GPU worker loads a model: more of them only where asked)."""
    if resources.max_concurrency:
        return max(start, resources.max_concurrency)
    if not resources.num_gpus and not resources.concurrency:
        return None
    return start


def streamable(stages: list, nodes: list[dict[str, float]]) -> int:
    """How many of `stages` (from the first) can have their pools alive at once on a cluster of `nodes`: every
    GPU stage's smallest pool on its own GPUs (models are not put on one GPU together: a vLLM engine takes most
    of its memory), and every worker's memory request at once. At least 1."""
    gpus = sum(node.get("GPU", 0.0) for node in nodes)
    memory = sum(node.get("memory", 0.0) for node in nodes)
    used_gpus = used_memory = 0.0
    for count, stage in enumerate(stages):
        resources, prepare = stage.resources, stage.prepare_resources
        used_gpus += _min_pool(resources) * resources.num_gpus
        used_memory += _min_pool(resources) * (resources.memory_gb or 0) * 1024**3
        used_memory += (prepare.memory_gb or 0) * 1024**3 if prepare else 0
        if count and (used_gpus > gpus + _EPSILON or used_memory > memory + _EPSILON):
            return count
    return max(1, len(stages))


def stream_pools(stages: list[tuple[Resources, Resources | None]], nodes: list[dict[str, float]]) -> list[StreamPool]:
    """Starting pool sizes for a stream of stages (`(resources, prepare_resources)` each) on a cluster of `nodes`
    (each alive node's resources, as Ray names them); pools grow from there as nodes join (`pool_limit`). GPU
    stages: `concurrency`, else the GPUs the `concurrency` pools leave, shared evenly (one worker at least). CPU
    pools start at one worker (or `concurrency`) each; prepare pools exist only if the nodes hold them beside every
    model pool; then each CPU pool without a `concurrency` gets one more worker in turn while the nodes still hold
    every worker (`_packs`), up to one per CPU. No pool starts above its `max_concurrency`. When even one worker
    each does not fit, every worker asks for the same smaller CPU share: all pools must be alive at once, and the
    stages' CPU shares are requests, not cores they own."""
    gpus = sum(node.get("GPU", 0.0) for node in nodes)
    free_gpu_stages = [r for r, _ in stages if r.num_gpus and not r.concurrency]
    spare_gpus = max(0.0, gpus - sum(r.concurrency * r.num_gpus for r, _ in stages if r.num_gpus and r.concurrency))
    sizes = [r.concurrency or (_capped(r, max(1, int(spare_gpus / len(free_gpu_stages) // r.num_gpus)))
                               if r.num_gpus else 1) for r, _ in stages]
    prepares = [_min_pool(p) if p is not None else 0 for _, p in stages]

    def workers() -> list[dict[str, float]]:
        shapes = []
        for size, prepare, (resources, prepare_resources) in zip(sizes, prepares, stages, strict=True):
            shapes += [_shape(resources)] * size + [_shape(prepare_resources)] * prepare
        return shapes

    if not _packs(workers(), nodes):
        prepares = [0] * len(stages)
    growable = [(sizes, i, r) for i, (r, _) in enumerate(stages) if not r.num_gpus and not r.concurrency]
    growable += [(prepares, i, p) for i, (_, p) in enumerate(stages) if prepares[i] and not p.concurrency]
    most = max(1, int(sum(node.get("CPU", 0.0) for node in nodes)))
    grew = _packs(workers(), nodes)
    while grew:
        grew = False
        for pool, index, resources in growable:
            pool[index] += 1
            if pool[index] <= _capped(resources, most) and _packs(workers(), nodes):
                grew = True
            else:
                pool[index] -= 1
    # Too many workers for the CPUs: each asks for the same share, so any order Ray places them in fits.
    share = None if _packs(workers(), nodes) else _equal_share(len(workers()), [n.get("CPU", 0.0) for n in nodes])

    def scaled(resources: Resources) -> Resources:
        return resources if share is None else resources.model_copy(update={"num_cpus": share})

    return [StreamPool(size, scaled(r), prepare, scaled(p) if prepare else None)
            for size, prepare, (r, p) in zip(sizes, prepares, stages, strict=True)]


def chain_pool(stages: list[Resources], nodes: list[dict[str, float]]) -> StreamPool | None:
    """Workers that each run every stage of a stream (`worker.StreamChainWorker`), when the stages use no GPU and
    the nodes cannot hold one worker of each at its CPU request: on a small machine one process per stage would
    spend the CPUs on starting and switching between them. As many as the nodes hold at the largest request, with
    the first stage's batch size, growing with the cluster. None: a pool per stage (`stream_pools`)."""
    if any(r.num_gpus for r in stages) or _packs([_shape(r) for r in stages], nodes):
        return None
    widest = max(stages, key=lambda r: (r.num_cpus, r.memory_gb or 0))
    size = sum(_holds(node, _shape(widest)) for node in nodes)
    return StreamPool(max(1, size), widest.model_copy(update={"batch_size": stages[0].batch_size,
                                                              "concurrency": None, "max_concurrency": None}))


def _equal_share(workers: int, node_cpus: list[float]) -> float:
    """The largest CPU request of which the nodes hold `workers` at once (a node of c CPUs holds ⌊c / share⌋)."""
    shares = sorted({cpus / count for cpus in node_cpus if cpus > 0 for count in range(1, workers + 1)},
                    reverse=True)
    fits = (share for share in shares if sum(math.floor(c / share + _EPSILON) for c in node_cpus) >= workers)
    return round(next(fits, 0.001), 6)


def _packs(workers: list[dict[str, float]], nodes: list[dict[str, float]]) -> bool:
    """Whether every worker fits on some node at once (first fit, largest first): Ray places each actor whole on
    one node, so a cluster's total is not enough."""
    free = [dict(node) for node in nodes]
    for shape in sorted(workers, key=lambda s: (s.get("GPU", 0), s.get("CPU", 0), s.get("memory", 0)), reverse=True):
        node = next((n for n in free if all(n.get(k, 0.0) + _EPSILON >= v for k, v in shape.items())), None)
        if node is None:
            return False
        for key, value in shape.items():
            node[key] -= value
    return True


def make_executor(name: str, address: str | None = None, worker_env: dict[str, str] | None = None,
                  connect_timeout_s: float = 60.0, say: Callable[[str], None] | None = None):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, worker_env, connect_timeout_s, say)
    raise ValueError(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
