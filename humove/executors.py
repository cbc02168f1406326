"""Executors run a map stage's worker over its pending items and yield finished records batch by batch, as
they complete, so the driver can persist them at once (a crash keeps completed work).

- `LocalExecutor`: in-process, one worker, for debugging and small jobs.
- `RayExecutor`: Ray Data streaming `map_batches` over an actor pool (the stage's model loads once per actor;
  GPU stages get a fixed pool of `concurrency` actors with `num_gpus` each). A stage with `prepare_resources`
  gets two operators in the same streaming dataset: `prepare` on autoscaling CPU actors, then the model's pool on
  the prepared rows, so a GPU never waits for decoding. Works on the embedded Ray (`ray.init()`) or a cluster
  (`--ray-address auto`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from humove.items import envelope_batches
from humove.stage import Resources
from humove.worker import PrepareWorker, StageWorker, finalize, make_stage, to_json

EXECUTORS = ("ray", "local")
WORKER_RESTARTS = 2  # a worker process that dies (segfault, OOM kill) is restarted this often, then its batch fails


class WorkerDied(RuntimeError):
    """The worker process died while processing an item (a crash in native code, or out of memory)."""


class LocalExecutor:
    name = "local"

    def map(self, stage_ref: str, config: dict, run_dir: str, work: pa.Table,
            resources: Resources, prepare_resources: Resources | None = None) -> Iterator[list[dict]]:
        """`work`: the items to run and their attempts (`humove.items`). `prepare` runs inline, just before the
        model, in this process."""
        worker = StageWorker(stage_ref, config, run_dir)
        for batch in envelope_batches(work, resources.batch_size):
            yield [record for records in worker.process(batch) for record in records]


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None):
        import ray

        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        # Token auth of the embedded cluster stays on; only its start-up notice is kept off the progress display.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "logging_level": logging.WARNING,
                      "configure_logging": True, "ignore_reinit_error": True}
            # The embedded Ray's processes (raylet, and the workers it forks) inherit our stdin: never a terminal,
            # or a child that touches it from their background process group is stopped by the kernel.
            with _stdin_from_devnull():
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(**kwargs)
        _inline_actor_constructor_args()
        _drop_benign_kill_lines()
        self._ray = ray
        for name in ("ray.data", "ray.data._internal"):  # keep the terminal for our own progress bars
            logging.getLogger(name).setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI draws its own per-stage bar
        context.print_on_execution_start = False
        context.execution_options.verbose_progress = False
        context.max_errored_blocks = -1  # a batch whose worker died is skipped; map() re-runs its items alone

    def _pool_size(self, resources: Resources) -> int:
        """`concurrency` when set, else as many workers as the cluster's GPUs (GPU stages) or CPUs fit."""
        if resources.concurrency:
            return resources.concurrency
        cluster = self._ray.cluster_resources()
        if resources.num_gpus:
            return max(1, int(cluster.get("GPU", 0) // resources.num_gpus))
        return max(1, int(cluster.get("CPU", 1) // max(resources.num_cpus, 0.01)))

    def map(self, stage_ref: str, config: dict, run_dir: str, work: pa.Table,
            resources: Resources, prepare_resources: Resources | None = None) -> Iterator[list[dict]]:
        """Yield finished records batch by batch (`work`: the items to run and their attempts, `humove.items`).
        Items whose worker process died (their batch failed even after restarts) are run again one per batch,
        so a crashing item cannot take its batch-mates down; an item that still gets no result becomes its own
        `error` record (`WorkerDied`) and is retried on the next run."""
        done: list[pa.Array] = []

        def not_done(table: pa.Table) -> pa.Table:
            finished = pa.concat_arrays(done) if done else pa.array([], pa.string())
            return table.filter(pc.invert(pc.is_in(table["input_id"], value_set=finished)))

        for records in self._map_once(stage_ref, config, run_dir, work, resources, prepare_resources):
            done.append(pa.array([record["input_id"] for record in records], pa.string()))
            yield records
        lost = not_done(work)
        prepare_batched = prepare_resources is not None and prepare_resources.batch_size > 1
        if lost.num_rows and (resources.batch_size > 1 or prepare_batched):
            single = resources.model_copy(update={"batch_size": 1})
            single_prepare = prepare_resources.model_copy(update={"batch_size": 1}) if prepare_resources else None
            for records in self._map_once(stage_ref, config, run_dir, lost, single, single_prepare,
                                          one_at_a_time=True):
                done.append(pa.array([record["input_id"] for record in records], pa.string()))
                yield records
            lost = not_done(lost)
        if lost.num_rows:
            stage = make_stage(stage_ref, config, run_dir)
            died = WorkerDied("the worker process died while processing this item (crash or out of memory)")
            for envelopes in envelope_batches(lost, resources.batch_size):
                yield [record for env in envelopes for record in finalize(stage, env["item"], died, env["attempt"])]

    def _map_once(self, stage_ref: str, config: dict, run_dir: str, work: pa.Table, resources: Resources,
                  prepare_resources: Resources | None, one_at_a_time: bool = False) -> Iterator[list[dict]]:
        """One Ray Data pass. `one_at_a_time` gives each actor a single task in flight, so an item that kills its
        worker cannot take a queued neighbour down with it."""
        ray = self._ray
        # One block per batch, each envelope as JSON text (the driver holds Arrow strings, not dicts).
        tables = [pa.table({"item": pa.array([to_json(env) for env in envelopes], pa.string())})
                  for envelopes in envelope_batches(work, resources.batch_size)]
        blocks = len(tables)
        dataset = ray.data.from_arrow(tables)
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
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            yield [record for text in batch["records"] for record in json.loads(text)]

    def fits_side_by_side(self, resources: Resources, prepare_resources: Resources) -> bool:
        """Whether the cluster holds a prepare worker and a model worker at once; if not, two pools would wait on
        each other, so the model's workers prepare their own items (as the local executor does)."""
        return resources.num_cpus + prepare_resources.num_cpus <= self._ray.cluster_resources().get("CPU", 0)

    def _map_pool(self, dataset, worker_class: type, worker_args: dict, resources: Resources, pool: int,
                  one_at_a_time: bool):
        """`dataset.map_batches(worker_class)` on a fixed pool of `pool` actors (models stay loaded). Fixed, not
        autoscaling: an autoscaling pool's actors still starting when the work ends are killed mid-creation, and
        Ray logs an error line for each (`gcs_actor_scheduler.cc: Failed to kill actor`)."""
        ray = self._ray
        remote_args = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus or None,
                       "max_restarts": WORKER_RESTARTS, "max_task_retries": WORKER_RESTARTS}
        if resources.memory_gb:
            remote_args["memory"] = resources.memory_gb * 1024**3
        in_flight = {"max_tasks_in_flight_per_actor": 1} if one_at_a_time else {}
        compute = ray.data.ActorPoolStrategy(size=pool, **in_flight)
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


# The GCS logs this at error level when a pool actor it stops exits before answering the stop request: in Ray 2.60
# the stop's success path is that failed reply (ray-project/ray#53412; the line is gone upstream in #58544).
_BENIGN_GCS_LINES = ("Failed to kill actor", "Socket closed")
_ray_logger = logging.getLogger("humove.ray")


def _drop_benign_kill_lines() -> None:
    """Ray streams its GCS's error log to the driver's terminal; the benign actor-stop lines above go to the
    `humove.ray` debug log instead (`--debug` shows them), every other line is printed as Ray prints it."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return  # another Ray version: leave its printing as it is
    with dispatcher._lock:
        dispatcher.handlers = [(name, handler if getattr(handler, "drops_benign_lines", False) else
                                _without_benign_lines(handler)) for name, handler in dispatcher.handlers]


def _without_benign_lines(print_logs):
    def handler(data: dict) -> None:
        lines = data.get("lines") or []
        benign = [line for line in lines if data.get("pid") == "gcs_server"
                  and all(part in line for part in _BENIGN_GCS_LINES)]
        for line in benign:
            _ray_logger.debug("ray: %s", line)
        if len(benign) < len(lines):
            print_logs({**data, "lines": [line for line in lines if line not in benign]} if benign else data)

    handler.drops_benign_lines = True
    return handler


def make_executor(name: str, address: str | None = None):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise ValueError(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
