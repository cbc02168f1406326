"""The person-detector interface: frames in, per-frame person boxes out.

Every backend says what it cannot do: `count_reliable` is False for a backend that may miss people other than
the most prominent one (so a count of one is no proof of a single person), and `tracks` is False when it gives
no identities (the tracker then assigns them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from humove.storage import file_sha256


@dataclass(frozen=True)
class FrameDetections:
    """People found in one frame. boxes: (N, 4) float32 xyxy pixels; scores: (N,) float32 in [0, 1]."""

    boxes: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty() -> FrameDetections:
        return FrameDetections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class PersonDetector(Protocol):
    """What every person-detection backend provides."""

    name: str               # backend name recorded with every record, e.g. "ultralytics-8.4.190-yolo"
    model: str              # model file name (or "builtin:…")
    model_sha256: str
    count_reliable: bool    # False: people besides the most prominent one may be missed

    def detect(self, frames: list[np.ndarray]) -> list[FrameDetections]:
        """frames: list of (H, W, 3) uint8 RGB images → one FrameDetections per frame, in frame pixels."""
        ...


def missing_weights_error(path: str, what: str, where: str) -> FileNotFoundError:
    """The one error for an absent weight file: names the file and where to get it (never a silent fallback)."""
    return FileNotFoundError(f"{what} weights not found: {path!r}. Get them from {where} and set the path in the "
                             "pipeline config.")


def check_weights(path: str, what: str, where: str) -> str:
    """The weight file's sha256; raises `missing_weights_error` when it is absent."""
    if not path or not os.path.isfile(path):
        raise missing_weights_error(path, what, where)
    return file_sha256(path)


def picture_box(frames: list[np.ndarray], black: int = 24, max_bar: float = 0.3) -> np.ndarray:
    """The picture inside letterbox / pillarbox bars: (4,) float32 xyxy pixels of the frames' size.

    A bar is a run of rows (columns) from an edge that stay black (every channel ≤ `black`) in all `frames`;
    a bar wider than `max_bar` of the side is taken for a dark picture, not a bar. frames: (H, W, 3) uint8."""
    height, width = frames[0].shape[:2]
    brightest = np.max(np.stack([f.max(axis=2) for f in frames]), axis=0)  # (H, W)
    lit_rows = np.flatnonzero(brightest.max(axis=1) > black)
    lit_cols = np.flatnonzero(brightest.max(axis=0) > black)
    if len(lit_rows) == 0 or len(lit_cols) == 0:
        return np.array([0, 0, width, height], np.float32)
    y0, y1 = lit_rows[0], lit_rows[-1] + 1
    x0, x1 = lit_cols[0], lit_cols[-1] + 1
    if max(y0, height - y1) > max_bar * height:
        y0, y1 = 0, height
    if max(x0, width - x1) > max_bar * width:
        x0, x1 = 0, width
    return np.array([x0, y0, x1, y1], np.float32)
