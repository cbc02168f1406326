"""Executors run a map stage's worker over its pending items and yield finished records batch by batch, as
they complete, so the driver can persist them at once (a crash keeps completed work).

- `LocalExecutor`: in-process, one worker, for debugging and small jobs.
- `RayExecutor`: Ray Data streaming `map_batches` over an actor pool (the stage's model loads once per actor;
  GPU stages get a fixed pool of `concurrency` actors with `num_gpus` each). Works on the embedded Ray
  (`ray.init()`) or a cluster (`--ray-address auto`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterator

from humove.stage import Resources
from humove.worker import StageWorker, finalize, make_stage, to_json

WORKER_RESTARTS = 2  # a worker process that dies (segfault, OOM kill) is restarted this often, then its batch fails


class WorkerDied(RuntimeError):
    """The worker process died while processing an item (a crash in native code, or out of memory)."""


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class LocalExecutor:
    name = "local"

    def map(self, stage_ref: str, config: dict, run_dir: str, envelopes: list[dict],
            resources: Resources) -> Iterator[list[dict]]:
        worker = StageWorker(stage_ref, config, run_dir)
        for batch in _batches(envelopes, resources.batch_size):
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
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(**kwargs)
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

    def map(self, stage_ref: str, config: dict, run_dir: str, envelopes: list[dict],
            resources: Resources) -> Iterator[list[dict]]:
        """Yield finished records batch by batch. Items whose worker process died (their batch failed even after
        restarts) are run again one per batch, so a crashing item cannot take its batch-mates down; an item that
        still gets no result becomes its own `error` record (`WorkerDied`) and is retried on the next run."""
        done: set[str] = set()
        for records in self._map_once(stage_ref, config, run_dir, envelopes, resources):
            done.update(record["input_id"] for record in records)
            yield records
        lost = [env for env in envelopes if env["item"]["input_id"] not in done]
        if lost and resources.batch_size > 1:
            single = resources.model_copy(update={"batch_size": 1})
            for records in self._map_once(stage_ref, config, run_dir, lost, single, one_at_a_time=True):
                done.update(record["input_id"] for record in records)
                yield records
            lost = [env for env in lost if env["item"]["input_id"] not in done]
        if lost:
            stage = make_stage(stage_ref, config, run_dir)
            died = WorkerDied("the worker process died while processing this item (crash or out of memory)")
            yield [record for env in lost for record in finalize(stage, env["item"], died, env["attempt"])]

    def _map_once(self, stage_ref: str, config: dict, run_dir: str, envelopes: list[dict],
                  resources: Resources, one_at_a_time: bool = False) -> Iterator[list[dict]]:
        """One Ray Data pass. `one_at_a_time` gives each actor a single task in flight, so an item that kills its
        worker cannot take a queued neighbour down with it."""
        ray = self._ray
        pool = min(self._pool_size(resources), max(1, math.ceil(len(envelopes) / resources.batch_size)))
        blocks = max(1, math.ceil(len(envelopes) / resources.batch_size))
        dataset = ray.data.from_items([{"item": to_json(env)} for env in envelopes], override_num_blocks=blocks)
        remote_args = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus or None,
                       "max_restarts": WORKER_RESTARTS, "max_task_retries": WORKER_RESTARTS}
        if resources.memory_gb:
            remote_args["memory"] = resources.memory_gb * 1024**3
        # GPU stages keep a fixed pool (models stay loaded); CPU stages may scale between 1 and the pool size.
        in_flight = {"max_tasks_in_flight_per_actor": 1} if one_at_a_time else {}
        compute = (ray.data.ActorPoolStrategy(size=pool, **in_flight) if resources.num_gpus
                   else ray.data.ActorPoolStrategy(min_size=1, max_size=pool, **in_flight))
        with warnings.catch_warnings():
            # Ray 2.60 (pinned) has no named parameter for actor restarts yet; `**ray_remote_args` is its only way.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            dataset = dataset.map_batches(
                StageWorker,
                fn_constructor_kwargs={"stage_ref": stage_ref, "config": config, "run_dir": run_dir},
                batch_size=resources.batch_size,
                batch_format="numpy",
                compute=compute,
                **{k: v for k, v in remote_args.items() if v is not None},
            )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            yield [record for text in batch["records"] for record in json.loads(text)]


def make_executor(name: str, address: str | None = None):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise ValueError(f"unknown executor {name!r}: use 'ray' or 'local'")
