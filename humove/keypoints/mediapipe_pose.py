"""Offline keypoint backend: mediapipe 0.10.21 legacy Pose (33 landmarks + metric world landmarks).

Only `model_complexity=1` is used: its model files ship inside the mediapipe 0.10.21 wheel (0 and 2 would be
downloaded at run time). Pose finds one person per image, so each frame is cropped to the track's box
(enlarged to a square with margin) before detection: the landmarks then belong to the tracked person even
when others are in view. mediapipe's own landmark smoothing is off; temporal smoothing happens on SMPL.
"""

from __future__ import annotations

import numpy as np

from humove.keypoints.base import MEDIAPIPE_POSE, KeypointTrack


def square_crop_box(box: np.ndarray, image_size: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """xyxy box → integer square (x0, y0, x1, y1) of side max(w, h)·margin, clipped to the image."""
    height, width = image_size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * margin
    x0, y0 = int(max(0, np.floor(cx - side / 2))), int(max(0, np.floor(cy - side / 2)))
    x1, y1 = int(min(width, np.ceil(cx + side / 2))), int(min(height, np.ceil(cy + side / 2)))
    return x0, y0, x1, y1


class MediaPipePoseDetector:
    """`KeypointDetector` built on mediapipe's legacy Pose solution (CPU, ~30-45 ms per frame on one core)."""

    layout = MEDIAPIPE_POSE

    def __init__(
        self,
        min_detection_confidence: float = 0.5,
        crop_margin: float = 1.25,
        static_image_mode: bool = False,
    ):
        try:
            import mediapipe as mp
        except ImportError as err:  # an optional extra: say how to get it
            raise ImportError(
                "the offline keypoint backend needs mediapipe==0.10.21 (pip install 'humove[offline]')"
            ) from err
        self._pose = mp.solutions.pose.Pose(
            static_image_mode=static_image_mode,
            model_complexity=1,
            smooth_landmarks=False,
            enable_segmentation=False,
            min_detection_confidence=min_detection_confidence,
        )
        self.crop_margin = crop_margin

    def close(self) -> None:
        self._pose.close()

    def __enter__(self) -> MediaPipePoseDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detect_track(self, frames: np.ndarray, boxes: np.ndarray) -> KeypointTrack:
        """frames (T, H, W, 3) uint8 RGB, boxes (T, 4) xyxy → KeypointTrack (score 0: nobody found)."""
        frames = np.asarray(frames)
        boxes = np.asarray(boxes, dtype=np.float64)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames: expected (T, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
        if boxes.shape != (len(frames), 4):
            raise ValueError(f"boxes: expected ({len(frames)}, 4) xyxy, got {boxes.shape}")
        image_size = (int(frames.shape[1]), int(frames.shape[2]))
        count, k = len(frames), self.layout.num_keypoints
        xy = np.zeros((count, k, 2), np.float32)
        scores = np.zeros((count, k), np.float32)
        world = np.zeros((count, k, 3), np.float32)
        for t, (frame, box) in enumerate(zip(frames, boxes, strict=True)):
            x0, y0, x1, y1 = square_crop_box(box, image_size, self.crop_margin)
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue  # box outside the frame or degenerate: nothing to detect
            crop = np.ascontiguousarray(frame[y0:y1, x0:x1])
            result = self._pose.process(crop)
            if result.pose_landmarks is None:
                continue
            marks = result.pose_landmarks.landmark
            xy[t, :, 0] = [x0 + m.x * (x1 - x0) for m in marks]
            xy[t, :, 1] = [y0 + m.y * (y1 - y0) for m in marks]
            scores[t] = np.clip([m.visibility for m in marks], 0.0, 1.0)
            if result.pose_world_landmarks is not None:
                world[t] = [(m.x, m.y, m.z) for m in result.pose_world_landmarks.landmark]
        return KeypointTrack(self.layout, xy, scores, image_size, world=world)
