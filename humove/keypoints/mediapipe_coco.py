"""Offline pose-stage backend: mediapipe 0.10.21 Pose on each frame's person crop, landmarks mapped to COCO-17.

Static-image mode: no state carries from one clip (or frame) to the next, so results do not depend on batching.
The score of a keypoint is mediapipe's landmark visibility.

Crops stay square where the box meets the frame's edge (the part beyond the frame is black): a crop cut at the
edge would put the body against the crop's border, squeezed, and mediapipe then often finds nobody, e.g. a small
crouching person whose feet touch the bottom edge. Where it finds nobody in a crop, it tries once more with a
wider one (`FALLBACK_MARGIN`).
"""

from __future__ import annotations

import numpy as np

from humove.keypoints.coco import LAYOUT_COCO17, MEDIAPIPE_TO_COCO17, mediapipe_to_coco17
from humove.keypoints.crops import PreparedCrops

CROP_SIDE = 256  # crops are resized to this square side before mediapipe (it resizes to 256 inside anyway)
FALLBACK_MARGIN = 1.6  # the wider crop tried where the first finds nobody


class MediaPipeCoco17:
    """`TwoPhaseKeypoints` on mediapipe Pose (CPU)."""

    layout_name = LAYOUT_COCO17

    def __init__(self, crop_margin: float = 1.25, min_detection_confidence: float = 0.5):
        from humove.detection.mediapipe_people import _builtin_sha256, pose_solution

        mp, self._pose = pose_solution(static_image_mode=True, model_complexity=1, smooth_landmarks=False,
                                       enable_segmentation=False, min_detection_confidence=min_detection_confidence)
        self.name = f"mediapipe-{mp.__version__}-pose-coco17"
        self.model = "builtin:mediapipe/modules/pose_landmark/pose_landmark_full.tflite"
        self.model_sha256 = _builtin_sha256()
        self.crop_margin = crop_margin

    def prepare(self, frames: np.ndarray, boxes: np.ndarray, valid: np.ndarray) -> PreparedCrops:
        return prepare_crops(frames, boxes, valid, self.crop_margin)

    def infer(self, crops: list[PreparedCrops]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per clip: xy (T, 17, 2) pixels, scores (T, 17), and mediapipe's metric world landmarks (T, 17, 3)
        (hip-centred, camera-aligned axes), which the offline SMPL fitter uses to resolve depth."""
        out = []
        for c in crops:
            count = len(c.valid)
            xy = np.full((count, 33, 2), np.nan, np.float32)
            scores = np.zeros((count, 33), np.float32)
            world = np.full((count, 33, 3), np.nan, np.float32)
            for t in np.flatnonzero(c.valid):
                tries = [c] + ([c.fallback] if c.fallback is not None and c.fallback.valid[t] else [])
                for crop in tries:
                    result = self._pose.process(crop.images[t])
                    if result.pose_landmarks is not None:
                        break
                if result.pose_landmarks is None:
                    continue
                marks = result.pose_landmarks.landmark
                x0, y0, sx, sy = crop.transforms[t]
                xy[t, :, 0] = [x0 + m.x * CROP_SIDE * sx for m in marks]
                xy[t, :, 1] = [y0 + m.y * CROP_SIDE * sy for m in marks]
                scores[t] = np.clip([m.visibility for m in marks], 0.0, 1.0)
                if result.pose_world_landmarks is not None:
                    world[t] = [(m.x, m.y, m.z) for m in result.pose_world_landmarks.landmark]
            out.append((*mediapipe_to_coco17(xy, scores), world[:, MEDIAPIPE_TO_COCO17]))
        return out


def prepare_crops(frames: np.ndarray, boxes: np.ndarray, valid: np.ndarray, crop_margin: float = 1.25,
                  fallback_margin: float | None = FALLBACK_MARGIN) -> PreparedCrops:
    """CPU: square crops of side max(w, h)·margin around each box (black beyond the frame), resized to
    CROP_SIDE: images (T, S, S, 3) uint8; with `fallback_margin`, the wider crops as `fallback`."""
    import cv2

    count = len(frames)
    height, width = int(frames.shape[1]), int(frames.shape[2])
    images = np.zeros((count, CROP_SIDE, CROP_SIDE, 3), np.uint8)
    transforms = np.zeros((count, 4), np.float32)
    valid = np.asarray(valid, bool) & np.isfinite(boxes).all(axis=1)
    for t in np.flatnonzero(valid):
        box = boxes[t]
        side = int(np.ceil(max(box[2] - box[0], box[3] - box[1]) * crop_margin))
        if side < 8:
            valid[t] = False
            continue
        x0, y0 = int(np.floor((box[0] + box[2] - side) / 2)), int(np.floor((box[1] + box[3] - side) / 2))
        pad = max(0, -x0, -y0, x0 + side - width, y0 + side - height)
        frame = frames[t] if pad == 0 else cv2.copyMakeBorder(frames[t], pad, pad, pad, pad, cv2.BORDER_CONSTANT,
                                                              value=(0, 0, 0))
        crop = frame[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
        images[t] = cv2.resize(crop, (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_AREA)
        transforms[t] = (x0, y0, side / CROP_SIDE, side / CROP_SIDE)
    fallback = None
    if fallback_margin is not None:
        fallback = prepare_crops(frames, boxes, valid, fallback_margin, fallback_margin=None)
    return PreparedCrops(images, transforms, valid, (height, width), fallback)
