"""Temporal smoothing of a MotionClip: outliers out, short gaps filled, rotations smoothed in 6D, new joints.

Order of operations (each step configurable in `SmoothingConfig`, recorded with `as_record()`):
1. Outlier frames: a valid frame whose worst seen joint (`joint_valid`) strays from a running median of the valid
   frames by more than `outlier_mads` robust standard deviations (and at least `outlier_min_m` metres) becomes
   invalid.
2. Gaps: every invalid frame is filled (rotations linearly in 6D then re-orthonormalised, translation linearly,
   held beyond the ends) so the arrays stay finite. A run of invalid frames with valid frames on both sides and at
   most `max_gap` long is bridged: the filter runs across it. An outlier frame filled so (a glitch of a fit of a
   person who was seen) becomes valid again; a frame that came in invalid (the person or a required body part
   not seen) stays invalid, with `joint_valid` False: a hidden limb is never made up.
3. Betas: one robust value per track (per-coefficient median over valid frames), written to every frame.
4. Rotations (global orient + body pose) as 6D, translation with its own window: Gaussian (default),
   Savitzky-Golay, or One-Euro; each contiguous run of valid and bridged frames is filtered on its own (never
   across a long gap).
   6D outputs are mapped back to rotations by Gram-Schmidt.
5. Joints: SMPL forward (smplx) of the smoothed parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from humove.schemas.motion import MotionClip

if TYPE_CHECKING:
    from humove.motion.body_model import BodyModel

METHODS = ("gaussian", "savgol", "one_euro")


@dataclass
class SmoothingConfig:
    method: str = "gaussian"
    rotation_sigma: float = 2.0  # frames (Gaussian)
    translation_sigma: float = 3.0  # frames (Gaussian)
    rotation_window: int = 11  # frames, odd (Savitzky-Golay)
    translation_window: int = 15
    savgol_order: int = 2
    one_euro_min_cutoff: float = 1.5  # Hz
    one_euro_beta: float = 2.0
    one_euro_d_cutoff: float = 1.0  # Hz
    max_gap: int = 10  # frames; longer invalid runs stay invalid
    outlier_window: int = 9  # frames of the running median
    outlier_mads: float = 5.0
    outlier_min_m: float = 0.10

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"smoothing method {self.method!r}: expected one of {METHODS}")
        for name in ("rotation_window", "translation_window"):
            if getattr(self, name) % 2 == 0 or getattr(self, name) < 3:
                raise ValueError(f"smoothing {name}={getattr(self, name)}: must be odd and >= 3")

    def as_record(self) -> dict:
        return asdict(self)


# Filters over time (axis 0) -------------------------------------------------------------------------------
def _odd_pad(x: np.ndarray, pad: int) -> np.ndarray:
    """Point-reflect the ends (2·x0 − x[k]) so a low-pass filter keeps the end slopes (no flattening)."""
    pad = min(pad, len(x) - 1)
    if pad <= 0:
        return x
    head = 2 * x[:1] - x[pad:0:-1]
    tail = 2 * x[-1:] - x[-2 : -pad - 2 : -1]
    return np.concatenate([head, x, tail])


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """(T, ...) → (T, ...) Gaussian low-pass with point-reflected ends."""
    from scipy.ndimage import gaussian_filter1d  # scipy here: the stage's config imports this module (report)

    if sigma <= 0 or len(x) < 2:
        return x.copy()
    pad = int(np.ceil(4 * sigma))
    padded = _odd_pad(x, pad)
    lead = (len(padded) - len(x)) // 2
    return gaussian_filter1d(padded, sigma, axis=0, mode="nearest")[lead : lead + len(x)]


def savgol_smooth(x: np.ndarray, window: int, order: int) -> np.ndarray:
    """(T, ...) → (T, ...) Savitzky-Golay; the window shrinks (odd) for short runs."""
    from scipy.signal import savgol_filter

    window = min(window, len(x) if len(x) % 2 else len(x) - 1)
    if window <= order:
        return x.copy()
    return savgol_filter(x, window, order, axis=0, mode="interp")


def one_euro_smooth(x: np.ndarray, fps: float, min_cutoff: float, beta: float, d_cutoff: float) -> np.ndarray:
    """(T, ...) → (T, ...) One-Euro filter (Casiez et al. 2012): cutoff rises with speed, causal."""

    def alpha(cutoff):
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau * fps)

    out = np.empty_like(x)
    out[0] = x[0]
    deriv = np.zeros_like(x[0])
    a_d = alpha(d_cutoff)
    for t in range(1, len(x)):
        deriv = a_d * (x[t] - out[t - 1]) * fps + (1 - a_d) * deriv
        a = alpha(min_cutoff + beta * np.abs(deriv))
        out[t] = a * x[t] + (1 - a) * out[t - 1]
    return out


def _filter(x: np.ndarray, config: SmoothingConfig, fps: float, kind: str) -> np.ndarray:
    if config.method == "gaussian":
        return gaussian_smooth(x, config.rotation_sigma if kind == "rotation" else config.translation_sigma)
    if config.method == "savgol":
        window = config.rotation_window if kind == "rotation" else config.translation_window
        return savgol_smooth(x, window, config.savgol_order)
    return one_euro_smooth(x, fps, config.one_euro_min_cutoff, config.one_euro_beta, config.one_euro_d_cutoff)


# Validity: outliers and gaps ---------------------------------------------------------------------------
def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the True runs of a (T,) bool mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def reject_outliers(joints: np.ndarray, valid: np.ndarray, config: SmoothingConfig,
                    joint_valid: np.ndarray | None = None) -> np.ndarray:
    """joints (T, 24, 3), valid (T,), joint_valid (T, 24) joints seen (default: all of a valid frame) → new valid
    mask with outlier frames set False. Only seen joints count: a hidden limb is the fit's guess, and a wild guess
    must not throw away the frame of a body whose seen part is right."""
    from scipy.ndimage import median_filter

    index = np.flatnonzero(valid)
    if len(index) < max(5, config.outlier_window // 2 + 1):
        return valid.copy()
    seq = joints[index]
    seen = np.ones(seq.shape[:2], bool) if joint_valid is None else joint_valid[index]
    reference = median_filter(seq, size=(config.outlier_window, 1, 1), mode="nearest")
    # The worst joint, not the mean: a single flipped limb is the typical glitch and a mean over 24 joints
    # would dilute it below the threshold.
    deviation = np.where(seen, np.linalg.norm(seq - reference, axis=-1), 0.0).max(axis=-1)  # (N,) metres
    centre = np.median(deviation)
    spread = 1.4826 * np.median(np.abs(deviation - centre))
    limit = max(centre + config.outlier_mads * spread, config.outlier_min_m)
    out = valid.copy()
    out[index[deviation > limit]] = False
    return out


def _interpolate(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill unknown frames of (T, D) by linear interpolation between known frames (held beyond the ends)."""
    t = np.arange(len(values))
    good = np.flatnonzero(known)
    out = values.copy()
    for d in range(values.shape[1]):
        out[:, d] = np.interp(t, good, values[good, d])
    return out


def fill_gaps(rot6d: np.ndarray, transl: np.ndarray, valid: np.ndarray, max_gap: int):
    """Interpolate invalid frames. rot6d (T, 24, 6), transl (T, 3), valid (T,).

    Returns (rot6d, transl, bridged): every invalid frame filled (so values stay finite); `bridged` (T,) is
    `valid` plus the short interior gaps, the frames the filter may run across. Whether a filled frame is valid
    is the caller's decision (`smooth_motion`: only a repaired outlier).
    """
    if valid.all() or not valid.any():
        return rot6d, transl, valid.copy()
    frames = len(valid)
    rot = _interpolate(rot6d.reshape(frames, -1), valid).reshape(rot6d.shape)
    trans = _interpolate(transl, valid)
    new_valid = valid.copy()
    for start, stop in runs(~valid):
        interior = start > 0 and stop < frames
        if interior and stop - start <= max_gap:
            new_valid[start:stop] = True
    return rot, trans, new_valid


# The whole pass ---------------------------------------------------------------------------------------------
def smooth_motion(
    clip: MotionClip, config: SmoothingConfig | None = None, model: BodyModel | None = None
) -> MotionClip:
    """Smooth a clip (see module docstring). `model` defaults to the body model named in the clip."""
    # torch and smplx here, not at the top: stage configs import SmoothingConfig where no clip is smoothed (report)
    import torch

    from humove.motion.body_model import clip_joints, load_body_model
    from humove.motion.rotations import axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_rot6d, rot6d_to_matrix

    config = config or SmoothingConfig()
    model = model or load_body_model(clip.body_model)
    if model.name != clip.body_model:
        raise ValueError(f"clip was made with body model {clip.body_model!r}, got {model.name!r}")
    frames = clip.num_frames
    seen = clip.valid.astype(bool)
    kept = reject_outliers(clip.joints, seen, config, clip.joint_valid)

    rotations = np.concatenate([clip.global_orient[:, None], clip.body_rotations], axis=1)  # (T, 24, 3)
    rot6d = matrix_to_rot6d(axis_angle_to_matrix(torch.as_tensor(rotations, dtype=torch.float64))).numpy()
    rot6d, transl, bridged = fill_gaps(rot6d, clip.transl.astype(np.float64), kept, config.max_gap)
    valid = bridged & seen  # repaired outliers are valid again; frames that came in invalid stay so

    betas = clip.betas.astype(np.float64)
    if kept.any():
        betas = np.broadcast_to(np.median(betas[kept], axis=0), betas.shape).copy()

    for start, stop in runs(bridged):
        rot6d[start:stop] = _filter(rot6d[start:stop], config, clip.fps, "rotation")
        transl[start:stop] = _filter(transl[start:stop], config, clip.fps, "translation")

    rotations = matrix_to_axis_angle(rot6d_to_matrix(torch.as_tensor(rot6d))).numpy()
    global_orient, body_pose = rotations[:, 0], rotations[:, 1:]
    joints = clip_joints(model, betas, global_orient, body_pose, transl)
    return (
        replace(
            clip,
            betas=betas.astype(np.float32),
            global_orient=global_orient.astype(np.float32),
            body_pose=body_pose.astype(np.float32),
            transl=transl.astype(np.float32),
            joints=joints,
            valid=valid,
            joint_valid=clip.joint_valid & valid[:, None],
        ).validate()
        if frames
        else clip
    )
