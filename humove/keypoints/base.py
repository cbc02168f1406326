"""One keypoint interface for every 2D pose source (mediapipe offline, DWPose ONNX later) + SMPL mapping.

A detector turns the frames of one track into a `KeypointTrack`: per frame (K, 2) pixel coordinates and (K,)
scores in [0, 1], optionally (K, 3) metric 3D landmarks. A `KeypointLayout` names the K points and says which
of them correspond to SMPL joints, so the fitter and the quality measures never depend on a specific detector.

Which SMPL joints the video shows (`KeypointTrack.smpl_joints_seen`, the motion file's `joint_valid`): a keypoint
is seen where its score is above the threshold (mediapipe's visibility, DWPose's score) and it lies inside the
image. A joint with keypoints of its own is seen where one of them is: shoulders, elbows, wrists, hips, knees and
ankles by their names; the head by the nose, eyes or ears; a foot by its heel and toes and a hand by its fingers
where the layout has them (mediapipe-33, COCO-WholeBody-133), else by its ankle / wrist (COCO-17). The joints no
keypoint marks follow their neighbours: the pelvis is seen where a hip is, the neck where a shoulder is, a collar
where its shoulder is, and spine1-3 where both are (a hip and a shoulder: the torso between them is in view).
`SMPL_BODY_PARTS` groups the joints into the parts a curator names (head, shoulders, hips, knees, ankles, plus
elbows, wrists, feet); a part is seen where one of its joints is (the far leg of a body in profile may be hidden
behind the near one).
"""

from __future__ import annotations

from collections.abc import Iterable
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

    def smpl_support(self) -> tuple[tuple[int, ...], ...]:
        """Per SMPL joint (24), the indices of the keypoints that show it (empty: none of its own)."""
        return tuple(tuple(self.names.index(n) for n in _SMPL_KEYPOINT_NAMES.get(joint, ()) if n in self.names)
                     for joint in SMPL_JOINT_NAMES)


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

# The keypoint names that show each SMPL joint, over all layouts (each layout has some of them); joints left out
# here have no keypoint and follow their neighbours (see the module docstring).
_SMPL_KEYPOINT_NAMES = {
    "head": ("nose", "left_eye", "right_eye", "left_ear", "right_ear"),
    **{f"{side}_{joint}": (f"{side}_{joint}",) for side in ("left", "right")
       for joint in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")},
    **{f"{side}_foot": (f"{side}_heel", f"{side}_foot_index", f"{side}_big_toe", f"{side}_small_toe")
       for side in ("left", "right")},
    # mediapipe: pinky, index and thumb tips; COCO-WholeBody: the 20 finger points (point 0 is the wrist)
    **{f"{side}_hand": (f"{side}_pinky", f"{side}_index", f"{side}_thumb", *(f"{side}_hand_{i}" for i in range(1, 21)))
       for side in ("left", "right")},
}

# SMPL joints of each body part a curator names; a part is seen where one of its joints is.
SMPL_BODY_PARTS = {
    "head": (_SMPL_INDEX["head"],),
    **{part: (_SMPL_INDEX[f"left_{joint}"], _SMPL_INDEX[f"right_{joint}"])
       for part, joint in (("shoulders", "shoulder"), ("elbows", "elbow"), ("wrists", "wrist"), ("hips", "hip"),
                           ("knees", "knee"), ("ankles", "ankle"), ("feet", "foot"))},
}


def body_parts_seen(joints_seen: np.ndarray, parts: Iterable[str]) -> np.ndarray:
    """(T, 24) bool SMPL joints seen → (T,) bool: every one of `parts` (names of `SMPL_BODY_PARTS`) is seen."""
    seen = np.ones(len(joints_seen), bool)
    for part in parts:
        if part not in SMPL_BODY_PARTS:
            raise ValueError(f"unknown body part {part!r}: expected one of {sorted(SMPL_BODY_PARTS)}")
        seen &= joints_seen[:, SMPL_BODY_PARTS[part]].any(axis=1)
    return seen


def steady(seen: np.ndarray, min_frames: int) -> np.ndarray:
    """(T, ...) bool → a copy where each run of True along time shorter than `min_frames` frames is False: a
    keypoint model reports a hidden limb as visible now and then (mediapipe, legs behind a box, for a frame or
    two), a body part really in view stays in view."""
    out = np.array(seen, dtype=bool)
    if min_frames <= 1 or not out.size:
        return out
    columns = out.reshape(len(out), -1)  # a view: writes go to `out`
    for column in columns.T:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], column.astype(np.int8), [0]])))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if stop - start < min_frames:
                column[start:stop] = False
    return out


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

    def seen(self, min_score: float) -> np.ndarray:
        """(T, K) bool: the keypoint's score is above `min_score` and it lies inside the image."""
        height, width = self.image_size
        x, y = self.xy[..., 0], self.xy[..., 1]
        return (self.scores > min_score) & (x >= 0) & (x < width) & (y >= 0) & (y < height)

    def smpl_joints_seen(self, min_score: float) -> np.ndarray:
        """(T, 24) bool: which SMPL joints the keypoints seen show (rules in the module docstring)."""
        seen = self.seen(min_score)
        support = self.layout.smpl_support()
        joints = np.zeros((self.num_frames, 24), bool)
        for joint, points in enumerate(support):
            if points:
                joints[:, joint] = seen[:, list(points)].any(axis=1)
        for leaf, parent in (("left_foot", "left_ankle"), ("right_foot", "right_ankle"),
                             ("left_hand", "left_wrist"), ("right_hand", "right_wrist")):
            if not support[_SMPL_INDEX[leaf]]:
                joints[:, _SMPL_INDEX[leaf]] = joints[:, _SMPL_INDEX[parent]]
        hips = joints[:, list(SMPL_BODY_PARTS["hips"])].any(axis=1)
        shoulders = joints[:, list(SMPL_BODY_PARTS["shoulders"])].any(axis=1)
        joints[:, _SMPL_INDEX["pelvis"]] = hips
        joints[:, _SMPL_INDEX["neck"]] = shoulders
        for spine in ("spine1", "spine2", "spine3"):
            joints[:, _SMPL_INDEX[spine]] = hips & shoulders
        for side in ("left", "right"):
            joints[:, _SMPL_INDEX[f"{side}_collar"]] = joints[:, _SMPL_INDEX[f"{side}_shoulder"]]
        return joints


class KeypointDetector(Protocol):
    """What every keypoint backend provides."""

    layout: KeypointLayout

    def detect_track(self, frames: np.ndarray, boxes: np.ndarray) -> KeypointTrack:
        """frames (T, H, W, 3) uint8 RGB, boxes (T, 4) xyxy pixels of the tracked person → KeypointTrack."""
        ...
