"""EchoMotion's per-frame motion features (paper §3.1): the one place they are derived from a motion file.

Layout of one frame, `MOTION_DIM = 235` float32 values:

| slice          | size    | symbol | meaning                                                                   |
|----------------|---------|--------|---------------------------------------------------------------------------|
| `SLICE_V`      | 3       | v      | root translation = SMPL `transl`, metres, camera frame                   |
| `SLICE_JOINTS` | 24 × 3  | η      | the 24 SMPL joints relative to v: `joints - transl`, camera axes          |
| `SLICE_THETA`  | 24 × 6  | θ      | 24 joint rotations, 6D, SMPL order: θ[0] = root rotation relative to the |
|                |         |        | clip's first frame (R_γ(0)ᵀ R_γ(f), identity at f = 0); θ[1:] = body_pose |
| `SLICE_GAMMA`  | 6       | γ      | global orientation = SMPL `global_orient` as 6D, camera frame            |
| `SLICE_BETAS`  | 10      | β      | SMPL shape                                                                |

Choices the paper leaves open, and why:
- Frame of v and γ: the camera frame of the video (OpenCV axes, as the motion file stores it). The motion then
  says where the person is in the picture and how they face the camera, which is what joint video-motion
  modelling and motion→video control need, and the features invert exactly without extra side information.
  The clip-relative view (how the body turns over the clip, independent of the camera) is θ[0].
- η relative to v: joint positions without the global translation are nearly stationary over a clip, so their
  statistics are tight; `joints = η + v` restores them exactly.
- 6D rotations are the first two columns of R (`humove.motion.rotations`); the 6D → R map is exact on valid
  rotations and Gram-Schmidt projects model outputs to the nearest rotation.
- `features_to_motion` reads the global orientation from γ and the body pose from θ[1:]; θ[0] is derived
  information (its consistency with γ is not enforced on generated motion). Joints are taken from η + v
  (not recomputed with a body model, so no SMPL files are needed to decode).
- All frames are converted, valid or not; `features_to_motion` marks every frame valid (a model output has no
  notion of a failed fit). Callers that care mask invalid frames from the clip's `valid` array.

Token grouping (used by `humove.model.motion_tokens`): a plain reshape of this layout —
position tokens [v, η_0..η_23] = features[:75] as 25 × 3, rotation tokens [θ_0..θ_23, γ] = features[75:225] as
25 × 6, shape token β = features[225:235]: 25 + 25 + 1 = 51 tokens per frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from humove.motion.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rot6d_to_matrix,
)
from humove.schemas.motion import NUM_JOINTS, MotionClip

MOTION_DIM = 235
SLICE_V = slice(0, 3)
SLICE_JOINTS = slice(3, 75)
SLICE_THETA = slice(75, 219)
SLICE_GAMMA = slice(219, 225)
SLICE_BETAS = slice(225, 235)

# Token groups (paper: {v, η} position, {θ, γ} rotation, β shape).
SLICE_POSITION = slice(0, 75)
SLICE_ROTATION = slice(75, 225)
SLICE_SHAPE = slice(225, 235)
NUM_POSITION_TOKENS = 25
NUM_ROTATION_TOKENS = 25
NUM_SHAPE_TOKENS = 1
TOKENS_PER_FRAME = NUM_POSITION_TOKENS + NUM_ROTATION_TOKENS + NUM_SHAPE_TOKENS  # 51


def motion_to_features(clip: MotionClip) -> np.ndarray:
    """A motion clip → (F, 235) float32 features (layout in the module docstring). Math in float64."""
    clip.validate()
    frames = clip.num_frames
    global_orient = axis_angle_to_matrix(torch.from_numpy(np.asarray(clip.global_orient, np.float64)))  # (F,3,3)
    body_pose = axis_angle_to_matrix(torch.from_numpy(np.asarray(clip.body_pose, np.float64)))  # (F,23,3,3)
    root_relative = global_orient[0].T.unsqueeze(0) @ global_orient  # (F, 3, 3)
    theta = matrix_to_rot6d(torch.cat([root_relative.unsqueeze(1), body_pose], dim=1))  # (F, 24, 6)
    gamma = matrix_to_rot6d(global_orient)  # (F, 6)
    transl = np.asarray(clip.transl, np.float64)
    joints = np.asarray(clip.joints, np.float64) - transl[:, None, :]
    features = np.concatenate(
        [
            transl,
            joints.reshape(frames, NUM_JOINTS * 3),
            theta.reshape(frames, NUM_JOINTS * 6).numpy(),
            gamma.numpy(),
            np.asarray(clip.betas, np.float64),
        ],
        axis=1,
    )
    return features.astype(np.float32)


def features_to_motion(
    features: np.ndarray | torch.Tensor,
    fps: float,
    body_model: str,
    image_size: tuple[int, int] | np.ndarray,
    focal: float | np.ndarray,
) -> MotionClip:
    """(F, 235) features → a valid MotionClip (camera frame). `focal` is one value or one per frame."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != MOTION_DIM:
        raise ValueError(f"motion features: shape {features.shape}, expected (F, {MOTION_DIM})")
    if features.shape[0] < 1:
        raise ValueError("motion features: no frames")
    if not np.isfinite(features).all():
        raise ValueError("motion features: contain NaN or inf")
    frames = features.shape[0]
    transl = features[:, SLICE_V]
    joints = features[:, SLICE_JOINTS].reshape(frames, NUM_JOINTS, 3) + transl[:, None, :]
    theta = torch.from_numpy(features[:, SLICE_THETA].reshape(frames, NUM_JOINTS, 6))
    gamma = torch.from_numpy(features[:, SLICE_GAMMA])
    global_orient = matrix_to_axis_angle(rot6d_to_matrix(gamma)).numpy()
    body_pose = matrix_to_axis_angle(rot6d_to_matrix(theta[:, 1:])).numpy()
    focal_array = np.broadcast_to(np.asarray(focal, dtype=np.float32), (frames,)).copy()
    image_size_array = np.asarray(image_size, dtype=np.int32).reshape(-1)
    if image_size_array.shape != (2,):
        raise ValueError(f"motion features: image_size {image_size!r} must be (height, width)")
    clip = MotionClip(
        betas=features[:, SLICE_BETAS].astype(np.float32),
        global_orient=global_orient.astype(np.float32),
        body_pose=body_pose.astype(np.float32),
        transl=transl.astype(np.float32),
        joints=joints.astype(np.float32),
        focal=focal_array,
        image_size=image_size_array,
        valid=np.ones(frames, dtype=bool),
        fps=float(fps),
        body_model=str(body_model),
    )
    return clip.validate()


ArrayLike = np.ndarray | torch.Tensor


@dataclass
class MotionStats:
    """Per-dimension mean and std of the (F, 235) features over a dataset, for normalisation.

    Dimensions whose std is below `MIN_STD` (constant in the data, e.g. β of a single subject) get std 1: they
    are centred but not amplified.
    """

    mean: np.ndarray  # (235,) float32
    std: np.ndarray  # (235,) float32
    count: int = 0  # frames the statistics were computed from

    MIN_STD = 1e-4

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(self.std, dtype=np.float32).reshape(-1)
        for name, value in (("mean", self.mean), ("std", self.std)):
            if value.shape != (MOTION_DIM,):
                raise ValueError(f"MotionStats: {name} has shape {value.shape}, expected ({MOTION_DIM},)")
            if not np.isfinite(value).all():
                raise ValueError(f"MotionStats: {name} contains NaN or inf")
        if (self.std <= 0).any():
            raise ValueError("MotionStats: std must be positive")

    @classmethod
    def from_features(cls, arrays: Iterable[np.ndarray]) -> MotionStats:
        """Statistics over all frames of all arrays (each (F, 235)); float64 running sums."""
        total = np.zeros(MOTION_DIM, np.float64)
        total_sq = np.zeros(MOTION_DIM, np.float64)
        count = 0
        for index, array in enumerate(arrays):
            array = np.asarray(array, dtype=np.float64)
            if array.ndim != 2 or array.shape[1] != MOTION_DIM:
                raise ValueError(f"MotionStats: array {index} has shape {array.shape}, expected (F, {MOTION_DIM})")
            total += array.sum(axis=0)
            total_sq += np.square(array).sum(axis=0)
            count += array.shape[0]
        if count == 0:
            raise ValueError("MotionStats: no frames to compute statistics from")
        mean = total / count
        variance = np.maximum(total_sq / count - np.square(mean), 0.0)
        std = np.sqrt(variance)
        std = np.where(std < cls.MIN_STD, 1.0, std)
        return cls(mean=mean, std=std, count=count)

    def _as(self, like: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
        if isinstance(like, torch.Tensor):
            return (
                torch.as_tensor(self.mean, device=like.device, dtype=like.dtype),
                torch.as_tensor(self.std, device=like.device, dtype=like.dtype),
            )
        return self.mean, self.std

    def _check(self, features: ArrayLike) -> None:
        if features.shape[-1] != MOTION_DIM:
            raise ValueError(f"MotionStats: features end in {features.shape[-1]}, expected {MOTION_DIM}")

    def normalize(self, features: ArrayLike) -> ArrayLike:
        """(..., 235) → (features - mean) / std; numpy or torch, dtype kept."""
        self._check(features)
        mean, std = self._as(features)
        return (features - mean) / std

    def denormalize(self, features: ArrayLike) -> ArrayLike:
        """(..., 235) → features * std + mean; numpy or torch, dtype kept."""
        self._check(features)
        mean, std = self._as(features)
        return features * std + mean

    def to_dict(self) -> dict[str, Any]:
        return {"dim": MOTION_DIM, "count": int(self.count), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MotionStats:
        if data.get("dim", MOTION_DIM) != MOTION_DIM:
            raise ValueError(f"MotionStats: stored dim {data.get('dim')} is not {MOTION_DIM}")
        for key in ("mean", "std"):
            if key not in data:
                raise ValueError(f"MotionStats: dict lacks {key!r}")
        return cls(mean=np.asarray(data["mean"]), std=np.asarray(data["std"]), count=int(data.get("count", 0)))

