"""Readers of the per-clip arrays that stages hand to each other (person boxes, keypoints, motion).

Every array is aligned to the frames of `humove.clips.current_clip(item)`: frame `i` of the person track, of
the keypoints and of the motion is frame `i` of that clip.
- person (`person_boxes_path`): `main_box (F, 4)` xyxy pixels (NaN where not seen), `main_visible (F,)`, …
- pose (`pose_keypoints_path`): `keypoints (F, K, 2)` pixels, `scores (F, K)`, `layout`, optionally
  `world (F, K, 3)` metric landmarks (mediapipe), …
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from humove.keypoints.base import COCO_WHOLEBODY, MEDIAPIPE_POSE, KeypointLayout, KeypointTrack
from humove.keypoints.coco import COCO17, LAYOUT_COCO17, LAYOUT_WHOLEBODY
from humove.storage import Storage

# The columns `person_track` and `pose_track` read (what a stage that calls them declares, `stage.Reads`).
PERSON_TRACK_FIELDS = frozenset({"person_boxes_path"})
POSE_TRACK_FIELDS = frozenset({"pose_keypoints_path"})

LAYOUTS = {LAYOUT_COCO17: COCO17, LAYOUT_WHOLEBODY: COCO_WHOLEBODY, "mediapipe33": MEDIAPIPE_POSE}


def layout_by_name(name: str) -> KeypointLayout:
    """The keypoint layout a pose artifact names in its `layout` field."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown keypoint layout {name!r}: expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def read_npz(url: str) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` artifact (local path or object-store URL)."""
    with np.load(io.BytesIO(Storage(url).read_bytes(url)), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """Uncompressed `.npz` bytes (deterministic: the same arrays give the same bytes)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@dataclass
class PersonTrack:
    """The main person of a clip: boxes (F, 4) xyxy pixels (NaN where not seen), visible (F,) bool."""

    boxes: np.ndarray
    visible: np.ndarray

    def filled_boxes(self) -> np.ndarray:
        """(F, 4) boxes with unseen frames filled from the nearest seen frame (crops need a box everywhere;
        those frames stay invalid through `visible`)."""
        seen = np.flatnonzero(self.visible & np.isfinite(self.boxes).all(axis=1))
        if len(seen) == 0:
            raise ValueError("the main person is never seen in this clip")
        nearest = seen[np.abs(np.arange(len(self.boxes))[:, None] - seen[None]).argmin(axis=1)]
        return self.boxes[nearest].astype(np.float64)


def person_track(item: dict) -> PersonTrack:
    arrays = read_npz(item["person_boxes_path"])
    boxes = arrays["main_box"].astype(np.float32)
    visible = arrays["main_visible"].astype(bool) & np.isfinite(boxes).all(axis=1)
    return PersonTrack(boxes=boxes, visible=visible)


def pose_track(item: dict, image_size: tuple[int, int]) -> KeypointTrack:
    """The pose stage's keypoints as a KeypointTrack (unseen points: xy 0, score 0). image_size (H, W)."""
    arrays = read_npz(item["pose_keypoints_path"])
    layout = layout_by_name(str(arrays["layout"]))
    xy = np.nan_to_num(arrays["keypoints"].astype(np.float32), nan=0.0)
    scores = np.nan_to_num(arrays["scores"].astype(np.float32), nan=0.0)
    world = arrays.get("world")
    if world is not None:
        world = np.nan_to_num(world.astype(np.float32), nan=0.0)
    return KeypointTrack(layout, xy, np.clip(scores, 0.0, 1.0), image_size, world=world)
