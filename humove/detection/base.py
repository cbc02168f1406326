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

from humove.schemas.checksums import file_digest


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
    return file_digest(path)
