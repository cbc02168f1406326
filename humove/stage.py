"""The stage contract: what a stage declares and the one method it implements.

A stage is one file in `stages/` with one class:

    class AestheticStage(MapStage):
        name = "aesthetic"
        version = "1"                                   # bump when the computation changes
        schema = schemas.aesthetic.SCHEMA                # its versioned record schema
        Config = AestheticConfig                         # pydantic; thresholds marked with decision(measure=…)
        resources = Resources(num_gpus=1, batch_size=16, concurrency=4)

        def setup(self): ...                             # load weights: once per Ray actor
        def process(self, item: dict) -> list[dict]:     # one input row → its output records
            return [self.ok(item["clip_id"], aesthetic_score=s)]
        def decide(self, record) -> Rejection | None:    # thresholds: cheap, re-applied without recompute
            ...
        @classmethod
        def reads(cls, config) -> Reads | None:          # the upstream columns it uses: what invalidates it
            return Reads(SHOTS_CLIP_FIELDS, if_present=TRIMMED_CLIP_FIELDS)  # `humove.clips`: the clip it scores

`process` may raise: the engine turns the exception into an `error` record for that item alone (with type,
message and attempt) and the batch goes on. `process_batch` can be overridden for batched GPU inference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from humove.redact import redact_secret, redact_value
from humove.schemas.records import RecordSchema


class Resources(BaseModel):
    """What one worker of a stage needs, and how many workers its pool has. A pool starts at `concurrency` (None:
    one per CPU slot for CPU stages, an even share of the GPUs for GPU stages) and grows as nodes join up to
    `max_concurrency`; without it, a CPU pool without `concurrency` grows to what the cluster holds, and any
    other pool stays fixed (a GPU stage's model is costly to load: it grows only where asked)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float | None = None
    batch_size: int = 4
    concurrency: int | None = Field(None, ge=1)
    max_concurrency: int | None = Field(None, ge=1)

    @field_validator("max_concurrency")
    @classmethod
    def _not_below_concurrency(cls, value: int | None, info: ValidationInfo) -> int | None:
        start = info.data.get("concurrency")
        if value is not None and start is not None and value < start:
            raise ValueError(f"{value} is below concurrency ({start}), where the pool starts: set "
                             f"max_concurrency: {start} or more, or a smaller concurrency")
        return value


class StageConfig(BaseModel):
    """Base of every stage config. Fields made with `decision()` are thresholds: changing them re-applies
    the stage's decision to stored measures instead of recomputing the stage. Fields made with `secret()` hold
    credentials: never written, never in a fingerprint."""

    model_config = ConfigDict(extra="forbid")

    def fingerprint_dict(self) -> dict[str, Any]:
        """The fields that change computed results: not thresholds, not which inputs are listed, not secrets
        (nor a password inside any URL)."""
        fields = type(self).model_fields
        return {
            name: value
            for name, value in self.redacted_dict().items()
            if not (_is_decision(fields[name]) or _is_listing(fields[name]) or _is_secret(fields[name]))
        }

    def redacted_dict(self) -> dict[str, Any]:
        """The config as it may be written or printed (`_stage.json`, messages): secrets and URL credentials
        masked (`user:***@host`)."""
        fields = type(self).model_fields
        return {
            name: redact_secret(value) if _is_secret(fields[name]) else redact_value(value)
            for name, value in self.model_dump(mode="json").items()
        }

    @classmethod
    def listing_fields(cls) -> set[str]:
        """The fields made with `listing()`: only a pipeline's first (source) stage uses them."""
        return {name for name, info in cls.model_fields.items() if _is_listing(info)}

    def decision_dict(self) -> dict[str, Any]:
        return {
            name: value
            for name, value in self.model_dump(mode="json").items()
            if _is_decision(type(self).model_fields[name])
        }

    @classmethod
    def decision_measures(cls) -> dict[str, str]:
        """Threshold field → the record column it is compared with (`decision(measure=…)`), e.g.
        {"min_person_size": "person_size"}: the report draws each threshold on that column's histogram."""
        return {name: info.json_schema_extra["measure"] for name, info in cls.model_fields.items()
                if _is_decision(info) and info.json_schema_extra.get("measure")}


def decision(default: Any, description: str = "", measure: str | None = None, **kwargs) -> Any:
    """A config field that only affects the keep/reject decision, not the computed measures. `measure`: the
    record column the threshold is compared with (a list column: each of its values), where there is one."""
    extra = {"decision": True, **({"measure": measure} if measure else {})}
    return Field(default, description=description, json_schema_extra=extra, **kwargs)


def listing(default: Any, description: str = "", **kwargs) -> Any:
    """A source-stage config field that chooses which inputs exist (a folder, a manifest): changing it adds or
    drops inputs but does not invalidate the results already computed for the others."""
    return Field(default, description=description, json_schema_extra={"listing": True}, **kwargs)


def secret(default: Any, description: str = "", **kwargs) -> Any:
    """A config field that holds a credential (a proxy URL with a password, a token): it never reaches the run
    dir, a log or the report (shown redacted) and changing it does not change the stage's fingerprint."""
    return Field(default, description=description, json_schema_extra={"secret": True}, **kwargs)


def _is_secret(info) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("secret"))


def _is_decision(info) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("decision"))


def _is_listing(info) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("listing"))


@dataclass(frozen=True)
class Reads:
    """What a stage reads of the upstream records: `fields` it needs (a pipeline where no earlier stage makes one
    is a config error) and `if_present` fields it reads when an earlier stage makes them (`item.get`: a stage a
    pipeline may leave out, e.g. person's trimmed clip). An artifact is read through its column (`clip_path`).
    The engine's own columns (`input_id`, the stage keys `video_id`, `clip_id`, …) need no declaring."""

    fields: frozenset[str] = frozenset()
    if_present: frozenset[str] = frozenset()

    def __init__(self, fields: Iterable[str] = (), if_present: Iterable[str] = ()):
        if isinstance(fields, str) or isinstance(if_present, str):
            raise TypeError("Reads takes collections of column names, not one name")
        object.__setattr__(self, "fields", frozenset(fields))
        object.__setattr__(self, "if_present", frozenset(if_present) - frozenset(fields))


@dataclass(frozen=True)
class Rejection:
    reason: str                   # machine-readable, e.g. "too_short"
    value: float | None = None    # the measured value that failed the threshold
    measured: str | None = None   # what was measured, in words: "seen 0.40 s at a stretch"
    needs: str | None = None      # what keeping needs (the threshold), in words: "≥ 1 s"

    @property
    def detail(self) -> str:
        """The record's `detail`: "reason: measured (needs …)", e.g. "main_person_too_brief: seen 0.40 s at a
        stretch (needs ≥ 1 s)"; without words, "reason (measured value)"."""
        if self.measured is None:
            return f"{self.reason} (measured {self.value})"
        return f"{self.reason}: {self.measured}" + (f" (needs {self.needs})" if self.needs else "")


class Stage:
    """Common declarations of all stages."""

    name: ClassVar[str]
    version: ClassVar[str]
    schema: ClassVar[RecordSchema]
    Config: ClassVar[type[StageConfig]] = StageConfig
    resources: ClassVar[Resources] = Resources()
    description: ClassVar[str] = ""

    def __init__(self, config: StageConfig, context: StageContext):
        self.config = config
        self.context = context

    def decide(self, record: dict) -> Rejection | None:
        """Apply thresholds to a record whose measures were computed (status ok). None keeps it."""
        return None

    @classmethod
    def reads(cls, config: StageConfig) -> Reads | None:
        """The upstream record columns this stage uses with `config` (`Reads`). A change upstream invalidates
        the stage only when the stage that makes one of them changed (`engine.stage_fingerprints`), so a column
        left out here leaves stale results: when unsure, list it. None (the default): it reads everything
        upstream, and any upstream change invalidates it."""
        return None

    # Record builders: stage code states its fields; the engine fills the common columns.
    def ok(self, record_id: str, **fields) -> dict:
        return {"id": record_id, "status": "ok", **fields}

    def reject(self, record_id: str, reason: str, value: float | None = None, detail: str | None = None,
               **fields) -> dict:
        return {"id": record_id, "status": "rejected", "reason": reason, "value": value, "detail": detail,
                **fields}


class MapStage(Stage):
    """A stage that maps each input row (upstream `ok` records, joined) to zero or more output records.

    An input row holds every stage-specific column of the upstream records of that item (e.g. a clip row has
    the ingest columns of its source video and the shots columns of the clip), the upstream keys (`video_id`,
    `clip_id`) and `input_id` (the upstream record's id). A source stage (the first stage of a pipeline) sets
    `is_source = True` and lists its own inputs with `list_inputs()`, each with a unique, stable `input_id`.
    If `process` returns no record, the engine records a rejection `no_output` for that input.
    """

    is_source: ClassVar[bool] = False
    # Model stages split their work in two: `prepare` (CPU: decode, sample frames, crop, resize) and
    # `process_batch` (the model, on prepared items). With `prepare_resources` set, the executor runs `prepare` in
    # CPU workers of their own, streaming into the model's fixed actor pool, so a GPU never waits for decoding.
    prepare_resources: ClassVar[Resources | None] = None

    def list_inputs(self) -> Iterable[dict]:
        """A source's items, each a JSON-able dict with a unique `input_id`: a list, or a generator for a long
        listing (the engine stores it in Arrow chunk by chunk, never as one list)."""
        raise NotImplementedError(f"stage {self.name!r} is not a source stage")

    def setup(self) -> None:
        """Load models. Called once per worker (Ray actor) before the first batch."""

    def prepare(self, item: dict) -> dict:
        """CPU preparation of one input row, before the model sees it: returns the row with what the model needs
        added (numpy frames, crops). May raise: that item alone becomes an `error` record. Default: unchanged."""
        return item

    def process(self, item: dict) -> list[dict] | dict:
        raise NotImplementedError(f"stage {self.name!r} must implement process()")

    def process_batch(self, items: list[dict]) -> list[list[dict] | dict | BaseException]:
        """Default: one item at a time. Override for batched inference; return one entry per item, where an
        exception instance marks that item alone as failed."""
        results: list[list[dict] | dict | BaseException] = []
        for item in items:
            try:
                results.append(self.process(item))
            except Exception as exc:  # noqa: BLE001 - one bad item must not fail the batch
                results.append(exc)
        return results


class AggregateStage(Stage):
    """A stage that needs all its inputs at once (e.g. shard writing). It reruns whole when its inputs or
    fingerprint change, and must be deterministic: the same inputs give byte-identical outputs."""

    def run(self, inputs: list[dict]) -> list[dict]:
        raise NotImplementedError(f"stage {self.name!r} must implement run()")


@dataclass(frozen=True)
class StageContext:
    """What a stage may know about the run: where it writes artifacts, and which stage it is."""

    run_dir: str
    stage: str

    @property
    def storage(self):
        from humove.storage import Storage

        return Storage(self.run_dir)

    def artifact_url(self, record_id: str, ext: str) -> str:
        """`<run_dir>/artifacts/<stage>/<id>.<ext>`; ext without the leading dot."""
        return self.storage.join("artifacts", self.stage, f"{record_id}.{ext}")

    def scratch_dir(self) -> str:
        """A local temp directory for tools that need real files (encoders). Caller removes it."""
        import tempfile

        return tempfile.mkdtemp(prefix=f"humove-{self.stage}-")


def fingerprint(payload: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able dict."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
