"""The tracker interface: per-frame detections in, the same detections with track identities out."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from humove.detection.base import FrameDetections

# Columns of a detections table: one row per (frame, person), as stored in the person artifact.
DETECTION_COLUMNS = ("frame", "track_id", "x1", "y1", "x2", "y2", "score")


class Tracker(Protocol):
    name: str

    def track(self, frames: list[int], detections: list[FrameDetections], frame_rate: float) -> np.ndarray:
        """Detections of frames `frames` (in order) → (N, 7) float32 rows [frame, track_id, x1, y1, x2, y2,
        score] (see DETECTION_COLUMNS); every detection gets a track id ≥ 1."""
        ...


def detection_rows(frame: int, track_ids: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, 7) rows for one frame."""
    n = len(scores)
    return np.column_stack([np.full(n, frame), track_ids, boxes, scores]).astype(np.float32).reshape(n, 7)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) xyxy → (N, M) intersection over union."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
