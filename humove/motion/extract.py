"""One call per track: frames + boxes → smoothed SMPL motion, its quality measures and the settings used.

Backends: CameraHMR when a loaded `CameraHMRRunner` is given (official weights), else the offline fitter on
keypoints from `detector` (mediapipe Pose by default). Both produce the same MotionClip layout; smoothing and
quality are shared. This is the library entry point the SMPL stage wraps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from humove.keypoints.base import KeypointDetector, KeypointTrack
from humove.motion.body_model import BodyModel
from humove.motion.fitting import FitConfig, fit_keypoints
from humove.motion.quality import motion_quality
from humove.motion.smoothing import SmoothingConfig, smooth_motion
from humove.schemas.motion import MotionClip


@dataclass
class MotionExtraction:
    """Result for one track: `clip` (smoothed), `raw` (before smoothing), raw quality measures of `clip`,
    the keypoints used (None if none were detected) and every setting, for the record."""

    clip: MotionClip
    raw: MotionClip
    quality: dict[str, float]
    keypoints: KeypointTrack | None
    settings: dict = field(default_factory=dict)


def extract_track_motion(
    frames: np.ndarray,
    boxes: np.ndarray,
    fps: float,
    body_model: BodyModel,
    *,
    hmr_runner=None,
    detector: KeypointDetector | None = None,
    fit_config: FitConfig | None = None,
    smoothing: SmoothingConfig | None = None,
) -> MotionExtraction:
    """frames (T, H, W, 3) uint8 RGB, boxes (T, 4) xyxy of one tracked person → MotionExtraction."""
    smoothing = smoothing or SmoothingConfig()
    keypoints = None
    if hmr_runner is None and detector is None:
        from humove.keypoints.mediapipe_pose import MediaPipePoseDetector

        detector = MediaPipePoseDetector()
    if detector is not None:
        keypoints = detector.detect_track(frames, boxes)
    if hmr_runner is not None:
        raw = hmr_runner.predict_track(frames, boxes, fps)
        backend = {"backend": "camerahmr", "hmr": vars(hmr_runner.config)}
    else:
        fit_config = fit_config or FitConfig()
        raw = fit_keypoints(keypoints, body_model, fps, fit_config)
        backend = {"backend": "offline-fit", "fit": fit_config.as_record()}
    clip = smooth_motion(raw, smoothing, body_model)
    settings = {
        **backend,
        "keypoints": None if keypoints is None else keypoints.layout.name,
        "smoothing": smoothing.as_record(),
        "body_model": body_model.name,
    }
    return MotionExtraction(
        clip=clip, raw=raw, quality=motion_quality(clip, keypoints), keypoints=keypoints, settings=settings
    )
