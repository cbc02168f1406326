"""What the `pack` stage (one clip's sample, in a worker) and the `shards` stage (the dataset, in the driver)
share: the split of a clip, the order samples are appended in, the `build_digest` that says what a sample was
built from, which shards are closed (`closed_shards`: their samples' fragments are deleted once published), and
the motion sums that the dataset's statistics are merged from.

A clip's motion sums (`MotionSums`) are additive: the `pack` stage computes them from the clip's motion file
(`sums_to_bytes`: `artifacts/pack/<clip_id>.stats.npz`), `shards` merges them per shard in shard order
(`shard-stats.parquet` in the dataset folder: `statistics_to_bytes`) and the shards' into dataset.json's
`motion_stats` and `feature_stats` (`manifest_statistics`). No motion file is read twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from humove.motion.representation import FeatureMoments, windowed_features
from humove.schemas.motion import NUM_BETAS, NUM_BODY_JOINTS, NUM_JOINTS, MotionClip
from humove.schemas.shard import SHARD_NAME_RE, MotionStat, MotionStats, ShardInfo

# Motion keys summarised in dataset.json (the trainer computes its own normalisation too).
MOTION_STAT_KEYS = ("transl", "global_orient", "body_pose", "joints", "betas", "focal")
SHARD_STATS_FILE = "shard-stats.parquet"  # in the dataset folder: each shard's motion sums
# What the sample members and statistics are built like: part of every `build_digest`, so that a change of the
# sample building rewrites the samples it changed (bump with the `pack` stage's version when the bytes change).
SAMPLE_FORMAT = 1


def split_of(video_id: str, val_fraction: float) -> str:
    """`val` for a stable `val_fraction` share of source videos, else `train`."""
    return "val" if _unit_hash(f"split:{video_id}") < val_fraction else "train"


def order_key(clip_id: str) -> str:
    """New samples of a split are appended in this order: stable, and it spreads a video's clips over shards."""
    return hashlib.sha256(f"order:{clip_id}".encode()).hexdigest()


def closed_shards(shards: list[ShardInfo], max_samples_per_shard: int) -> set[str]:
    """The names of the shards that take no new sample: every shard of a split but its last, and the last too once
    it holds `max_samples_per_shard` samples (the last one below that is the split's open shard, which new clips
    are appended to)."""
    closed, last = set(), {}
    for shard in sorted(shards, key=lambda s: s.name):
        if shard.split in last:
            closed.add(last[shard.split].name)
        last[shard.split] = shard
    return closed | {shard.name for shard in last.values() if shard.samples >= max_samples_per_shard}


def _unit_hash(text: str) -> float:
    """A number in [0, 1) fixed by `text`."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def build_digest(fields: dict[str, Any], clip_sha256: str, motion_sha256: str | None, stats_window_s: float) -> str:
    """The index's `build_digest`: sha256 of the sample's metadata fields, its files' sha256, the statistics'
    window and `SAMPLE_FORMAT` (no path): a published sample with the same digest is the same sample."""
    text = json.dumps({"fields": fields, "clip_sha256": clip_sha256, "motion_sha256": motion_sha256,
                       "stats_window_s": stats_window_s, "format": SAMPLE_FORMAT},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# Motion statistics ------------------------------------------------------------------------------------------
# The shape of one frame's value of each of MOTION_STAT_KEYS (stored flat, in this order).
_STAT_SHAPES = {"transl": (3,), "global_orient": (3,), "body_pose": (NUM_BODY_JOINTS * 3,), "joints": (NUM_JOINTS, 3),
                "betas": (NUM_BETAS,), "focal": ()}
_STATS_SCHEMA = pa.schema([
    pa.field("shard", pa.string(), nullable=False),
    pa.field("clips", pa.int64(), nullable=False),           # clips with a valid frame
    pa.field("frames", pa.int64(), nullable=False),          # valid frames
    pa.field("feature_mean", pa.list_(pa.float64())),        # (235,) FeatureMoments; empty without frames
    pa.field("feature_m2", pa.list_(pa.float64())),
    pa.field("sums", pa.list_(pa.float64())),                # Σ over valid frames, MOTION_STAT_KEYS flat in order
    pa.field("squares", pa.list_(pa.float64())),             # Σ of squares, likewise
])


class MotionSums:
    """Motion statistics, mergeable: `moments` (the trainer's feature moments, clips cut into training windows:
    `of_clip`'s `window_s`), and per-element sums and sums of squares of the `MOTION_STAT_KEYS` over valid frames."""

    def __init__(self):
        self.clips = 0
        self.moments = FeatureMoments()
        self.sums: dict[str, np.ndarray] = {}
        self.squares: dict[str, np.ndarray] = {}

    @classmethod
    def of_clip(cls, clip: MotionClip, window_s: float) -> MotionSums:
        """The sums of one clip, validated already (`read_sample` / `load_motion` did)."""
        sums = cls()
        features, valid = windowed_features([clip], window_s, validated=True)  # (F, 235), (F,)
        if not valid.any():
            return sums
        sums.clips = 1
        sums.moments = FeatureMoments.of(features, valid)
        for key in MOTION_STAT_KEYS:
            values = getattr(clip, key).astype(np.float64)[valid]  # a fresh array, squared in place below
            sums.sums[key] = values.sum(axis=0)
            sums.squares[key] = np.square(values, out=values).sum(axis=0)
        return sums

    def merge(self, other: MotionSums) -> MotionSums:
        merged = MotionSums()
        merged.clips = self.clips + other.clips
        merged.moments = self.moments.merge(other.moments)
        for mine, theirs, total in ((self.sums, other.sums, merged.sums),
                                    (self.squares, other.squares, merged.squares)):
            for key in MOTION_STAT_KEYS:
                if key in mine or key in theirs:
                    total[key] = mine.get(key, 0.0) + theirs.get(key, 0.0)
        return merged

    def to_row(self, shard: str) -> dict[str, Any]:
        frames = self.moments.count

        def flat(totals: dict[str, np.ndarray]) -> list[float]:
            return np.concatenate([np.ravel(totals[key]) for key in MOTION_STAT_KEYS]).tolist() if frames else []

        return {"shard": shard, "clips": self.clips, "frames": frames,
                "feature_mean": self.moments.mean.tolist() if frames else [],
                "feature_m2": self.moments.m2.tolist() if frames else [],
                "sums": flat(self.sums), "squares": flat(self.squares)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> MotionSums:
        sums = cls()
        sums.clips = int(row["clips"])
        if row["frames"]:
            sums.moments = FeatureMoments(int(row["frames"]), np.asarray(row["feature_mean"], np.float64),
                                          np.asarray(row["feature_m2"], np.float64))
            for flat, totals in ((row["sums"], sums.sums), (row["squares"], sums.squares)):
                flat, start = np.asarray(flat, dtype=np.float64), 0
                for key in MOTION_STAT_KEYS:
                    size = math.prod(_STAT_SHAPES[key])
                    totals[key] = flat[start:start + size].reshape(_STAT_SHAPES[key])
                    start += size
                if start != len(flat):
                    raise ValueError(f"{row['shard']}: {len(flat)} motion sums, expected {start}")
        return sums


def sums_to_bytes(sums: MotionSums) -> bytes:
    """One clip's sums as `.npz` bytes (uncompressed, deterministic)."""
    row = sums.to_row("")
    buffer = io.BytesIO()
    np.savez(buffer, clips=np.int64(row["clips"]), frames=np.int64(row["frames"]),
             **{name: np.asarray(row[name], np.float64) for name in ("feature_mean", "feature_m2", "sums", "squares")})
    return buffer.getvalue()


def sums_from_bytes(data: bytes, where: str) -> MotionSums:
    """`sums_to_bytes`' sums back; ValueError naming `where` for a file that is not such sums."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            row = {name: arrays[name] for name in ("clips", "frames", "feature_mean", "feature_m2", "sums",
                                                   "squares")}
        return MotionSums.from_row({**row, "shard": where})
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not the motion sums of a sample ({exc})") from exc


def statistics_to_bytes(statistics: dict[str, MotionSums]) -> bytes:
    """`shard-stats.parquet`: one row per shard, in shard order."""
    rows = [statistics[name].to_row(name) for name in sorted(statistics)]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=_STATS_SCHEMA), buffer)
    return buffer.getvalue()


def statistics_from_bytes(data: bytes) -> dict[str, MotionSums]:
    rows = pq.read_table(io.BytesIO(data)).cast(_STATS_SCHEMA).to_pylist()
    return {row["shard"]: MotionSums.from_row(row) for row in rows}


def manifest_statistics(statistics: dict[str, MotionSums]) -> dict[str, Any]:
    """dataset.json's `motion_stats` (per-element mean and std of the `MOTION_STAT_KEYS` over valid frames) and
    `feature_stats` (the trainer's normalisation: exact feature moments), over the train shards, or over every
    shard when train has no motion; None without any valid frame. Merged shard by shard in shard order."""
    names = sorted(statistics)
    total = MotionSums()
    for name in names:
        if SHARD_NAME_RE.match(name).group(1) == "train":
            total = total.merge(statistics[name])
    split = "train"
    if not total.moments.count:
        split, total = "all", MotionSums()
        for name in names:
            total = total.merge(statistics[name])
    frames = total.moments.count
    if not frames:
        return {"motion_stats": None, "feature_stats": None}
    keys = {}
    for key in MOTION_STAT_KEYS:
        mean = total.sums[key] / frames
        std = np.sqrt(np.maximum(total.squares[key] / frames - np.square(mean), 0.0))
        keys[key] = MotionStat(shape=list(np.shape(mean)), mean=np.asarray(mean).tolist(),
                               std=np.asarray(std).tolist())
    return {"motion_stats": MotionStats(split=split, clips=total.clips, frames=frames, keys=keys),
            "feature_stats": total.moments.to_stats().to_dict()}
