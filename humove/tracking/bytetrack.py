"""ByteTrack (ultralytics' BYTETracker, used standalone) on detections from any person detector."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from humove.detection.base import FrameDetections
from humove.tracking.base import detection_rows


class _Boxes:
    """The minimal detection container BYTETracker reads: conf, cls, xywh, len() and boolean indexing."""

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray):
        self.xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        self.conf = np.asarray(conf, np.float32).reshape(-1)
        self.cls = np.zeros_like(self.conf)

    @property
    def xywh(self) -> np.ndarray:
        xy = (self.xyxy[:, :2] + self.xyxy[:, 2:]) / 2
        return np.concatenate([xy, self.xyxy[:, 2:] - self.xyxy[:, :2]], axis=1)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index) -> _Boxes:
        return _Boxes(self.xyxy[index], self.conf[index])


class ByteTrackTracker:
    """`Tracker` on ultralytics' BYTETracker. Stored boxes are the detector's (not the Kalman estimates)."""

    def __init__(self, high_score: float = 0.25, low_score: float = 0.1, new_track_score: float = 0.25,
                 buffer_s: float = 1.0, match_threshold: float = 0.8):
        os.environ.setdefault("YOLO_OFFLINE", "1")
        import ultralytics

        self.name = f"bytetrack(ultralytics-{ultralytics.__version__})"
        self.settings = dict(track_high_thresh=high_score, track_low_thresh=low_score,
                             new_track_thresh=new_track_score, match_thresh=match_threshold, fuse_score=True)
        self.buffer_s = buffer_s

    def track(self, frames: list[int], detections: list[FrameDetections], frame_rate: float) -> np.ndarray:
        from ultralytics.trackers.byte_tracker import BYTETracker

        buffer = max(1, int(round(self.buffer_s * frame_rate)))
        tracker = BYTETracker(SimpleNamespace(track_buffer=buffer, **self.settings))
        rows = [np.zeros((0, 7), np.float32)]
        for frame, found in zip(frames, detections, strict=True):
            out = tracker.update(_Boxes(found.boxes, found.scores))
            if len(out) == 0:
                continue
            out = np.asarray(out).reshape(len(out), -1)
            index = out[:, 7].astype(int)  # detection index of each tracked box
            rows.append(detection_rows(frame, out[:, 4], found.boxes[index], found.scores[index]))
        return np.concatenate(rows)
