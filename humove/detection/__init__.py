"""Person detection backends behind one interface (`PersonDetector`): YOLO (ultralytics, real) and mediapipe
Pose (offline, no weights to download)."""

from humove.detection.base import FrameDetections, PersonDetector, missing_weights_error

__all__ = ["FrameDetections", "PersonDetector", "missing_weights_error"]
