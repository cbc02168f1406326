"""Score extracted 3D joints against ground truth: MPJPE, PA-MPJPE and acceleration error.

All functions take predicted and ground-truth joints (F, J, 3) in metres (same camera frame and joint order,
e.g. the 24 SMPL joints) and an optional valid mask (F,) bool; invalid frames are left out. Conventions follow
the human-mesh-recovery literature:

- MPJPE: mean Euclidean joint error after aligning the root joints (pelvis, index 0) of each frame, so a
  monocular depth error does not swamp the pose error. `root_aligned=False` keeps absolute positions.
- PA-MPJPE: mean joint error after a per-frame similarity Procrustes alignment (scale, rotation without
  reflection, translation) of the prediction to the ground truth.
- Acceleration error: mean norm of the difference of second finite differences (per frame², so it does not
  depend on the frame rate unit), over frames whose two neighbours are valid too.

- Foot sliding: mean horizontal speed (m/s) of the predicted feet where the ground truth's feet stand on the floor
  (`humove.motion.quality.foot_contacts` on the truth), so a prediction cannot hide skating by lifting its feet.
- Depth drift: how far the root depth error wanders over the clip (m): the range of log(predicted / true root
  depth) × the median true depth. A constant depth or scale error (monocular fits cannot know the scale) is not
  drift; a still person fitted ever deeper is.

`evaluate_joints` reports the first three in millimetres, and the last two when given the frame rate.
"""

from __future__ import annotations

import numpy as np

from humove.motion.quality import foot_contacts


def _check(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.ndim != 3 or pred.shape[-1] != 3 or pred.shape != gt.shape:
        raise ValueError(f"joints: expected prediction and ground truth of the same shape (F, J, 3), "
                         f"got {pred.shape} and {gt.shape}")
    mask = np.ones(len(pred), bool) if valid is None else np.asarray(valid, bool)
    if mask.shape != (len(pred),):
        raise ValueError(f"valid: expected shape ({len(pred)},), got {mask.shape}")
    finite = np.isfinite(pred).all(axis=(1, 2)) & np.isfinite(gt).all(axis=(1, 2))
    if (mask & ~finite).any():
        bad = int(np.flatnonzero(mask & ~finite)[0])
        raise ValueError(f"joints: frame {bad} is marked valid but holds NaN or inf")
    return pred, gt, mask


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame similarity alignment of pred (F, J, 3) onto gt (F, J, 3): s·R·pred + t minimising the squared
    error, R a proper rotation (no reflection). Returns the aligned prediction (F, J, 3)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    mu_pred, mu_gt = pred.mean(axis=1, keepdims=True), gt.mean(axis=1, keepdims=True)
    x, y = pred - mu_pred, gt - mu_gt
    cov = np.einsum("fji,fjk->fik", x, y)  # (F, 3, 3) = Σ x yᵀ
    u, s, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(np.einsum("fij,fjk->fik", vt.transpose(0, 2, 1), u.transpose(0, 2, 1))))
    sign = np.where(sign == 0, 1.0, sign)
    d = np.ones((len(pred), 3))
    d[:, 2] = sign
    rotation = np.einsum("fij,fj,fjk->fik", vt.transpose(0, 2, 1), d, u.transpose(0, 2, 1))  # V D Uᵀ
    scale = (s * d).sum(axis=1) / np.maximum((x**2).sum(axis=(1, 2)), 1e-12)
    return scale[:, None, None] * np.einsum("fik,fjk->fji", rotation, x) + mu_gt


def mpjpe(pred, gt, valid=None, root_aligned: bool = True, root: int = 0) -> float:
    """Mean per-joint position error over valid frames, in the input's unit (NaN when no frame is valid)."""
    pred, gt, mask = _check(pred, gt, valid)
    pred, gt = pred[mask], gt[mask]
    if root_aligned:
        pred = pred - pred[:, root : root + 1]
        gt = gt - gt[:, root : root + 1]
    return _mean_or_nan(np.linalg.norm(pred - gt, axis=-1))


def pa_mpjpe(pred, gt, valid=None) -> float:
    """MPJPE after per-frame Procrustes alignment (scale, rotation, translation), input's unit."""
    pred, gt, mask = _check(pred, gt, valid)
    if not mask.any():
        return float("nan")
    aligned = procrustes_align(pred[mask], gt[mask])
    return _mean_or_nan(np.linalg.norm(aligned - gt[mask], axis=-1))


def acceleration_error(pred, gt, valid=None) -> float:
    """Mean |a_pred − a_gt| per joint with a = x[t−1] − 2x[t] + x[t+1] (input's unit per frame²), over frames
    t whose neighbours t−1 and t+1 are valid as well (NaN when there is none)."""
    pred, gt, mask = _check(pred, gt, valid)
    if len(pred) < 3:
        return float("nan")
    usable = mask[:-2] & mask[1:-1] & mask[2:]
    accel_pred = pred[:-2] - 2 * pred[1:-1] + pred[2:]
    accel_gt = gt[:-2] - 2 * gt[1:-1] + gt[2:]
    return _mean_or_nan(np.linalg.norm(accel_pred - accel_gt, axis=-1)[usable])


def foot_sliding_at_contacts(pred, gt, fps: float, valid=None) -> float:
    """Mean horizontal speed (m/s) of the predicted feet where the truth's feet are in contact (NaN if never)."""
    pred, gt, mask = _check(pred, gt, valid)
    if pred.shape[1] != 24:
        raise ValueError(f"foot sliding needs the 24 SMPL joints, got {pred.shape[1]}")
    contact, _ = foot_contacts(gt, mask, fps)
    _, speed = foot_contacts(pred, mask, fps)
    return _mean_or_nan(speed[contact])


def depth_drift(pred, gt, valid=None, root: int = 0) -> float:
    """Range over valid frames of log(predicted / true root depth) × the median true depth (m); NaN if no frame."""
    pred, gt, mask = _check(pred, gt, valid)
    z_pred, z_true = pred[mask, root, 2], gt[mask, root, 2]
    usable = (z_pred > 1e-3) & (z_true > 1e-3)
    if not usable.any():
        return float("nan")
    ratio = np.log(z_pred[usable] / z_true[usable])
    return float(np.ptp(ratio) * np.median(z_true[usable]))


def evaluate_joints(pred, gt, valid=None, fps: float | None = None) -> dict[str, float]:
    """MPJPE (root-aligned), PA-MPJPE and acceleration error in millimetres (inputs in metres), the number of
    frames scored, and with `fps` the foot sliding (m/s) and depth drift (m): {"mpjpe_mm", "pa_mpjpe_mm",
    "accel_error_mm", "frames"[, "foot_sliding_mps", "depth_drift_m"]}."""
    _, _, mask = _check(pred, gt, valid)
    scores = {
        "mpjpe_mm": 1000.0 * mpjpe(pred, gt, mask),
        "pa_mpjpe_mm": 1000.0 * pa_mpjpe(pred, gt, mask),
        "accel_error_mm": 1000.0 * acceleration_error(pred, gt, mask),
        "frames": int(mask.sum()),
    }
    if fps is not None:  # SMPL's 24 joints: feet and root
        scores["foot_sliding_mps"] = foot_sliding_at_contacts(pred, gt, fps, mask)
        scores["depth_drift_m"] = depth_drift(pred, gt, mask)
    return scores
