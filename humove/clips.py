"""Which clip file a stage reads: the person stage's trimmed clip when there is one, else the shots clip.

The `person` stage keeps only the span in which the main person is continuously visible. When that span is
shorter than the shots clip it writes the span as its own MP4 (`person_clip_path`, …); every stage after it
(pose, smpl, caption, shards, report) reads the clip through `current_clip(item)` so all of them see the same
frames, and frame `i` of every later artifact is frame `i` of that clip.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from humove.storage import Storage
from humove.video import iter_frames


@dataclass(frozen=True)
class ClipRef:
    """One clip file and where it lies in its source video.

    `start_s` / `end_s` are times in the source video; `num_frames` frames at the constant rate `fps`.
    `span_start_frame` / `span_end_frame` are the frames of the shots clip it covers (end exclusive).
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


def shots_clip(item: dict) -> ClipRef:
    """The clip as the shots stage wrote it."""
    missing = [k for k in ("clip_path", "clip_num_frames", "clip_fps") if item.get(k) is None]
    if missing:
        raise KeyError(f"item {item.get('clip_id')!r}: no shots clip columns {missing}")
    frames = int(item["clip_num_frames"])
    return ClipRef(
        path=item["clip_path"], sha256=item.get("clip_sha256") or "", num_bytes=int(item.get("clip_bytes") or 0),
        num_frames=frames, fps=float(item["clip_fps"]), width=int(item["clip_width"]),
        height=int(item["clip_height"]), start_s=float(item["start_s"]), end_s=float(item["end_s"]),
        span_start_frame=0, span_end_frame=frames, trimmed=False,
    )


def current_clip(item: dict) -> ClipRef:
    """The clip later stages read: the person stage's trimmed span when it wrote one, else the shots clip.

    `item` is a joined input row (shots columns, and person columns once the person stage ran)."""
    base = shots_clip(item)
    path = item.get("person_clip_path")
    if not path:
        return base
    start = int(item["person_span_start_frame"])
    end = int(item["person_span_end_frame"])
    return ClipRef(
        path=path, sha256=item.get("person_clip_sha256") or "", num_bytes=int(item.get("person_clip_bytes") or 0),
        num_frames=int(item["person_clip_num_frames"]), fps=base.fps, width=base.width, height=base.height,
        start_s=base.start_s + start / base.fps, end_s=min(base.end_s, base.start_s + end / base.fps),
        span_start_frame=start, span_end_frame=end, trimmed=True,
    )



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
