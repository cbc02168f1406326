"""COCO-17 body layout, the mediapipe → COCO-17 mapping, and the body-joint groups the pose stage measures.

Both pose backends give the COCO-17 body first: mediapipe's 33 landmarks are re-indexed to it (with their
visibility as score), and COCO-WholeBody 133 (DWPose) starts with the same 17 points.
"""

from __future__ import annotations

import numpy as np

from humove.keypoints.base import _BODY_TO_SMPL, _COCO_BODY, MEDIAPIPE_POSE_NAMES, KeypointLayout, _pairs

COCO17_NAMES = _COCO_BODY[:17]
COCO17 = KeypointLayout(name="coco-17", names=COCO17_NAMES, smpl_pairs=_pairs(COCO17_NAMES, _BODY_TO_SMPL))

# mediapipe landmark index of each COCO-17 point (same anatomical names)
MEDIAPIPE_TO_COCO17 = np.array([MEDIAPIPE_POSE_NAMES.index(name) for name in COCO17_NAMES])

# Artifact `layout` names
LAYOUT_COCO17 = "coco17"
LAYOUT_WHOLEBODY = "coco_wholebody133"

# COCO-17 indices of the joints that make a full body visible: shoulders, hips, knees, ankles
FULL_BODY_JOINTS = np.array([5, 6, 11, 12, 13, 14, 15, 16])
LOWER_BODY_JOINTS = np.array([13, 14, 15, 16])   # knees, ankles
UPPER_BODY_JOINTS = np.array([5, 6])             # shoulders

# The body parts a curator looks for, top to bottom, as COCO-17 indices: a part is in the picture when one of its
# points is seen there (the far shoulder of a body turned sideways may be hidden behind the near one).
BODY_PARTS = {
    "head": np.array([0, 1, 2, 3, 4]),      # nose, eyes, ears
    "shoulders": np.array([5, 6]),
    "hips": np.array([11, 12]),
    "knees": np.array([13, 14]),
    "ankles": np.array([15, 16]),
}
BODY_PART_NAMES = tuple(BODY_PARTS)


def mediapipe_to_coco17(xy: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 33, 2), (T, 33) mediapipe → (T, 17, 2), (T, 17) in COCO-17 order."""
    return xy[:, MEDIAPIPE_TO_COCO17], scores[:, MEDIAPIPE_TO_COCO17]
