"""Two-phase keypoint backends: `prepare` (CPU: crop and resize the person on each frame) and `infer` (the
model on prepared crops), so decoding and cropping can run in CPU workers apart from the model's actors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class PreparedCrops:
    """Crops of one track. images: (T, ...) model inputs (backend-specific; rows of invalid frames are zeros);
    transforms: (T, 4) float32 per-crop mapping back to the frame: crop pixel (u, v) → (x0 + u·sx, y0 + v·sy)
    with rows [x0, y0, sx, sy]; valid: (T,) bool, frames with a box to look at; image_size (height, width);
    fallback: other crops of the same frames a backend may try where it finds nobody in these (or None)."""

    images: np.ndarray
    transforms: np.ndarray
    valid: np.ndarray
    image_size: tuple[int, int]
    fallback: PreparedCrops | None = None


class TwoPhaseKeypoints(Protocol):
    name: str             # backend name for the record
    model: str            # weight file name (or builtin:…)
    model_sha256: str
    layout_name: str      # "coco17" or "coco_wholebody133"

    def prepare(self, frames: np.ndarray, boxes: np.ndarray, valid: np.ndarray) -> PreparedCrops:
        """frames (T, H, W, 3) uint8 RGB, boxes (T, 4) xyxy, valid (T,) bool → crops (CPU)."""
        ...

    def infer(self, crops: list[PreparedCrops]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Several tracks' crops at once → per track (T, K, 2) frame pixels and (T, K) scores (0 where invalid)."""
        ...
