"""The shard sample spec, version 3: what a HuMoVe WebDataset dataset holds, checked on write and on read.

A dataset folder holds:

    humove-{split}-{index:06d}.tar   WebDataset shards; split ∈ {train, val} (ingest-motion: `train` by default)
    index.parquet                    one row per sample: key → shard, split, position; the metadata fields as
                                     typed columns (`scores.aesthetic_mean` → `scores_aesthetic_mean`) and the
                                     whole `{key}.json` (`metadata`)
    wids-{split}.json                a `wids.ShardListDataset` descriptor per split (relative shard URLs)
    shard-stats.parquet              shards stage only: each shard's motion sums, from which dataset.json's
                                     statistics are merged (a re-run adds new shards' without reading old ones)
    dataset.json                     written LAST: schema version, counts per split, every shard with its size
                                     and BLAKE3 checksum, motion statistics. A folder without a complete dataset.json is
                                     not a dataset: every reader goes by it (`read_dataset`, `list_shards`).

A sample is the tar members sharing one key (the clip id, [0-9a-z_-] only, so no dots):

| member              | content                                                                  |
|---------------------|--------------------------------------------------------------------------|
| `{key}.mp4`         | the clip, H.264 MP4 at a constant frame rate; absent in motion-only samples |
| `{key}.json`        | the sample metadata, UTF-8 JSON (sorted keys), fixed schema below        |
| `{key}.motion.npz`  | optional; the motion file of `humove.schemas.motion`, F = num_frames     |
| `{key}.latents.npy`, `{key}.text.npy` | only in cached copies written by `humove.model.cache`     |

`{key}.json` has a FIXED schema: the same keys with the same types in every sample of every shard, declared
once in `SAMPLE_FIELDS` (dotted names are nested objects). Strings are never null ('' when unknown; `caption`
comes with `has_caption`); a number is null only where the table says so (a score a stage did not measure);
`has_video` / `has_motion` say which members exist (a motion-only sample has `has_video` false, width = height
= 0 and its `clip` group describes the whole sequence). The metadata carries no path of the building machine:
`source.uri` is the input's URL, or its path relative to the listed folder or manifest. Adding a field is one
`SampleField` line; `hf_features()` is the matching `datasets.Features`.

Two spans, never mixed: `shot.*` is what the shots stage cut from the source (a shot, or a window of a long
shot), `clip.*` what `{key}.mp4` and the motion hold (the person stage may trim the shot to the main person's
visible span). Each in source frame numbers (end exclusive) and source seconds; `fps` / `num_frames` are the
mp4's own. Version 3 (2026-12) split them; version-2 samples, whose `clip` group mixed the two, are read into
this layout by `parse_metadata` (`read_sample`, `validate_sample`), with null where v2 recorded nothing.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)

from humove.schemas.checksums import file_digest
from humove.schemas.motion import NUM_BODY_JOINTS, MotionClip, MotionFileError, load_motion

SHARD_SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (2, 3)  # 2: read into the current layout by `parse_metadata`
SPLITS = ("train", "val")
SPLIT_RE = re.compile(r"^[a-z][a-z0-9]*$")
SHARD_NAME_FORMAT = "humove-{split}-{index:06d}.tar"
SHARD_NAME_RE = re.compile(r"^humove-([a-z][a-z0-9]*)-(\d{6})\.tar$")
INDEX_FILE = "index.parquet"
MANIFEST_FILE = "dataset.json"
WIDS_FILE_FORMAT = "wids-{split}.json"
DEFAULT_OUTPUT_DIR = "dataset"  # the dataset folder inside a run dir, unless the shards stage sets `output`

VIDEO_EXT = "mp4"
METADATA_EXT = "json"
MOTION_EXT = "motion.npz"
CACHE_EXTENSIONS = ("latents.npy", "text.npy")  # added by humove.model.cache to its cached copy
SAMPLE_EXTENSIONS = (METADATA_EXT, MOTION_EXT, VIDEO_EXT)
KEY_RE = re.compile(r"^[0-9a-z][0-9a-z_-]*$")


class ShardSampleError(ValueError):
    """A sample breaks the shard spec; the message names the sample key and the problem."""


class DatasetError(ValueError):
    """A folder is not a complete published dataset; the message names the folder and what is wrong."""


# The sample metadata table ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleField:
    """One field of `{key}.json`.

    name: dotted path ("fps", "clip.start_s"); type: "string" | "int64" | "float64" | "bool";
    column: the record column the shards stage fills it from (None: set by the producer itself);
    nullable: numbers only, null = not measured (strings are '' when unknown, never null).
    """

    name: str
    type: str
    doc: str
    column: str | None = None
    nullable: bool = False


SAMPLE_FIELDS: tuple[SampleField, ...] = (
    SampleField("schema_version", "int64", "shard sample spec version"),
    SampleField("key", "string", "sample key = clip_id"),
    SampleField("clip_id", "string", "clip id (video id, start, end), or the motion sequence id"),
    SampleField("video_id", "string", "content hash of the source video (of the source file for motion-only)"),
    SampleField("split", "string", "train | val (or the split ingest-motion was given)"),
    SampleField("fps", "float64", "frame rate of the clip (and of its motion)"),
    SampleField("num_frames", "int64", "frames of the clip (and of its motion)"),
    SampleField("width", "int64", "clip width in pixels; 0 without video"),
    SampleField("height", "int64", "clip height in pixels; 0 without video"),
    SampleField("duration_s", "float64", "num_frames / fps"),
    SampleField("has_video", "bool", "the sample has `{key}.mp4`"),
    SampleField("has_motion", "bool", "the sample has `{key}.motion.npz`"),
    SampleField("caption", "string", "the clip's caption; '' when it has none", column="caption"),
    SampleField("has_caption", "bool", "caption is set"),
    # The shot: what the shots stage cut from the source video (a shot, or one window of a long shot).
    SampleField("shot.index", "int64", "shot number in the source video", column="shot_index"),
    SampleField("shot.window_index", "int64", "window number within a long shot", column="window_index"),
    SampleField("shot.source_start_frame", "int64", "first source frame of the shot", column="start_frame"),
    SampleField("shot.source_end_frame", "int64", "end source frame of the shot, exclusive", column="end_frame"),
    SampleField("shot.source_start_s", "float64", "start of the shot in the source, seconds (null: unknown, "
                "schema 2)", nullable=True),
    SampleField("shot.source_end_s", "float64", "end of the shot in the source, seconds (null: unknown, schema 2)",
                nullable=True),
    SampleField("shot.num_frames", "int64", "frames of the shot at `fps` (null: unknown, schema 2)", nullable=True),
    SampleField("shot.detector", "string", "shot detector and its settings", column="detector"),
    # The clip: what `{key}.mp4` and the motion hold, `num_frames` frames at `fps`; the person stage may have
    # trimmed it to a span of the shot. Frame i lies at source time clip.source_start_s + i / fps.
    SampleField("clip.source_start_frame", "int64", "first source frame of the clip: the one its first frame "
                "shows (null: unknown, see the README)", nullable=True),
    SampleField("clip.source_end_frame", "int64", "end source frame of the clip, exclusive: source frames whose "
                "time is before clip.source_end_s (null: unknown)", nullable=True),
    SampleField("clip.source_start_s", "float64", "start of the clip in the source, seconds"),
    SampleField("clip.source_end_s", "float64", "end of the clip in the source, seconds"),
    SampleField("clip.shot_start_frame", "int64", "first frame of the clip in the shot at `fps` (0: not trimmed)"),
    SampleField("clip.shot_end_frame", "int64", "end frame of the clip in the shot at `fps`, exclusive"),
    SampleField("clip.sha256", "string", "sha256 of the clip's MP4 ('' without video)", column="clip_sha256"),
    SampleField("clip.bytes", "int64", "size of the clip's MP4 (0 without video)", column="clip_bytes"),
    # The source video (ingest stage).
    SampleField("source.uri", "string", "URL of the input, or its path relative to the listed folder or "
                "manifest (builtin:demo-videos/<name> for demo videos); never a local absolute path",
                column="source_uri"),
    SampleField("source.keyword", "string", "search keyword (manifest)", column="keyword"),
    SampleField("source.category", "string", "motion category (manifest)", column="category"),
    SampleField("source.subcategory", "string", "motion subcategory (manifest)", column="subcategory"),
    SampleField("source.origin", "string", "where it came from: site or dataset (manifest `source`)",
                column="source"),
    SampleField("source.licence", "string", "licence (manifest)", column="licence"),
    SampleField("source.size_bytes", "int64", "file size", column="size_bytes"),
    SampleField("source.duration_s", "float64", "duration", column="duration_s"),
    SampleField("source.fps", "float64", "average frame rate", column="fps"),
    SampleField("source.variable_fps", "bool", "variable frame rate", column="variable_fps"),
    SampleField("source.width", "int64", "display width (0 without video)", column="width"),
    SampleField("source.height", "int64", "display height (0 without video)", column="height"),
    SampleField("source.codec", "string", "video codec", column="codec"),
    SampleField("source.rotation", "int64", "display rotation, degrees", column="rotation"),
    SampleField("source.num_frames", "int64", "frames of the source", column="num_frames"),
    SampleField("source.has_audio", "bool", "the source has an audio stream", column="has_audio"),
    # Measures of later stages; null when the stage did not run.
    SampleField("scores.aesthetic_mean", "float64", "mean aesthetic score of the clip", column="aesthetic_mean",
                nullable=True),
    SampleField("scores.aesthetic_scale", "string", "what the score is: model and scale (offline: technical "
                "image quality, 0–10, not an aesthetic model)", column="aesthetic_scale"),
    SampleField("scores.synthetic_score", "float64", "highest zero-shot probability of a non-photo content type "
                "(animation, cartoon, CGI, …) from the aesthetic encoder; null without one", column="synthetic_score",
                nullable=True),
    SampleField("scores.content_type", "string", "most probable content type ('photo', 'cartoon', …; '' when "
                "not measured)", column="content_type"),
    SampleField("person.box_height", "float64", "main person's box height / frame height", column="person_box_height",
                nullable=True),
    SampleField("person.second_ratio", "float64", "size of the second-largest person / the main one",
                column="person_second_ratio", nullable=True),
    SampleField("person.model", "string", "person detector", column="person_model"),
    SampleField("pose.visible_mean", "float64", "visible body keypoints per frame (of 17)", column="pose_visible_mean",
                nullable=True),
    SampleField("pose.full_body_fraction", "float64", "frames showing shoulders, hips, knees and ankles",
                column="pose_full_body_fraction", nullable=True),
    SampleField("pose.model", "string", "keypoint model", column="pose_model"),
    SampleField("motion.body_model", "string", "body model of {key}.motion.npz", column="motion_body_model"),
    SampleField("motion.smpl_model", "string", "SMPL estimator (camerahmr+flnet, offline-fitter)",
                column="smpl_model"),
    SampleField("motion.valid_fraction", "float64", "frames where the person is seen and the fit agrees",
                column="motion_valid_fraction", nullable=True),
    SampleField("motion.reprojection_rel", "float64", "reprojection error / person height",
                column="motion_reprojection_rel", nullable=True),
    SampleField("motion.agreement_pck", "float64", "keypoints the fit explains (PCK at 0.1 height)",
                column="motion_agreement_pck", nullable=True),
    SampleField("motion.jitter_mps2", "float64", "mean joint acceleration, m/s²", column="motion_jitter_mps2",
                nullable=True),
    SampleField("captioning.appearance", "string", "subject's appearance and attire", column="caption_appearance"),
    SampleField("captioning.background", "string", "background", column="caption_background"),
    SampleField("captioning.action", "string", "action", column="caption_action"),
    SampleField("captioning.model", "string", "caption model, or 'template' (composed offline)",
                column="caption_model"),
    SampleField("captioning.prompt_hash", "string", "prompt hash", column="caption_prompt_hash"),
    SampleField("captioning.prompt_tokens", "int64", "prompt tokens", column="caption_prompt_tokens", nullable=True),
    SampleField("captioning.output_tokens", "int64", "output tokens", column="caption_output_tokens", nullable=True),
)

# Schema 2 (datasets built until 2026-12): one `clip` group mixed the shot and the clip. Its start_frame /
# end_frame were the shot's source frames while start_s / end_s and span_start_frame / span_end_frame were the
# clip's (the person stage's trimmed span); the clip's source frames and the shot's seconds were not recorded.
# `parse_metadata` reads such samples into the current layout (`_from_v2`), with null where v2 recorded nothing.
_V2_CLIP_FIELDS = (
    SampleField("clip.shot_index", "int64", "shot number in the source video", column="shot_index"),
    SampleField("clip.window_index", "int64", "window number within a long shot", column="window_index"),
    SampleField("clip.start_s", "float64", "start of the clip in the source video, seconds", column="start_s"),
    SampleField("clip.end_s", "float64", "end of the clip in the source video, seconds", column="end_s"),
    SampleField("clip.start_frame", "int64", "first source frame of the SHOT (not of the clip)",
                column="start_frame"),
    SampleField("clip.end_frame", "int64", "end source frame of the SHOT, exclusive", column="end_frame"),
    SampleField("clip.span_start_frame", "int64", "first frame of the clip in the shot clip (person trim)"),
    SampleField("clip.span_end_frame", "int64", "end frame of the clip in the shot clip, exclusive"),
    SampleField("clip.sha256", "string", "sha256 of the clip's MP4 ('' without video)", column="clip_sha256"),
    SampleField("clip.bytes", "int64", "size of the clip's MP4 (0 without video)", column="clip_bytes"),
    SampleField("clip.detector", "string", "shot detector and its settings", column="detector"),
)
_ADDED_IN_V3 = ("scores.synthetic_score", "scores.content_type")
SAMPLE_FIELDS_V2: tuple[SampleField, ...] = (
    *(f for f in SAMPLE_FIELDS if not f.name.startswith(("shot.", "clip.")) and f.name not in _ADDED_IN_V3),
    *_V2_CLIP_FIELDS,
)

_PYTHON_TYPES = {"string": str, "int64": int, "float64": float, "bool": bool}
_MISSING_STRING = ""


def sample_fields(schema_version: int = SHARD_SCHEMA_VERSION) -> tuple[SampleField, ...]:
    """The `{key}.json` fields written by a schema version (`READABLE_SCHEMA_VERSIONS`)."""
    if schema_version not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"shard schema version {schema_version}: this humove reads {READABLE_SCHEMA_VERSIONS}")
    return SAMPLE_FIELDS if schema_version == SHARD_SCHEMA_VERSION else SAMPLE_FIELDS_V2


def _group_names(fields: tuple[SampleField, ...] = SAMPLE_FIELDS) -> list[str]:
    return list(dict.fromkeys(f.name.split(".", 1)[0] for f in fields if "." in f.name))


def _pydantic_field(spec: SampleField):
    python_type = _PYTHON_TYPES[spec.type]
    if spec.nullable:
        return (python_type | None, ...)
    return (python_type, ...)


_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _SampleBase(BaseModel):
    model_config = _STRICT
    accepted_versions: ClassVar[tuple[int, ...]] = (SHARD_SCHEMA_VERSION,)

    @model_validator(mode="after")
    def _consistent(self):
        if self.schema_version not in self.accepted_versions:
            raise ValueError(f"schema_version {self.schema_version}, expected one of {list(self.accepted_versions)}")
        if not SPLIT_RE.match(self.split):
            raise ValueError(f"split {self.split!r} must match {SPLIT_RE.pattern}")
        if not (self.fps > 0 and self.num_frames >= 1 and self.duration_s >= 0):
            raise ValueError(f"fps {self.fps}, num_frames {self.num_frames}, duration_s {self.duration_s}: "
                             "need fps > 0, num_frames >= 1, duration_s >= 0")
        if self.has_video and (self.width < 1 or self.height < 1):
            raise ValueError(f"a sample with video needs width and height >= 1, got {self.width}×{self.height}")
        if self.has_caption != bool(self.caption):
            raise ValueError(f"has_caption={self.has_caption} but caption is {self.caption!r}")
        return self

    def to_json_bytes(self) -> bytes:
        """Deterministic encoding: sorted keys, no whitespace, no NaN."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode()


class _CurrentSampleBase(_SampleBase):
    # A schema-2 sample read into this layout keeps its `schema_version` 2: its nulls are "not recorded".
    accepted_versions: ClassVar[tuple[int, ...]] = READABLE_SCHEMA_VERSIONS

    @model_validator(mode="after")
    def _spans_in_order(self):
        shot, clip = self.shot, self.clip
        spans = {"shot source frames": (shot.source_start_frame, shot.source_end_frame),
                 "shot source seconds": (shot.source_start_s, shot.source_end_s),
                 "clip source frames": (clip.source_start_frame, clip.source_end_frame),
                 "clip source seconds": (clip.source_start_s, clip.source_end_s),
                 "clip frames in the shot": (clip.shot_start_frame, clip.shot_end_frame)}
        for name, (start, end) in spans.items():
            if start is not None and end is not None and end < start:
                raise ValueError(f"{name}: end {end} before start {start}")
        for frame in (clip.source_start_frame, clip.source_end_frame):
            if frame is not None and not shot.source_start_frame <= frame <= shot.source_end_frame:
                raise ValueError(f"clip source frames [{clip.source_start_frame}, {clip.source_end_frame}) are not "
                                 f"inside the shot's [{shot.source_start_frame}, {shot.source_end_frame})")
        return self


class _V2SampleBase(_SampleBase):
    accepted_versions: ClassVar[tuple[int, ...]] = (2,)


def _metadata_model(name: str, fields: tuple[SampleField, ...], base: type[_SampleBase], doc: str):
    groups = {
        group: create_model(
            f"{name}{group.capitalize()}", __config__=_STRICT,
            **{f.name.split(".", 1)[1]: _pydantic_field(f) for f in fields if f.name.startswith(group + ".")},
        )
        for group in _group_names(fields)
    }
    metadata = create_model(name, __base__=base, __doc__=doc,
                            **{f.name: _pydantic_field(f) for f in fields if "." not in f.name},
                            **{group: (model, ...) for group, model in groups.items()})
    # Module attributes under their own names, so that pickle finds the classes: a sample crosses processes
    # (DataLoader workers, Ray) by pickle.
    for made in (metadata, *groups.values()):
        globals()[made.__name__] = made
    return metadata


SampleMetadata = _metadata_model("SampleMetadata", SAMPLE_FIELDS, _CurrentSampleBase,
                                 "`{key}.json` (fields: `SAMPLE_FIELDS`).")
_SampleMetadataV2 = _metadata_model("SampleMetadataV2", SAMPLE_FIELDS_V2, _V2SampleBase,
                                    "`{key}.json` of schema 2 (fields: `SAMPLE_FIELDS_V2`), read only.")


def _from_v2(old: BaseModel) -> SampleMetadata:
    """A schema-2 sample in the current layout. What v2 recorded maps exactly (see `_V2_CLIP_FIELDS`); the
    clip's source frames, the shot's seconds and its length at `fps` were never recorded: null, not guessed."""
    fields = old.model_dump()
    clip = fields.pop("clip")
    fields["shot"] = {"index": clip["shot_index"], "window_index": clip["window_index"],
                      "source_start_frame": clip["start_frame"], "source_end_frame": clip["end_frame"],
                      "source_start_s": None, "source_end_s": None, "num_frames": None, "detector": clip["detector"]}
    fields["clip"] = {"source_start_frame": None, "source_end_frame": None, "source_start_s": clip["start_s"],
                      "source_end_s": clip["end_s"], "shot_start_frame": clip["span_start_frame"],
                      "shot_end_frame": clip["span_end_frame"], "sha256": clip["sha256"], "bytes": clip["bytes"]}
    fields["scores"].update(synthetic_score=None, content_type=_MISSING_STRING)
    return SampleMetadata(**fields)


def field_default(spec: SampleField) -> Any:
    """What a field holds when its source has no value: '' for strings, null for nullable numbers; None for a
    required number or flag (the producer must then reject the sample)."""
    if spec.type == "string":
        return _MISSING_STRING
    return None


def build_metadata(**fields: Any) -> SampleMetadata:
    """`SampleMetadata` from top-level values and group dicts (`clip={...}`, `source={...}`, `scores={...}`);
    `schema_version` and `has_caption` are filled in. Raises `ShardSampleError` naming the sample and field."""
    fields = dict(fields)
    fields.setdefault("schema_version", SHARD_SCHEMA_VERSION)
    caption = fields.get("caption")
    fields["caption"] = caption.strip() if isinstance(caption, str) else _MISSING_STRING
    fields["has_caption"] = bool(fields["caption"])
    try:
        return SampleMetadata(**fields)
    except ValidationError as exc:
        raise ShardSampleError(f"sample {fields.get('key')!r}: {_describe(exc)}") from exc


def filled_metadata(**values: Any) -> SampleMetadata:
    """`build_metadata` with every field not given at its empty value ('' strings, 0 numbers, false flags, null
    for nullable numbers): for producers that know only part of the table (motion-only samples, tests).
    `values` use dotted names for group fields (`**{"clip.end_s": 2.0}`) or group dicts (`clip={...}`)."""
    empty = {"string": "", "int64": 0, "float64": 0.0, "bool": False}
    fields: dict[str, Any] = {}
    for spec in SAMPLE_FIELDS:
        group, _, leaf = spec.name.rpartition(".")
        if spec.name in values:
            value = values[spec.name]
        elif group and leaf in values.get(group, {}):
            value = values[group][leaf]
        else:
            value = None if spec.nullable else empty[spec.type]
        (fields.setdefault(group, {}) if group else fields)[leaf] = value
    fields.pop("has_caption", None)
    fields.pop("schema_version", None)
    return build_metadata(**fields)


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(document)"
    return f"metadata field {field!r}: {first['msg']}"


def hf_features(decode_video: bool = False, schema_version: int = SHARD_SCHEMA_VERSION):
    """`datasets.Features` of a raw sample as `datasets.load_dataset("webdataset", data_files=…, features=…)`
    reads it: `json` (the fixed metadata schema of `schema_version`: 2 for datasets built before it changed;
    `parse_metadata(row["json"])` gives either in the current layout), `mp4` (`datasets.Video`; with
    `decode_video=False` a dict of `bytes` and `path`, decoding needs torchcodec otherwise), `motion.npz` (the
    motion arrays, null when absent), `__key__`, `__url__`."""
    import datasets

    def value(spec: SampleField):
        return datasets.Value("string" if spec.type == "string" else spec.type)

    fields = sample_fields(schema_version)
    metadata = {f.name: value(f) for f in fields if "." not in f.name}
    for group in _group_names(fields):
        metadata[group] = {f.name.split(".", 1)[1]: value(f) for f in fields if f.name.startswith(group + ".")}
    return datasets.Features({
        METADATA_EXT: metadata,
        VIDEO_EXT: datasets.Video(decode=decode_video),
        MOTION_EXT: _motion_features(datasets),
        "__key__": datasets.Value("string"),
        "__url__": datasets.Value("string"),
    })


def _motion_features(datasets) -> dict:
    """The arrays of a motion file (`humove.schemas.motion`), F frames first. Kept beside the motion schema's
    shapes (v3); a change there fails tests/test_dataset_publish.py until this follows."""
    return {
        "betas": datasets.Array2D((None, 10), "float32"),
        "global_orient": datasets.Array2D((None, 3), "float32"),
        "body_pose": datasets.Array2D((None, NUM_BODY_JOINTS * 3), "float32"),  # v2: (F, 69)
        "transl": datasets.Array2D((None, 3), "float32"),
        "joints": datasets.Array3D((None, 24, 3), "float32"),
        "focal": datasets.Sequence(datasets.Value("float32")),
        "image_size": datasets.Sequence(datasets.Value("int32")),
        "valid": datasets.Sequence(datasets.Value("bool")),
        "joint_valid": datasets.Array2D((None, 24), "bool"),  # v3: per SMPL joint, seen in the frame
        "fps": datasets.Value("float32"),
        "body_model": datasets.Value("string"),
        "schema_version": datasets.Value("int32"),
    }


@dataclass
class ShardSample:
    """A sample read back from a shard: the clip's MP4 bytes (None when motion-only), its metadata and its
    motion when present."""

    key: str
    metadata: SampleMetadata
    video: bytes | None
    motion: MotionClip | None


def encode_sample(metadata: SampleMetadata, video: bytes | None, motion: bytes | None = None) -> dict[str, bytes]:
    """The members of one sample, keyed by extension (plus `__key__`), validated before they are written."""
    sample = {"__key__": metadata.key, METADATA_EXT: metadata.to_json_bytes()}
    if video is not None:
        sample[VIDEO_EXT] = video
    if motion is not None:
        sample[MOTION_EXT] = motion
    validate_sample(sample)
    return sample


def validate_sample(sample: Mapping[str, Any]) -> SampleMetadata:
    """Check one sample against the spec and return its metadata.

    `sample` maps extension → bytes, as WebDataset yields it (keys starting with `__`, such as `__key__` and
    `__url__`, are bookkeeping and only `__key__` is checked). Raises `ShardSampleError`.
    """
    return _check(sample, return_motion=False)[0]


def read_sample(sample: Mapping[str, Any]) -> ShardSample:
    """Validate a raw WebDataset sample and decode it: use as `webdataset.WebDataset(urls).map(read_sample)`."""
    metadata, motion = _check(sample, return_motion=True)
    video = bytes(sample[VIDEO_EXT]) if VIDEO_EXT in sample else None
    return ShardSample(key=metadata.key, metadata=metadata, video=video, motion=motion)


def parse_metadata(data: bytes | Mapping[str, Any], where: str = "sample") -> SampleMetadata:
    """`{key}.json` (its bytes, or the parsed object as `datasets` or `wids` hand it) → `SampleMetadata`, or
    `ShardSampleError` naming `where` and the bad field. A schema-2 sample comes in the current layout, with
    its `schema_version` 2 kept and null where v2 recorded nothing (`_from_v2`)."""
    def validate(model):
        if isinstance(data, Mapping):
            return model.model_validate(data)
        return model.model_validate_json(bytes(data))

    try:
        return validate(SampleMetadata)
    except ValidationError as exc:
        version = _declared_version(data)
        if version is not None and version not in READABLE_SCHEMA_VERSIONS:
            raise ShardSampleError(f"{where}: schema_version {version!r}; this humove reads shard schema "
                                   f"versions {list(READABLE_SCHEMA_VERSIONS)}") from exc
        if version != 2:
            raise ShardSampleError(f"{where}: {_describe(exc)}") from exc
    try:
        return _from_v2(validate(_SampleMetadataV2))
    except ValidationError as exc:
        raise ShardSampleError(f"{where} (schema 2): {_describe(exc)}") from exc


def _declared_version(data: bytes | Mapping[str, Any]) -> Any:
    """The `schema_version` a metadata document declares (None when it is not a JSON object)."""
    if not isinstance(data, Mapping):
        try:
            data = json.loads(bytes(data))
        except ValueError:
            return None
    return data.get("schema_version") if isinstance(data, Mapping) else None


def _check(sample: Mapping[str, Any], return_motion: bool) -> tuple[SampleMetadata, MotionClip | None]:
    key = sample.get("__key__")
    where = f"sample {key!r}" if key is not None else "sample"
    members = {name: value for name, value in sample.items() if not name.startswith("__")}
    allowed = SAMPLE_EXTENSIONS + CACHE_EXTENSIONS
    unknown = sorted(set(members) - set(allowed))
    if unknown:
        raise ShardSampleError(f"{where}: unknown members {unknown}, allowed {list(allowed)}")
    if METADATA_EXT not in members:
        raise ShardSampleError(f"{where}: missing member .{METADATA_EXT}")
    for ext, value in members.items():
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ShardSampleError(f"{where}: member .{ext} is {type(value).__name__}, expected bytes")

    metadata = parse_metadata(members[METADATA_EXT], where)
    if not KEY_RE.match(metadata.key):
        raise ShardSampleError(f"{where}: key {metadata.key!r} must match {KEY_RE.pattern}")
    if metadata.key != metadata.clip_id:
        raise ShardSampleError(f"{where}: key {metadata.key!r} differs from clip_id {metadata.clip_id!r}")
    if key is not None and key != metadata.key:
        raise ShardSampleError(f"{where}: metadata key {metadata.key!r} differs from the member key")
    where = f"sample {metadata.key!r}"

    for flag, ext in ((metadata.has_video, VIDEO_EXT), (metadata.has_motion, MOTION_EXT)):
        if flag != (ext in members):
            raise ShardSampleError(f"{where}: metadata has_{'video' if ext == VIDEO_EXT else 'motion'}={flag} "
                                   f"but the .{ext} member is {'present' if ext in members else 'absent'}")
    if not (metadata.has_video or metadata.has_motion):
        raise ShardSampleError(f"{where}: neither .{VIDEO_EXT} nor .{MOTION_EXT}")
    if metadata.has_video:
        video = bytes(members[VIDEO_EXT])
        # An MP4 (ISO base media file) starts with an `ftyp` box: size (4 bytes) then the type.
        if len(video) < 8 or video[4:8] != b"ftyp":
            raise ShardSampleError(f"{where}: .{VIDEO_EXT} is not an MP4 file (no ftyp box)")

    motion = None
    if metadata.has_motion:
        try:
            motion = load_motion(bytes(members[MOTION_EXT]))
        except (MotionFileError, ValueError, KeyError, OSError) as exc:
            raise ShardSampleError(f"{where}: .{MOTION_EXT}: {exc}") from exc
        if motion.num_frames != metadata.num_frames:
            raise ShardSampleError(
                f"{where}: motion has {motion.num_frames} frames, the clip has {metadata.num_frames}"
            )
        if not math.isclose(motion.fps, metadata.fps, rel_tol=1e-3):
            raise ShardSampleError(f"{where}: motion fps {motion.fps} differs from the clip fps {metadata.fps}")
    return metadata, (motion if return_motion else None)


# Parquet index ----------------------------------------------------------------------------------------------

_ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}


def index_column(spec: SampleField) -> str:
    """The flat `index.parquet` column of a grouped metadata field: its dotted name with `_` (`scores.aesthetic_mean`
    → `scores_aesthetic_mean`, `motion.valid_fraction` → `motion_valid_fraction`)."""
    return spec.name.replace(".", "_")


# Every grouped field of `{key}.json` as a typed column (null where the JSON has null), so that duckdb, pandas or
# polars filter on scores and sources without parsing JSON. Derived from SAMPLE_FIELDS: a field added there is a
# column here, under the same name in every build.
INDEX_FIELDS: tuple[SampleField, ...] = tuple(f for f in SAMPLE_FIELDS if "." in f.name)

INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),       # shard file name, relative to the dataset folder
        pa.field("split", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),     # sample number within its shard
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("sample_bytes", pa.int64(), nullable=False),  # sum of the member sizes
        # sha256 of what the shards stage built the sample from (its metadata fields, the clip's and the motion
        # file's sha256): a re-run keeps a published sample whose digest is unchanged. Null from other producers.
        pa.field("build_digest", pa.string(), nullable=True),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("num_frames", pa.int64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("has_video", pa.bool_(), nullable=False),
        pa.field("has_motion", pa.bool_(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),     # '' when none
        pa.field("has_caption", pa.bool_(), nullable=False),
        *(pa.field(index_column(f), _ARROW_TYPES[f.type], nullable=f.nullable, metadata={"description": f.doc})
          for f in INDEX_FIELDS),
        pa.field("metadata", pa.string(), nullable=False),    # the sample's full `{key}.json`
    ],
    metadata={"humove.shard_schema_version": str(SHARD_SCHEMA_VERSION)},
)


def index_row(metadata: SampleMetadata, shard: str, position: int, sample_bytes: int,
              build_digest: str | None = None) -> dict:
    fields = metadata.model_dump()
    return {
        "key": metadata.key, "shard": shard, "split": metadata.split, "position": position,
        "video_id": metadata.video_id, "sample_bytes": sample_bytes, "build_digest": build_digest, "fps": metadata.fps,
        "num_frames": metadata.num_frames, "width": metadata.width, "height": metadata.height,
        "duration_s": metadata.duration_s, "has_video": metadata.has_video, "has_motion": metadata.has_motion,
        "caption": metadata.caption, "has_caption": metadata.has_caption,
        **{index_column(f): fields[group][leaf] for f in INDEX_FIELDS for group, leaf in [f.name.split(".", 1)]},
        "metadata": metadata.to_json_bytes().decode(),
    }


def index_to_bytes(rows: list[dict] | pa.Table) -> bytes:
    """Parquet bytes of the index (rows, or an `INDEX_SCHEMA` table, in shard order); the same rows give the same
    bytes."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table.combine_chunks(), buffer)
    return buffer.getvalue()


def read_index(source) -> pa.Table:
    """Read and check an index (path, file object or bytes), as `INDEX_SCHEMA`. An index written before a column
    existed (the flat metadata columns came in 2026-12; schema-2 indexes) gets it from each row's `metadata`
    JSON, read as `parse_metadata` reads a sample; one written before `build_digest` has it null."""
    table = pq.read_table(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source)
    meta = table.schema.metadata or {}
    version = meta.get(b"humove.shard_schema_version")
    if version is None or int(version) not in READABLE_SCHEMA_VERSIONS:
        raise ShardSampleError(f"index: shard schema version {version!r}, expected one of "
                               f"{list(READABLE_SCHEMA_VERSIONS)}")
    if "build_digest" not in table.column_names:
        table = table.append_column("build_digest", pa.nulls(table.num_rows, pa.string()))
    missing = [name for name in INDEX_SCHEMA.names if name not in table.column_names]
    if missing and "metadata" in table.column_names:
        rows = [index_row(parse_metadata(text.encode(), "index row"), "", 0, 0)
                for text in table["metadata"].to_pylist()]
        for name in missing:
            table = table.append_column(name, pa.array([row[name] for row in rows], INDEX_SCHEMA.field(name).type))
        missing = []
    if missing:
        raise ShardSampleError(f"index: missing columns {missing}")
    return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


# dataset.json -----------------------------------------------------------------------------------------------

class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SHARD_NAME_RE.pattern)
    split: str = Field(pattern=SPLIT_RE.pattern)
    samples: int
    bytes: int
    # The shard file's checksum, computed while it was written: BLAKE3 (`b3sum` / Python `blake3` print the same
    # hex) since 2026-12-03; datasets built before carry `sha256` instead, and are still verified by it.
    blake3: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _has_checksum(self) -> ShardInfo:
        if self.blake3 is None and self.sha256 is None:
            raise ValueError(f"{self.name}: no checksum (blake3, or sha256 for older datasets)")
        return self

    @model_serializer(mode="wrap")
    def _only_the_recorded_checksum(self, handler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items()
                if key not in ("blake3", "sha256") or value is not None}

    def checksum(self) -> tuple[str, str]:
        """(algorithm, hex digest) to verify the file by: blake3 when recorded, else sha256."""
        return ("blake3", self.blake3) if self.blake3 is not None else ("sha256", self.sha256)


class SplitCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = 0
    videos: int = 0
    shards: int = 0
    bytes: int = 0
    with_motion: int = 0


class MotionStat(BaseModel):
    """Per-element mean and standard deviation of one motion key over valid frames; nested lists of `shape`."""

    model_config = ConfigDict(extra="forbid")

    shape: list[int]
    mean: Any
    std: Any


class MotionStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str                      # computed on: "train", or "all" when no train clip has motion
    clips: int
    frames: int                     # valid frames counted
    keys: dict[str, MotionStat]


class DatasetManifest(BaseModel):
    """`dataset.json`: written last, so a folder with one describes a complete build."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[2, 3] = SHARD_SCHEMA_VERSION  # 2: its samples are read by `parse_metadata` too
    format: Literal["webdataset"] = "webdataset"
    shard_name_format: str = SHARD_NAME_FORMAT
    sample_members: list[str] = Field(default_factory=lambda: [f"{{key}}.{ext}" for ext in SAMPLE_EXTENSIONS])
    index: str = INDEX_FILE
    wids: dict[str, str] = Field(default_factory=dict)  # split → its wids descriptor, relative to the folder
    total_samples: int
    splits: dict[str, SplitCounts]
    shards: list[ShardInfo]
    motion_stats: MotionStats | None = None      # descriptive per-key summary (shards stage)
    feature_stats: dict[str, Any] | None = None  # the trainer's normalisation (humove.motion.representation)
    producer: dict[str, Any] = Field(default_factory=dict)  # settings of the producer (ingest-motion)

    def to_json_text(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2, allow_nan=False) + "\n"


def read_manifest(text: str | bytes) -> DatasetManifest:
    """Parse `dataset.json` text (no check of the files it names: see `read_dataset`)."""
    try:
        return DatasetManifest.model_validate_json(text)
    except ValidationError as exc:
        raise ShardSampleError(f"{MANIFEST_FILE}: {exc}") from exc


def read_dataset(folder: str, verify: bool = False) -> DatasetManifest:
    """The manifest of a published dataset folder (local path or URL), checked complete: it parses and every
    shard it names exists with its recorded size (`verify`: and its checksum, which reads every shard). The one
    entry point of every reader (trainer, loaders). Raises `DatasetError` naming the folder."""
    from humove.storage import Storage

    storage = Storage(folder)
    url = storage.join(MANIFEST_FILE)
    try:
        text = storage.read_bytes(url)
    except FileNotFoundError:
        raise DatasetError(f"{folder}: no {MANIFEST_FILE}, so this is not a complete humove dataset (the build did "
                           "not finish, or this is not a dataset folder); readers never list *.tar by "
                           "themselves") from None
    try:
        manifest = DatasetManifest.model_validate_json(text)
    except ValidationError as exc:
        raise DatasetError(f"{folder}: {MANIFEST_FILE} is not a valid shard manifest "
                           f"(schema {SHARD_SCHEMA_VERSION}): {_first_error(exc)}") from exc
    sizes = _file_sizes(storage)
    for shard in manifest.shards:
        size = sizes.get(shard.name)
        if size is None:
            raise DatasetError(f"{folder}: {MANIFEST_FILE} names {shard.name}, which is missing")
        if size != shard.bytes:
            raise DatasetError(f"{folder}: {shard.name} has {size} bytes, {MANIFEST_FILE} says {shard.bytes}")
        if verify:
            algorithm, expected = shard.checksum()
            with storage.open(storage.join(shard.name), "rb") as handle:
                matches = file_digest(handle, algorithm) == expected
            if not matches:
                raise DatasetError(f"{folder}: {shard.name} does not match its {algorithm} in {MANIFEST_FILE}")
    return manifest


def list_shards(folder: str, splits: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """URLs of the shards of a published dataset folder named by its `dataset.json` (in its order), optionally
    only those of `splits`. Raises `DatasetError` naming the folder."""
    from humove.storage import Storage

    manifest = read_dataset(folder)
    storage = Storage(folder)
    return [storage.join(s.name) for s in manifest.shards if splits is None or s.split in splits]


def _file_sizes(storage) -> dict[str, int]:
    """File name → size of the files directly in a storage root (one listing call)."""
    try:
        entries = storage.fs.ls(storage._path(storage.root), detail=True)
    except FileNotFoundError:
        return {}
    return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0) for entry in entries
            if entry.get("type") == "file"}


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or '(document)'}: {first['msg']}"
