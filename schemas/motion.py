"""The per-clip motion file `{key}.motion.npz`, schema v1: one contract for the SMPL stage, shards and trainer.

Per clip with F frames at the clip's fps (float32 unless noted):

| key            | shape      | meaning                                                        |
|----------------|------------|----------------------------------------------------------------|
| betas          | (F, 10)    | SMPL shape                                                     |
| global_orient  | (F, 3)     | root rotation, axis-angle, camera frame                        |
| body_pose      | (F, 23, 3) | joint rotations, axis-angle, SMPL joint order                  |
| transl         | (F, 3)     | root translation, metres, camera frame                         |
| joints         | (F, 24, 3) | SMPL forward of the above (metres, camera frame)               |
| focal          | (F,)       | focal length in pixels                                         |
| image_size     | (2,) int32 | (height, width) of the frames the motion was fitted on         |
| valid          | (F,) bool  | frame has a trusted fit                                        |
| fps            | () float32 | frames per second                                              |
| body_model     | () str     | name of the body model that produced it (e.g. "smpl-neutral") |
| schema_version | () int32   | 1                                                              |

Camera frame: OpenCV convention (x right, y down, z forward), as CameraHMR outputs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

MOTION_SCHEMA_VERSION = 1
NUM_BETAS = 10
NUM_BODY_JOINTS = 23
NUM_JOINTS = 24

# SMPL joint order (24 joints, pelvis first) and each joint's parent; -1 marks the root.
SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)


class MotionFileError(ValueError):
    """A motion file breaks the v1 contract; the message names the key and the problem."""


@dataclass
class MotionClip:
    """In-memory form of a v1 motion file. Arrays keep the shapes listed in the module docstring."""

    betas: np.ndarray
    global_orient: np.ndarray
    body_pose: np.ndarray
    transl: np.ndarray
    joints: np.ndarray
    focal: np.ndarray
    image_size: np.ndarray
    valid: np.ndarray
    fps: float
    body_model: str

    @property
    def num_frames(self) -> int:
        return int(self.transl.shape[0])

    def validate(self) -> MotionClip:
        frames = self.num_frames
        expected = {
            "betas": ((frames, NUM_BETAS), np.floating),
            "global_orient": ((frames, 3), np.floating),
            "body_pose": ((frames, NUM_BODY_JOINTS, 3), np.floating),
            "transl": ((frames, 3), np.floating),
            "joints": ((frames, NUM_JOINTS, 3), np.floating),
            "focal": ((frames,), np.floating),
            "image_size": ((2,), np.integer),
            "valid": ((frames,), np.bool_),
        }
        for key, (shape, kind) in expected.items():
            value = getattr(self, key)
            if not isinstance(value, np.ndarray):
                raise MotionFileError(f"motion key {key!r}: expected an array, got {type(value).__name__}")
            if value.shape != shape:
                raise MotionFileError(f"motion key {key!r}: shape {value.shape}, expected {shape}")
            if not np.issubdtype(value.dtype, kind):
                raise MotionFileError(f"motion key {key!r}: dtype {value.dtype}, expected {kind.__name__}")
            if kind is np.floating and not np.isfinite(value).all():
                raise MotionFileError(f"motion key {key!r}: contains NaN or inf")
        if frames < 1:
            raise MotionFileError("motion has no frames")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise MotionFileError(f"motion key 'fps': {self.fps} is not a positive frame rate")
        if not self.body_model:
            raise MotionFileError("motion key 'body_model' is empty")
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "fps":
                arrays[f.name] = np.asarray(value, dtype=np.float32)
            elif f.name == "body_model":
                arrays[f.name] = np.asarray(value)
            elif f.name == "image_size":
                arrays[f.name] = np.asarray(value, dtype=np.int32)
            elif f.name == "valid":
                arrays[f.name] = np.asarray(value, dtype=bool)
            else:
                arrays[f.name] = np.asarray(value, dtype=np.float32)
        arrays["schema_version"] = np.asarray(MOTION_SCHEMA_VERSION, dtype=np.int32)
        return arrays


def motion_to_bytes(clip: MotionClip) -> bytes:
    """Validate and serialise to `.npz` bytes (uncompressed: deterministic and fast to read)."""
    clip.validate()
    buffer = io.BytesIO()
    np.savez(buffer, **clip.to_arrays())
    return buffer.getvalue()


def save_motion(path: str | Path, clip: MotionClip) -> None:
    """Write atomically to a local path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(motion_to_bytes(clip))
    tmp.replace(path)


def load_motion(source: str | Path | bytes) -> MotionClip:
    """Read and validate a v1 motion file from a path or from bytes (as stored in a shard)."""
    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with np.load(handle, allow_pickle=False) as data:
        version = int(data["schema_version"]) if "schema_version" in data else None
        if version != MOTION_SCHEMA_VERSION:
            raise MotionFileError(f"motion schema_version {version}, expected {MOTION_SCHEMA_VERSION}")
        missing = [f.name for f in fields(MotionClip) if f.name not in data]
        if missing:
            raise MotionFileError(f"motion file lacks keys {missing}")
        values = {f.name: data[f.name] for f in fields(MotionClip)}
    values["fps"] = float(values["fps"])
    values["body_model"] = str(values["body_model"])
    return MotionClip(**values).validate()
