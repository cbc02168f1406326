"""Offline person detector: mediapipe 0.10.21 Pose (its model ships in the wheel), several people by masking.

mediapipe Pose finds one person per image. To see more, the found person's box is painted over with the
frame's median colour and the image searched again, up to `max_people` times. This finds a second person of
similar prominence but misses people mediapipe ranks too low, so `count_reliable` is False: a count of one is no
proof of a single person. Boxes are the extent of the 33 landmarks (mediapipe extrapolates unseen ones, so a
box may reach past the frame for a truncated person; it is clipped to the frame), and a detection's score is
the mean landmark visibility (mediapipe exposes no detection score).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

import numpy as np

from humove.detection.base import FrameDetections

# Landmark extent → person box: the feet reach a little below the heels, the body a little past the landmarks
# sideways; the head top is above the nose by this fraction of the nose-to-shoulders distance.
_PAD_BOTTOM, _PAD_SIDE, _HEAD_ABOVE_NOSE = 0.02, 0.04, 0.7
_NOSE, _SHOULDERS = 0, (11, 12)


# What mediapipe's C++ side prints on the first inference of a process (TFLite delegate, absl logging set-up,
# calculator notices): not for users, and no environment variable silences it.
_NATIVE_NOTICES = re.compile(r"XNNPACK delegate|absl::InitializeLog|inference_feedback_manager|"
                             r"landmark_projection_calculator")


@contextlib.contextmanager
def _native_notices_dropped():
    """fd 2 goes to a temporary file while the block runs; afterwards every line but the known notices is
    written back to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines()
                    if not _NATIVE_NOTICES.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def pose_solution(**options):
    """mediapipe's legacy Pose (`mp.solutions.pose.Pose(**options)`), warmed up on a drawn figure so the
    notices its first inference prints go nowhere. Returns (mediapipe module, Pose)."""
    from humove.motion.synthetic import draw_cartoon_person

    mp = _mediapipe()
    with _native_notices_dropped():
        pose = mp.solutions.pose.Pose(**options)
        pose.process(draw_cartoon_person(height=256, width=192))
    return mp, pose


def _mediapipe():
    try:
        import mediapipe as mp
    except ImportError as err:  # an optional extra: say how to get it
        raise ImportError("the offline person backend needs mediapipe==0.10.21 (pip install 'humove[offline]')") \
            from err
    return mp


class MediaPipePersonDetector:
    """`PersonDetector` on mediapipe's legacy Pose in static-image mode (CPU)."""

    count_reliable = False

    def __init__(self, max_people: int = 3, min_detection_confidence: float = 0.5, min_score: float = 0.3):
        mp, self._pose = pose_solution(static_image_mode=True, model_complexity=1, smooth_landmarks=False,
                                       enable_segmentation=False, min_detection_confidence=min_detection_confidence)
        self.name = f"mediapipe-{mp.__version__}-pose-masked"
        self.model = "builtin:mediapipe/modules/pose_landmark/pose_landmark_full.tflite"
        self.model_sha256 = _builtin_sha256()
        self.max_people, self.min_score = max_people, min_score

    def close(self) -> None:
        self._pose.close()

    def detect(self, frames: list[np.ndarray]) -> list[FrameDetections]:
        return [self._detect_one(np.asarray(frame)) for frame in frames]

    def _detect_one(self, frame: np.ndarray) -> FrameDetections:
        height, width = frame.shape[:2]
        image = np.ascontiguousarray(frame)
        fill = np.median(frame.reshape(-1, 3), axis=0).astype(np.uint8)
        boxes, scores = [], []
        for _ in range(self.max_people):
            result = self._pose.process(image)
            if result.pose_landmarks is None:
                break
            marks = result.pose_landmarks.landmark
            xs = np.array([m.x for m in marks]) * width
            ys = np.array([m.y for m in marks]) * height
            score = float(np.clip([m.visibility for m in marks], 0, 1).mean())
            extent = max(ys.max() - ys.min(), 1.0)
            neck = abs(ys[list(_SHOULDERS)].mean() - ys[_NOSE])
            top = min(ys.min(), ys[_NOSE] - _HEAD_ABOVE_NOSE * neck)  # raised hands may be higher than the head
            box = np.array([xs.min() - _PAD_SIDE * extent, top,
                            xs.max() + _PAD_SIDE * extent, ys.max() + _PAD_BOTTOM * extent])
            box = np.clip(box, 0, [width, height, width, height])
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                break
            if score >= self.min_score:
                boxes.append(box)
                scores.append(score)
            # paint the found person over, so the next pass can find someone else
            x0, y0, x1, y1 = (int(v) for v in np.round(box))
            image = image.copy() if image is frame else image
            image[y0:y1, x0:x1] = fill
        if not boxes:
            return FrameDetections.empty()
        return FrameDetections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32))


def _builtin_sha256() -> str:
    import os

    from humove.schemas.checksums import file_digest

    path = os.path.join(os.path.dirname(_mediapipe().__file__), "modules", "pose_landmark",
                        "pose_landmark_full.tflite")
    return file_digest(path) if os.path.isfile(path) else ""
