"""What runs inside a worker (a Ray actor, or the driver with the local executor): one stage instance, set up
once, turning batches of input items into finished records. One item's exception becomes that item's `error`
record; the rest of the batch goes on. A failing set-up (a missing weight file, a stage module that does not
import on a node) is not an item's error: the worker answers every batch with it as a value
(`{"setup_failed": ...}` in place of a records list), and the driver stops the run with one `StageSetupError`
(a Ray actor that raised in its constructor would die, and Ray would print hundreds of lines of it)."""

from __future__ import annotations

import json
import os
import pickle
import time
import traceback
from typing import Any

import numpy as np

from humove.registry import load_stage_class
from humove.schemas.records import RecordSchemaError
from humove.stage import MapStage, Stage, StageContext

MAX_ERROR_CHARS = 2000


class StageSetupError(RuntimeError):
    """A stage could not set up (its `setup()` or its import raised), in the driver or in a Ray actor: one line
    naming the stage and the error; `details` is the traceback where it was raised."""

    def __init__(self, stage: str, failure: dict):
        self.stage = stage
        self.error_type = failure["type"]
        self.details = failure["details"]
        message = " ".join(failure["message"].split())  # one line, whatever the exception's text
        super().__init__(f"stage {stage!r} failed to set up: {self.error_type}: {message}")


def setup_failure(exc: BaseException) -> dict:
    """A set-up exception as a JSON-able value, to carry out of a Ray actor."""
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__,
            "details": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def to_json(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _json_default(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def detach_from_terminal() -> None:
    """Point stdin at /dev/null when it is a terminal this process does not own. A Ray worker runs in a
    background process group: a child that touches that terminal (`import scenedetect` runs `ffmpeg`) is stopped
    by the kernel and the run hangs. Workers never read stdin; in the foreground (the driver) nothing changes."""
    try:
        if not os.isatty(0) or os.tcgetpgrp(0) == os.getpgrp():
            return
    except OSError:  # no stdin, or a terminal that is not our controlling one
        pass
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def make_stage(stage_ref: str, config: dict, run_dir: str) -> Stage:
    cls = load_stage_class(stage_ref)
    return cls(cls.Config(**config), StageContext(run_dir=run_dir, stage=cls.name))


def error_record(stage: Stage, record_id: str, exc: BaseException) -> dict:
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3)
    message = f"{exc}\n{''.join(frames[-3:])}" if frames else str(exc)
    return {
        "id": record_id,
        "status": "error",
        "error_type": type(exc).__name__,
        "error_message": message[:MAX_ERROR_CHARS],
    }


def apply_decision(stage: Stage, record: dict) -> dict:
    """Set status from the stage's thresholds, for records whose measures were computed."""
    if record["status"] != "ok" and not record.get("by_threshold"):
        return record
    rejection = stage.decide(record)
    if rejection is None:
        return {**record, "status": "ok", "reason": None, "value": None, "detail": None, "by_threshold": None}
    return {**record, "status": "rejected", "reason": rejection.reason, "value": rejection.value,
            "detail": rejection.detail, "by_threshold": True}


def decide_safely(stage: Stage, record: dict) -> dict:
    """`apply_decision`, where a failing threshold check turns this record alone into an `error` record."""
    try:
        return apply_decision(stage, record)
    except Exception as exc:  # noqa: BLE001 - one record's failing check must not stop the others
        common = {k: record[k] for k in ("input_id", "attempt", "stage_version", "schema_version", "created_at")}
        return {**error_record(stage, record["id"], exc), **common}


def finalize(stage: Stage, item: dict, result, attempt: int, check: bool = True) -> list[dict]:
    """Complete one item's records: common columns, decisions, schema check (`check=False`: the caller checks
    a whole batch at once with `check_batch`)."""
    input_id = item["input_id"]
    common = {"input_id": input_id, "attempt": attempt, "stage_version": str(stage.version),
              "schema_version": stage.schema.version, "created_at": int(time.time() * 1000)}
    if isinstance(result, BaseException):
        records = [error_record(stage, input_id, result)]
    else:
        records = [result] if isinstance(result, dict) else list(result)
        if not records:
            records = [stage.reject(input_id, "no_output", detail="the stage produced no record for this input")]
    finished = [decide_safely(stage, {"backend": getattr(stage, "backend", None), **record, **common})
                for record in records]
    return _checked(stage, finished, common) if check else finished


def _checked(stage: Stage, finished: list[dict], common: dict) -> list[dict]:
    """One item's records if they fit the schema, else its `error` record saying why."""
    try:
        stage.schema.to_table([_for_arrow(r) for r in finished])
    except RecordSchemaError as exc:
        return [{**error_record(stage, common["input_id"], exc), **common}]
    return finished


def check_batch(stage: Stage, per_item: list[list[dict]]) -> list[list[dict]]:
    """The schema check of a batch's finished records (`finalize(check=False)`) in one table, far cheaper than
    one table per item; when it fails, item by item, so only the items that do not fit become `error` records."""
    try:
        stage.schema.to_table([_for_arrow(r) for records in per_item for r in records])
        return per_item
    except RecordSchemaError:
        common_names = ("input_id", "attempt", "stage_version", "schema_version", "created_at")
        return [_checked(stage, records, {name: records[0][name] for name in common_names})
                for records in per_item]


def _for_arrow(record: dict) -> dict:
    from datetime import UTC, datetime

    created = record.get("created_at")
    if isinstance(created, int):
        record = {**record, "created_at": datetime.fromtimestamp(created / 1000, tz=UTC)}
    return record


def records_to_table(stage: Stage, records: list[dict]):
    return stage.schema.to_table([_for_arrow(r) for r in records])


class StageWorker:
    """Callable class for Ray Data `map_batches` (one per actor: `setup()` runs once) and the local executor.

    Batches carry one column `item`: JSON of {"item": {...}, "attempt": n}; after a `PrepareWorker` they also
    carry `prepared` (the pickled prepared row) and `records` (JSON of the finished records of items whose
    `prepare` failed, else ""). The output column `records` holds, per input, the JSON list of its finished records.
    """

    def __init__(self, stage_ref: str, config: dict, run_dir: str):
        detach_from_terminal()  # before the stage module is imported
        self.setup_failed: dict | None = None  # `setup_failure()` of an import or `setup()` that raised
        try:
            self.stage = make_stage(stage_ref, config, run_dir)
            if isinstance(self.stage, MapStage):
                self.stage.setup()
        except Exception as exc:  # noqa: BLE001 - reported by the driver as one line (`StageSetupError`)
            self.setup_failed = setup_failure(exc)

    def process(self, envelopes: list[dict]) -> list[list[dict]]:
        """`prepare` inline, then the model: the local executor's path, and Ray stages without `prepare_resources`."""
        prepared = [self._prepare(env["item"]) for env in envelopes]
        return self.process_prepared(envelopes, prepared)

    def process_prepared(self, envelopes: list[dict], prepared: list[dict | BaseException]) -> list[list[dict]]:
        """Finished records per envelope, from its prepared row (or the exception its preparation raised)."""
        ready = [p for p in prepared if not isinstance(p, BaseException)]
        try:
            results = self.stage.process_batch(ready) if ready else []
            if len(results) != len(ready):
                raise RuntimeError(f"process_batch returned {len(results)} results for {len(ready)} items")
        except Exception:  # noqa: BLE001 - batched inference failed: fall back to one item at a time
            results = MapStage.process_batch(self.stage, ready)
        answers = iter(results)
        results = [p if isinstance(p, BaseException) else next(answers) for p in prepared]
        return check_batch(self.stage, [finalize(self.stage, env["item"], result, env["attempt"], check=False)
                                        for env, result in zip(envelopes, results, strict=True)])

    def _prepare(self, item: dict) -> dict | BaseException:
        try:
            return self.stage.prepare(item)
        except Exception as exc:  # noqa: BLE001 - one undecodable item must not fail the batch
            return exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.setup_failed:
            return {"records": np.array([to_json({"setup_failed": self.setup_failed})] * len(batch["item"]),
                                        dtype=object)}
        envelopes = [json.loads(text) for text in batch["item"]]
        if "prepared" not in batch:
            outputs = self.process(envelopes)
        else:  # records of items whose `prepare` failed (or the prepare workers' `setup_failed`) pass through
            outputs = [json.loads(text) if text else None for text in batch["records"]]
            todo = [index for index, finished in enumerate(outputs) if finished is None]
            prepared = [_unpickle(batch["prepared"][index]) for index in todo]
            for index, records in zip(todo, self.process_prepared([envelopes[i] for i in todo], prepared),
                                      strict=True):
                outputs[index] = records
        return {"records": np.array([to_json(records) for records in outputs], dtype=object)}


class PrepareWorker:
    """Callable class for Ray Data `map_batches`: a model stage's `prepare` (decode, sample frames, crop), on CPU
    workers of its own, ahead of the model's actor pool. Input column `item` (as for `StageWorker`); output
    columns `item`, `prepared` (the prepared row, pickled: it holds numpy arrays) and `records` (for an item whose
    `prepare` raised, its finished `error` records as JSON; else "")."""

    def __init__(self, stage_ref: str, config: dict, run_dir: str):
        detach_from_terminal()
        self.setup_failed: dict | None = None
        try:
            self.stage = make_stage(stage_ref, config, run_dir)  # no setup(): models are the model pool's
        except Exception as exc:  # noqa: BLE001 - e.g. the stage's module does not import on this node
            self.setup_failed = setup_failure(exc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.setup_failed:
            failed = to_json({"setup_failed": self.setup_failed})
            return {"item": np.asarray(batch["item"], dtype=object),
                    "prepared": np.array([b""] * len(batch["item"]), dtype=object),
                    "records": np.array([failed] * len(batch["item"]), dtype=object)}
        prepared, failed = [], []
        for text in batch["item"]:
            envelope = json.loads(text)
            try:
                blob = pickle.dumps(self.stage.prepare(envelope["item"]), protocol=pickle.HIGHEST_PROTOCOL)
                records = ""
            except Exception as exc:  # noqa: BLE001 - this item alone fails (undecodable video, unpicklable row)
                blob = b""
                records = to_json(finalize(self.stage, envelope["item"], exc, envelope["attempt"]))
            prepared.append(blob)
            failed.append(records)
        return {"item": np.asarray(batch["item"], dtype=object), "prepared": np.array(prepared, dtype=object),
                "records": np.array(failed, dtype=object)}


def _unpickle(blob: bytes) -> dict | BaseException:
    try:
        return pickle.loads(blob)
    except Exception as exc:  # noqa: BLE001 - e.g. a class the model worker cannot import: this item fails
        return exc


# Streaming: consecutive map stages in one Ray Data pipeline ------------------------------------------------------
# Every row of the stream is for one stage of the segment (`to`: its position) or finished (`to` = FINISHED: one
# item's records for the driver to write, `item` = JSON {"stage": position, "records": [...]}, or
# {"stage": position, "setup_failed": {...}}). A stage's workers take the rows for it and pass every other row
# through untouched; each `ok` record becomes a row for the next stage at once, so an item moves on as soon as it
# passes and a rejected one leaves.
FINISHED = -1


def next_item(item: dict, record: dict, key: str, carry_item: bool) -> dict:
    """The next stage's input item from an `ok` record (read back through its schema, as the ledger would give
    it): the record's own columns, its id as `key` and `input_id`, then the columns of `item` (the earlier stages')
    it does not have — what `engine.joined_inputs` builds from the stored records. `carry_item` is False for a
    source's listed items, which no later stage sees."""
    from humove.schemas.records import COMMON_NAMES

    joined = {name: value for name, value in record.items() if name not in COMMON_NAMES and name != key}
    joined[key] = joined["input_id"] = record["id"]
    if carry_item:
        for name, value in item.items():
            joined.setdefault(name, value)
    return joined


class StreamPrepareWorker:
    """`PrepareWorker` for the stream: the rows for stage `position` get `prepared` and `records` (as
    `PrepareWorker` gives them), every other row empty ones."""

    def __init__(self, stage_ref: str, config: dict, run_dir: str, position: int):
        self.worker = PrepareWorker(stage_ref, config, run_dir)
        self.position = position

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch["to"])
        prepared = np.array([b""] * rows, dtype=object)
        records = np.array([""] * rows, dtype=object)
        mine = np.flatnonzero(batch["to"] == self.position)
        if len(mine):
            done = self.worker({"item": batch["item"][mine]})
            prepared[mine] = done["prepared"]
            records[mine] = done["records"]
        return {"to": batch["to"], "item": batch["item"], "prepared": prepared, "records": records}


class StreamStageWorker:
    """`StageWorker` for the stream: processes the rows for stage `position`; out go their finished records (one
    `FINISHED` row per item) and, for each `ok` record, a row for the next stage; every other row passes through."""

    def __init__(self, stage_ref: str, config: dict, run_dir: str, position: int, carry_item: bool,
                 feeds_next: bool):
        """`carry_item`: see `next_item`; `feeds_next`: False for the segment's last stage (its `ok` records go on
        only through the ledger)."""
        self.worker = StageWorker(stage_ref, config, run_dir)
        self.position = position
        self.carry_item = carry_item
        self.feeds_next = feeds_next

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mine = batch["to"] == self.position
        to, items = list(batch["to"][~mine]), list(batch["item"][~mine])
        index = np.flatnonzero(mine)
        if len(index):
            columns = ("item", "prepared", "records") if "prepared" in batch else ("item",)
            answers = self.worker({name: batch[name][index] for name in columns})["records"]
            for text, answer in zip(batch["item"][index], answers, strict=True):
                finished = json.loads(answer)
                if isinstance(finished, dict):  # the stage's set-up failed: said once per item, the driver stops
                    to.append(FINISHED)
                    items.append(to_json({"stage": self.position, **finished}))
                    continue
                to.append(FINISHED)
                items.append(to_json({"stage": self.position, "records": finished}))
                for item in self._next_items(json.loads(text)["item"], finished):
                    to.append(self.position + 1)
                    items.append(to_json({"item": item, "attempt": 1}))
        return {"to": np.array(to, dtype=np.int32), "item": np.array(items, dtype=object)}

    def _next_items(self, item: dict, finished: list[dict]) -> list[dict]:
        ok = [record for record in finished if record["status"] == "ok"]
        if not ok or not self.feeds_next:
            return []
        stage = self.worker.stage
        stored = records_to_table(stage, ok).to_pylist()  # the values the ledger would hand the next stage
        return [next_item(item, record, stage.schema.key, self.carry_item) for record in stored]


class StreamChainWorker:
    """Every stage of a stream in one worker, for a cluster too small to give each stage workers of its own (the
    way Ray Data fuses consecutive tasks): the stages' workers are called in stream order on each batch, so an item
    passes through all of them in this process, and each stage's records go out at once. `stages`: the keyword
    arguments of each stage's `StreamStageWorker`."""

    def __init__(self, stages: list[dict]):
        self.workers = [StreamStageWorker(**arguments) for arguments in stages]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = {"to": batch["to"], "item": batch["item"]}
        for worker in self.workers:  # a stage's `ok` records are the next worker's rows at once
            rows = worker(rows)
        return rows
