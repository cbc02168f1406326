"""One keypoint interface for every 2D pose source (mediapipe offline, DWPose ONNX later) + SMPL mapping.

A detector turns the frames of one track into a `KeypointTrack`: per frame (K, 2) pixel coordinates and (K,)
scores in [0, 1], optionally (K, 3) metric 3D landmarks. A `KeypointLayout` names the K points and says which
of them correspond to SMPL joints, so the fitter and the quality measures never depend on a specific detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from humove.schemas.motion import SMPL_JOINT_NAMES

_SMPL_INDEX = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}


@dataclass(frozen=True)
class KeypointLayout:
    """Names of a detector's K keypoints and their correspondences to SMPL joints.

    `smpl_pairs` holds (keypoint index, SMPL joint index, weight): the weight lowers points whose anatomical
    location differs from SMPL's joint (a detector's hip lies on the surface, SMPL's inside the pelvis).
    """

    name: str
    names: tuple[str, ...]
    smpl_pairs: tuple[tuple[int, int, float], ...]

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def smpl_indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(M,) keypoint indices, (M,) SMPL joint indices, (M,) weights."""
        kp, smpl, weight = zip(*self.smpl_pairs, strict=True)
        return np.asarray(kp), np.asarray(smpl), np.asarray(weight, dtype=np.float32)


def _pairs(names: tuple[str, ...], table: dict[str, tuple[str, float]]) -> tuple[tuple[int, int, float], ...]:
    return tuple((names.index(kp), _SMPL_INDEX[joint], w) for kp, (joint, w) in table.items())


# Body keypoints matched to SMPL joints. Toe points are approximate (SMPL's "foot" is the ball of the foot).
_BODY_TO_SMPL = {
    "left_shoulder": ("left_shoulder", 1.0),
    "right_shoulder": ("right_shoulder", 1.0),
    "left_elbow": ("left_elbow", 1.0),
    "right_elbow": ("right_elbow", 1.0),
    "left_wrist": ("left_wrist", 1.0),
    "right_wrist": ("right_wrist", 1.0),
    "left_hip": ("left_hip", 0.7),
    "right_hip": ("right_hip", 0.7),
    "left_knee": ("left_knee", 1.0),
    "right_knee": ("right_knee", 1.0),
    "left_ankle": ("left_ankle", 1.0),
    "right_ankle": ("right_ankle", 1.0),
}

MEDIAPIPE_POSE_NAMES = (
    "nose",
    "left_eye_inner",
    "left_eye",
    "left_eye_outer",
    "right_eye_inner",
    "right_eye",
    "right_eye_outer",
    "left_ear",
    "right_ear",
    "mouth_left",
    "mouth_right",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_pinky",
    "right_pinky",
    "left_index",
    "right_index",
    "left_thumb",
    "right_thumb",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)
MEDIAPIPE_POSE = KeypointLayout(
    name="mediapipe-pose-33",
    names=MEDIAPIPE_POSE_NAMES,
    smpl_pairs=_pairs(
        MEDIAPIPE_POSE_NAMES,
        _BODY_TO_SMPL | {"left_foot_index": ("left_foot", 0.5), "right_foot_index": ("right_foot", 0.5)},
    ),
)

# COCO-WholeBody 133 (DWPose): 0-16 COCO body, 17-22 feet, then face and hands (names for body and feet only).
_COCO_BODY = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_big_toe",
    "left_small_toe",
    "left_heel",
    "right_big_toe",
    "right_small_toe",
    "right_heel",
)
COCO_WHOLEBODY_NAMES = (
    _COCO_BODY
    + tuple(f"face_{i}" for i in range(68))
    + tuple(f"{side}_hand_{i}" for side in ("left", "right") for i in range(21))
)
COCO_WHOLEBODY = KeypointLayout(
    name="coco-wholebody-133",
    names=COCO_WHOLEBODY_NAMES,
    smpl_pairs=_pairs(
        COCO_WHOLEBODY_NAMES,
        _BODY_TO_SMPL | {"left_big_toe": ("left_foot", 0.5), "right_big_toe": ("right_foot", 0.5)},
    ),
)


@dataclass
class KeypointTrack:
    """Keypoints of one tracked person over T frames.

    xy: (T, K, 2) float32 pixels in the full frame; scores: (T, K) float32 in [0, 1] (0 = not detected);
    world: optional (T, K, 3) float32 metric landmarks, origin at the hip midpoint, camera-aligned axes
    (x right, y down, z away from the camera); image_size: (height, width).
    """

    layout: KeypointLayout
    xy: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]
    world: np.ndarray | None = None

    def __post_init__(self) -> None:
        frames, k = self.scores.shape[:2] if self.scores.ndim == 2 else (None, None)
        if k != self.layout.num_keypoints:
            raise ValueError(
                f"keypoint scores shape {self.scores.shape}: expected (T, {self.layout.num_keypoints}) "
                f"for layout {self.layout.name}"
            )
        if self.xy.shape != (frames, k, 2):
            raise ValueError(f"keypoint xy shape {self.xy.shape}: expected {(frames, k, 2)}")
        if self.world is not None and self.world.shape != (frames, k, 3):
            raise ValueError(f"keypoint world shape {self.world.shape}: expected {(frames, k, 3)}")
        if not np.isfinite(self.xy).all() or not np.isfinite(self.scores).all():
            raise ValueError("keypoint xy or scores contain NaN or inf")

    @property
    def num_frames(self) -> int:
        return int(self.scores.shape[0])

    def smpl_targets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Keypoints re-indexed to SMPL joints.

        Returns xy (T, 24, 2), confidence (T, 24) = score × layout weight (0 for unmatched joints),
        world (T, 24, 3) or None, and the (24,) mask of SMPL joints the layout observes.
        """
        kp, smpl, weight = self.layout.smpl_indices()
        frames = self.num_frames
        xy = np.zeros((frames, 24, 2), np.float32)
        conf = np.zeros((frames, 24), np.float32)
        xy[:, smpl] = self.xy[:, kp]
        conf[:, smpl] = self.scores[:, kp] * weight
        world = None
        if self.world is not None:
            world = np.zeros((frames, 24, 3), np.float32)
            world[:, smpl] = self.world[:, kp]
        mask = np.zeros(24, bool)
        mask[smpl] = True
        return xy, conf, world, mask


class KeypointDetector(Protocol):
    """What every keypoint backend provides."""

    layout: KeypointLayout

    def detect_track(self, frames: np.ndarray, boxes: np.ndarray) -> KeypointTrack:
        """frames (T, H, W, 3) uint8 RGB, boxes (T, 4) xyxy pixels of the tracked person → KeypointTrack."""
        ...
