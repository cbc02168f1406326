"""Which clip file a stage reads: the person stage's trimmed clip when there is one, else the shots clip.

The `person` stage keeps only the span in which the main person is continuously visible. When that span is
shorter than the shots clip it writes the span as its own MP4 (`person_clip_path`, …); every stage after it
(pose, smpl, caption, shards, report) reads the clip through `current_clip(item)` so all of them see the same
frames, and frame `i` of every later artifact is frame `i` of that clip.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, replace

import numpy as np

from humove.storage import Storage
from humove.video import iter_frames

_TIME_EPS = 1e-6  # frames: float noise in frame × rate products

# The upstream columns the two readers below use (what a stage that reads a clip declares, `stage.Reads`):
# `shots_clip` the shots stage's, `current_clip` those too and, when the person stage ran, its trimmed clip's
# and the source's rate (ingest).
SHOTS_CLIP_FIELDS = frozenset({
    "clip_path", "clip_sha256", "clip_bytes", "clip_num_frames", "clip_fps", "clip_width", "clip_height",
    "start_s", "end_s", "start_frame", "end_frame",
})
TRIMMED_CLIP_FIELDS = frozenset({
    "person_clip_path", "person_clip_sha256", "person_clip_bytes", "person_clip_num_frames",
    "person_span_start_frame", "person_span_end_frame", "fps", "variable_fps",
})


@dataclass(frozen=True)
class ClipRef:
    """One clip file and where it lies in its shot and in its source video.

    `num_frames` frames at the constant rate `fps`; frame i shows source time `start_s + i / fps` (`start_s` /
    `end_s`: the clip's span in the source, seconds). `span_start_frame` / `span_end_frame`: the frames of the
    shots clip it holds (end exclusive; the whole shots clip when not trimmed). `shot_*`: the shots clip in the
    source (frame numbers, end exclusive, and seconds; `shot_num_frames` frames at `fps`).
    `source_start_frame` / `source_end_frame`: the source frames the clip spans (`source_frames`), None where
    they cannot be known.
    """

    path: str
    sha256: str
    num_bytes: int
    num_frames: int
    fps: float
    width: int
    height: int
    start_s: float
    end_s: float
    span_start_frame: int = 0
    span_end_frame: int = 0
    trimmed: bool = False
    shot_start_frame: int | None = None
    shot_end_frame: int | None = None
    shot_start_s: float | None = None
    shot_end_s: float | None = None
    shot_num_frames: int = 0
    source_start_frame: int | None = None
    source_end_frame: int | None = None


def shots_clip(item: dict) -> ClipRef:
    """The clip as the shots stage wrote it."""
    missing = [k for k in ("clip_path", "clip_num_frames", "clip_fps") if item.get(k) is None]
    if missing:
        raise KeyError(f"item {item.get('clip_id')!r}: no shots clip columns {missing}")
    frames = int(item["clip_num_frames"])
    start_frame, end_frame = _optional_int(item.get("start_frame")), _optional_int(item.get("end_frame"))
    start_s, end_s = float(item["start_s"]), float(item["end_s"])
    return ClipRef(
        path=item["clip_path"], sha256=item.get("clip_sha256") or "", num_bytes=int(item.get("clip_bytes") or 0),
        num_frames=frames, fps=float(item["clip_fps"]), width=int(item["clip_width"]),
        height=int(item["clip_height"]), start_s=start_s, end_s=end_s,
        span_start_frame=0, span_end_frame=frames, trimmed=False,
        shot_start_frame=start_frame, shot_end_frame=end_frame, shot_start_s=start_s, shot_end_s=end_s,
        shot_num_frames=frames, source_start_frame=start_frame, source_end_frame=end_frame,
    )


def current_clip(item: dict) -> ClipRef:
    """The clip later stages read: the person stage's trimmed span when it wrote one, else the shots clip.

    `item` is a joined input row (shots columns, and person columns once the person stage ran; the ingest
    columns `fps` and `variable_fps` give the trimmed clip's source frames)."""
    base = shots_clip(item)
    path = item.get("person_clip_path")
    if not path:
        return base
    start = int(item["person_span_start_frame"])
    end = int(item["person_span_end_frame"])
    source_fps = item.get("fps")
    source_start, source_end = source_frames(
        base, start, end, None if item.get("variable_fps") or not source_fps else float(source_fps))
    return replace(
        base, path=path, sha256=item.get("person_clip_sha256") or "",
        num_bytes=int(item.get("person_clip_bytes") or 0), num_frames=int(item["person_clip_num_frames"]),
        start_s=base.start_s + start / base.fps, end_s=min(base.end_s, base.start_s + end / base.fps),
        span_start_frame=start, span_end_frame=end, trimmed=True,
        source_start_frame=source_start, source_end_frame=source_end,
    )


def source_frames(shot: ClipRef, start: int, end: int, source_fps: float | None) -> tuple[int | None, int | None]:
    """The source frames spanned by frames `[start, end)` of the shots clip `shot`: (first, end exclusive).

    The shots stage resamples the shot to a constant `fps` from its first source frame: its frame k shows the
    last source frame at or before `k / fps` into the shot. So the first is the source frame that frame `start`
    shows, and the end the first source frame at or after the span's end time. Exact for constant-rate sources
    (`source_fps`, their rate); None for an edge inside the shot when the rate is variable or unknown (the
    source's frame times are not recorded). An edge at the shot's own edge is the shot's source frame."""
    if shot.shot_start_frame is None or shot.shot_end_frame is None:
        return None, None
    first = shot.shot_start_frame if start == 0 else None
    end_frame = shot.shot_end_frame if end == shot.shot_num_frames else None
    if source_fps:
        ratio = source_fps / shot.fps
        if first is None:
            first = min(shot.shot_end_frame, shot.shot_start_frame + math.floor(start * ratio + _TIME_EPS))
        if end_frame is None:
            end_frame = min(shot.shot_end_frame, shot.shot_start_frame + math.ceil(end * ratio - _TIME_EPS))
    return first, end_frame


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


def decode_clip(clip: ClipRef) -> np.ndarray:
    """All frames of a clip: (F, H, W, 3) uint8 RGB (clips are short: a few hundred frames at most)."""
    scratch = tempfile.mkdtemp(prefix="humove-clip-")
    try:
        path = Storage(clip.path).local_copy(clip.path, scratch)
        frames = [frame.image for frame in iter_frames(path)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not frames:
        raise ValueError(f"clip {clip.path}: no decodable frame")
    return np.stack(frames)
