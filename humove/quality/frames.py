"""Which frames of a clip are scored, and decoding just those."""

from __future__ import annotations

import math
import shutil
import tempfile

import numpy as np

from humove.storage import Storage
from humove.video import iter_frames


def frame_indices(num_frames: int, positions: list[float]) -> list[int]:
    """Frame numbers at relative `positions` (0 = first frame, 1 = end) of a clip of `num_frames` frames:
    floor(p * num_frames), kept inside the clip. Positions 0.1/0.5/0.9 of 48 frames give 4, 24, 43."""
    if num_frames <= 0:
        raise ValueError(f"a clip with {num_frames} frames has no frame to score")
    return [min(num_frames - 1, max(0, int(math.floor(p * num_frames)))) for p in positions]


def read_frames(url: str, indices: list[int], max_side: int | None = None) -> list[np.ndarray]:
    """The frames `indices` (in any order, repeats allowed) of the clip at `url`, each `(H, W, 3)` uint8 RGB,
    the longer side at most `max_side`. Raises ValueError naming the clip when a frame is past its end."""
    wanted = sorted(set(indices))
    scratch = None
    try:
        storage = Storage(url.rsplit("/", 1)[0] if "://" in url else ".")
        if not storage.local:  # decoders need a real file
            scratch = tempfile.mkdtemp(prefix="humove-quality-")
        path = storage.local_copy(url, scratch) if scratch else url
        found: dict[int, np.ndarray] = {}
        for frame in iter_frames(path, max_side=max_side, end_frame=wanted[-1] + 1):
            if frame.index in wanted:
                found[frame.index] = frame.image
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ValueError(f"{url}: frames {missing} could not be decoded (the clip has fewer frames)")
    return [found[i] for i in indices]
