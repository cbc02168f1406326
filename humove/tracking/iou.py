"""A small greedy IoU tracker: enough for the offline detector's few, well-separated people."""

from __future__ import annotations

import numpy as np

from humove.detection.base import FrameDetections
from humove.tracking.base import box_iou, detection_rows


class IouTracker:
    """Each detection joins the track whose last box overlaps it most (IoU ≥ `min_iou`, best pairs first); the
    others start new tracks. Tracks seen on the previous step are matched first and lost ones only to the
    detections left (ByteTrack's order): a person walking into where someone beside them was last seen keeps their
    own identity. A track unseen for more than `buffer_s` seconds ends."""

    def __init__(self, min_iou: float = 0.3, buffer_s: float = 1.0):
        self.name = f"iou-tracker(min_iou={min_iou})"
        self.min_iou, self.buffer_s = min_iou, buffer_s

    def track(self, frames: list[int], detections: list[FrameDetections], frame_rate: float) -> np.ndarray:
        buffer = max(1, int(round(self.buffer_s * frame_rate)))
        live: dict[int, tuple[np.ndarray, int]] = {}  # track id → (last box, last step)
        next_id = 1
        rows = [np.zeros((0, 7), np.float32)]
        for step, (frame, found) in enumerate(zip(frames, detections, strict=True)):
            live = {tid: v for tid, v in live.items() if step - v[1] <= buffer}
            ids = np.zeros(len(found), np.float32)
            for tracked in (True, False):  # seen on the last step first, then lost
                self._match(found, ids, {t: v[0] for t, v in live.items() if (v[1] == step - 1) == tracked})
            for d in range(len(found)):
                if ids[d] == 0:
                    ids[d], next_id = next_id, next_id + 1
                live[int(ids[d])] = (found.boxes[d], step)
            if len(found):
                rows.append(detection_rows(frame, ids, found.boxes, found.scores))
        return np.concatenate(rows)

    def _match(self, found: FrameDetections, ids: np.ndarray, last_boxes: dict[int, np.ndarray]) -> None:
        """Give the unmatched detections (`ids` 0) the ids of `last_boxes`' tracks, greedily by IoU."""
        free = np.flatnonzero(ids == 0)
        if len(free) == 0 or not last_boxes:
            return
        track_ids: list[int | None] = list(last_boxes)
        iou = box_iou(found.boxes[free], np.stack(list(last_boxes.values())))
        for flat in np.argsort(-iou, axis=None):
            d, t = np.unravel_index(flat, iou.shape)
            if iou[d, t] < self.min_iou:
                break
            if ids[free[d]] == 0 and track_ids[t] is not None:
                ids[free[d]] = track_ids[t]
                track_ids[t] = None  # taken
