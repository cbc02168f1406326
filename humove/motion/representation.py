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

Normalisation statistics (`FeatureMoments`, `clip_moments`, `MotionStats`): per-dimension count, mean and
M2 = Σ (x − mean)² over the valid frames of every clip, in float64. Stored moments of separate shard folders
merge exactly (pairwise update of Chan, Golub & LeVeque), so a mix of data sets is normalised as one. θ[0] is
relative to a window's first frame, so a clip is cut into consecutive training-length windows and each window's
features are taken as training sees them.

Token grouping (used by `humove.model.motion_tokens`): a plain reshape of this layout —
position tokens [v, η_0..η_23] = features[:75] as 25 × 3, rotation tokens [θ_0..θ_23, γ] = features[75:225] as
25 × 6, shape token β = features[225:235]: 25 + 25 + 1 = 51 tokens per frame.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from humove.schemas.motion import NUM_JOINTS, MotionClip

if TYPE_CHECKING:
    import torch

    ArrayLike = np.ndarray | torch.Tensor

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
    return windowed_features([clip])[0]


def windowed_features(clips: Sequence[MotionClip], window_seconds: float | None = None, *, validated: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The features of all frames of `clips`, concatenated in order: (ΣF, 235) float32 and the frames' (ΣF,) bool
    `valid`. Each clip is cut into consecutive windows of `window_seconds` at its own frame rate (the last one
    may be shorter; the whole clip when None), and each window is converted as `motion_to_features` converts it
    alone: θ[0] relative to the window's first frame.

    All rotations of all clips are converted at once, in NumPy: per clip, torch's per-operation overhead on a few
    thousand small matrices cost three times the arithmetic (the shards stage and the data loader convert every
    clip)."""
    if not clips:
        raise ValueError("windowed_features: no clips")
    if not validated:  # `validated=True`: the caller checked them (`load_motion` does), so it is not done twice
        for clip in clips:
            clip.validate()

    def stacked(key: str) -> np.ndarray:  # (ΣF, ...) float64: one motion key of every clip
        return np.concatenate([getattr(clip, key) for clip in clips]).astype(np.float64, copy=False)

    frames = np.array([clip.num_frames for clip in clips])
    total = int(frames.sum())
    # Each slice of the layout is written in place: the features of a few thousand frames are megabytes, and
    # every fresh array of that size costs page faults as well as its pass.
    features = np.empty((total, MOTION_DIM))
    transl = features[:, SLICE_V]
    transl[:] = stacked("transl")
    np.subtract(stacked("joints"), transl[:, None, :], out=features[:, SLICE_JOINTS].reshape(total, NUM_JOINTS, 3))
    theta = features[:, SLICE_THETA].reshape(total, NUM_JOINTS, 2, 3)  # θ as the first two columns of each R
    _rotation_columns(stacked("body_pose").reshape(total, NUM_JOINTS - 1, 3), theta[:, 1:])
    root = np.ascontiguousarray(np.swapaxes(_rotation_columns(stacked("global_orient")), -1, -2))  # (ΣF, 3, 3)
    features[:, SLICE_GAMMA] = _rot6d(root)
    # Each frame's window start, as an index into the concatenation.
    offsets = np.cumsum(frames) - frames
    lengths = [clip.num_frames if window_seconds is None else max(1, round(window_seconds * clip.fps) + 1)
               for clip in clips]
    window_start = np.concatenate([offset + np.arange(count) // length * length
                                   for offset, count, length in zip(offsets, frames, lengths, strict=True)])
    theta[:, 0] = _rot6d(np.swapaxes(root[window_start], -1, -2) @ root).reshape(total, 2, 3)  # R_γ(start)ᵀ R_γ(f)
    features[:, SLICE_BETAS] = stacked("betas")
    valid = np.concatenate([np.asarray(clip.valid, bool) for clip in clips])
    return features.astype(np.float32), valid


def _rotation_columns(axis_angle: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(..., 3) axis-angle → the first columns of each rotation matrix, float64, as `out` (..., C, 3) holds them
    (C = 2: the 6D rotation; default C = 3: Rᵀ). Rodrigues, R = cI + s[k]× + (1 − c)kkᵀ entry by entry (a few
    passes over flat arrays), and its first-order form I + [a]× below 1e-6 rad, as
    `humove.motion.rotations.axis_angle_to_matrix` (torch, differentiable) computes them."""
    axis_angle = np.asarray(axis_angle, np.float64)
    if out is None:
        out = np.empty((*axis_angle.shape[:-1], 3, 3))
    angle = np.sqrt(np.einsum("...i,...i->...", axis_angle, axis_angle))
    small = angle < 1e-6
    x, y, z = np.ascontiguousarray(np.moveaxis(axis_angle / np.where(small, 1.0, angle)[..., None], -1, 0))  # unit axis
    cos, sin = np.cos(angle), np.sin(angle)
    tx, ty = (1.0 - cos) * x, (1.0 - cos) * y
    sx, sy, sz = sin * x, sin * y, sin * z
    out[..., 0, 0], out[..., 0, 1], out[..., 0, 2] = tx * x + cos, tx * y + sz, tx * z - sy  # column 0
    out[..., 1, 0], out[..., 1, 1], out[..., 1, 2] = tx * y - sz, ty * y + cos, ty * z + sx  # column 1
    if out.shape[-2] == 3:
        out[..., 2, 0], out[..., 2, 1], out[..., 2, 2] = tx * z + sy, ty * z - sx, (1.0 - cos) * z * z + cos
    if small.any():
        ax, ay, az = np.moveaxis(axis_angle[small], -1, 0)
        one = np.ones_like(ax)
        columns = np.stack([one, az, -ay, -az, one, ax, ay, -ax, one], axis=-1).reshape(-1, 3, 3)
        out[small] = columns[:, :out.shape[-2]]
    return out


def _rot6d(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) → (..., 6): the first two columns, as `humove.motion.rotations.matrix_to_rot6d`."""
    return np.concatenate([matrix[..., :, 0], matrix[..., :, 1]], axis=-1)


def features_to_motion(
    features: np.ndarray | torch.Tensor,
    fps: float,
    body_model: str,
    image_size: tuple[int, int] | np.ndarray,
    focal: float | np.ndarray,
) -> MotionClip:
    """(F, 235) features → a valid MotionClip (camera frame). `focal` is one value or one per frame."""
    import torch  # here, not at the top: the shards stage computes features without it

    from humove.motion.rotations import matrix_to_axis_angle, rot6d_to_matrix

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


# Feature groups for reports (paper symbols): slices of the 235 values.
FEATURE_GROUPS = {"v": SLICE_V, "η": SLICE_JOINTS, "θ": SLICE_THETA, "γ": SLICE_GAMMA, "β": SLICE_BETAS}


def _zeros() -> np.ndarray:
    return np.zeros(MOTION_DIM, np.float64)


@dataclass
class FeatureMoments:
    """Exact, mergeable moments of the 235 features over a set of frames (float64): frame count, per-dimension
    mean and M2 = Σ (x − mean)² (variance = M2 / count)."""

    count: int = 0
    mean: np.ndarray = field(default_factory=_zeros)  # (235,)
    m2: np.ndarray = field(default_factory=_zeros)  # (235,)

    def __post_init__(self) -> None:
        self.count = int(self.count)
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.m2 = np.asarray(self.m2, dtype=np.float64).reshape(-1)
        if self.count < 0 or self.mean.shape != (MOTION_DIM,) or self.m2.shape != (MOTION_DIM,):
            raise ValueError(f"FeatureMoments: count {self.count}, mean {self.mean.shape}, m2 {self.m2.shape}; "
                             f"expected count >= 0 and ({MOTION_DIM},) arrays")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.m2).all()) or (self.m2 < 0).any():
            raise ValueError("FeatureMoments: mean / m2 contain NaN, inf or a negative M2")

    @classmethod
    def of(cls, features: np.ndarray, valid: np.ndarray | None = None) -> FeatureMoments:
        """Moments of the frames of `features` (F, 235); `valid` (F,) bool keeps only the frames marked True."""
        given = features
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != MOTION_DIM:
            raise ValueError(f"FeatureMoments: features have shape {features.shape}, expected (F, {MOTION_DIM})")
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != features.shape[:1]:
                raise ValueError(f"FeatureMoments: valid has shape {valid.shape}, features {features.shape}")
            if not valid.all():
                features = features[valid]
        if len(features) == 0:
            return cls()
        mean = features.mean(axis=0)
        # The deviations in one array (the float64 copy when one was made), squared in place: a fresh array of
        # a few megabytes per step cost more than its arithmetic.
        deviations = np.subtract(features, mean, out=features if features is not given else None)
        return cls(count=len(features), mean=mean, m2=np.square(deviations, out=deviations).sum(axis=0))

    def merge(self, other: FeatureMoments) -> FeatureMoments:
        """Moments of the union of both frame sets (exact up to float64 rounding)."""
        if other.count == 0:
            return FeatureMoments(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return FeatureMoments(other.count, other.mean.copy(), other.m2.copy())
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + np.square(delta) * (self.count * other.count / count)
        return FeatureMoments(count, mean, m2)

    @classmethod
    def merge_all(cls, parts: Iterable[FeatureMoments]) -> FeatureMoments:
        total = cls()
        for part in parts:
            total = total.merge(part)
        return total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)

    def to_stats(self) -> MotionStats:
        """Normalisation statistics (mean, std) of these frames; error when there are none."""
        if self.count == 0:
            raise ValueError("MotionStats: no frames to compute statistics from")
        std = np.sqrt(self.variance)
        return MotionStats(mean=self.mean, std=np.where(std < MotionStats.MIN_STD, 1.0, std), count=self.count,
                           moments=self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; float64 values round-trip exactly through JSON."""
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureMoments:
        for key in ("count", "mean", "m2"):
            if key not in data:
                raise ValueError(f"FeatureMoments: dict lacks {key!r}")
        return cls(count=int(data["count"]), mean=np.asarray(data["mean"]), m2=np.asarray(data["m2"]))


def clip_moments(clip: MotionClip, window_seconds: float | None = None) -> FeatureMoments:
    """Moments of the features of all valid frames of a clip, at its own frame rate.

    The clip is cut into consecutive windows of `window_seconds` (the training window, (num_frames − 1) / fps; the
    last one may be shorter; the whole clip when None), each converted on its own as training converts a window.
    """
    return FeatureMoments.of(*windowed_features([clip], window_seconds))


def normalised_second_moments(stats: MotionStats, moments: FeatureMoments) -> dict[str, float]:
    """E[z²] per feature group (v, η, θ, γ, β) of the frames described by `moments`, normalised with `stats`:
    per dimension (variance + (mean − μ)²) / σ², averaged over the group. ≈ 1 when the statistics fit the data;
    dimensions constant in the data (std set to 1) contribute their tiny variance."""
    if moments.count == 0:
        raise ValueError("normalised_second_moments: no frames")
    per_dim = (moments.variance + np.square(moments.mean - stats.mean)) / np.square(stats.std.astype(np.float64))
    return {name: float(per_dim[group].mean()) for name, group in FEATURE_GROUPS.items()}


@dataclass
class MotionStats:
    """Per-dimension mean and std of the (F, 235) features over a dataset, for normalisation.

    Dimensions whose std is below `MIN_STD` (constant in the data, e.g. β of a single subject) get std 1: they
    are centred but not amplified. `moments` (when known) are the exact moments they were computed from, stored
    with them so that statistics of several data sets can be merged (`FeatureMoments.merge`).
    """

    mean: np.ndarray  # (235,) float32
    std: np.ndarray  # (235,) float32
    count: int = 0  # frames the statistics were computed from
    moments: FeatureMoments | None = None

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
    def from_features(cls, arrays: Iterable[np.ndarray], valid: Iterable[np.ndarray] | None = None) -> MotionStats:
        """Statistics over all frames of all arrays (each (F, 235)); with `valid` (one (F,) bool per array) over
        the valid frames only. Float64 moments, kept in `moments`."""
        arrays = list(arrays)
        masks = list(valid) if valid is not None else [None] * len(arrays)
        if len(masks) != len(arrays):
            raise ValueError(f"MotionStats: {len(arrays)} arrays but {len(masks)} valid masks")
        parts = []
        for index, (array, mask) in enumerate(zip(arrays, masks, strict=True)):
            array = np.asarray(array)
            if array.ndim != 2 or array.shape[1] != MOTION_DIM:
                raise ValueError(f"MotionStats: array {index} has shape {array.shape}, expected (F, {MOTION_DIM})")
            parts.append(FeatureMoments.of(array, mask))
        return FeatureMoments.merge_all(parts).to_stats()

    def _as(self, like: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
        torch = sys.modules.get("torch")  # a tensor comes only from a loaded torch; numpy callers need none
        if torch is not None and isinstance(like, torch.Tensor):
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
        """{"dim", "count", "mean", "std"} and, when known, "moments" ({"count", "mean", "m2"}, float64)."""
        data = {"dim": MOTION_DIM, "count": int(self.count), "mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.moments is not None:
            data["moments"] = self.moments.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MotionStats:
        """Reads `to_dict`'s output; the older form without "moments" loads too (it cannot be merged)."""
        if data.get("dim", MOTION_DIM) != MOTION_DIM:
            raise ValueError(f"MotionStats: stored dim {data.get('dim')} is not {MOTION_DIM}")
        for key in ("mean", "std"):
            if key not in data:
                raise ValueError(f"MotionStats: dict lacks {key!r}")
        moments = FeatureMoments.from_dict(data["moments"]) if data.get("moments") else None
        return cls(mean=np.asarray(data["mean"]), std=np.asarray(data["std"]), count=int(data.get("count", 0)),
                   moments=moments)

