"""Raw motion-quality measures per clip, for a later filter (no thresholds here).

All measures use valid frames only, and of those the joints seen there (the clip's `joint_valid`; a hidden limb
is the fit's guess and measures nothing); temporal ones use pairs/triples of consecutive frames where the joint
is seen. Keypoints count where seen: score above `min_score` and inside the image.
- `jitter_mps2`: mean joint acceleration magnitude (m/s²), second differences × fps².
- `bone_length_cv`: mean over the 23 bones of (std / mean) of the bone length across frames (0 = rigid).
- `foot_sliding_mps`: mean horizontal speed (m/s, so it does not depend on the frame rate) of the feet while
  they stand on the floor, where their ankle is seen. The clip's up axis is the mean pelvis→neck direction; a
  foot (ankle and ball) is near the floor when within `contact_height_m` of its lowest height in the clip. Of the
  feet near the floor the slower one carries the body and is in contact; the other is in contact too when it moves
  slower than `contact_speed_mps` (both feet planted). A swing foot passing low over the floor is not in contact,
  a skating foot under a standing body is.
- `depth_drift_mps`: how fast the root depth changes beyond what the change of the person's size in the image
  supports (needs the keypoints): per frame, log depth + log of the detected torso and leg lengths (median over
  bones of each bone's change) is constant for a consistent fit; its robust slope over time × the median depth.
  A still person fitted ever deeper, or a walker coming closer without growing in the image, drifts.
- `max_abs_beta`: the largest |β| over valid frames. Body shapes are standard normal in SMPL's shape space:
  beyond ±3 the body is implausible, a sign that β absorbed what pose or depth should explain.
- `reprojection_px` / `reprojection_rel`: mean distance between projected SMPL joints and the detected
  keypoints matched to them where seen, in pixels and relative to the person's pixel height.
- `agreement_pck`: fraction of seen matched keypoints within `pck_alpha` person heights of the projected
  SMPL joint (over valid frames); `frame_agreement` gives it per frame, so a frame the fit does not explain can
  be marked invalid.
- `limb_length_error`: median |log(projected SMPL limb length / detected keypoint limb length)| over the eight
  limbs (upper/lower arms and legs) where both ends are seen. Unlike the 3D bone-length spread (always 0
  with one β per track), it fails when the fitted skeleton does not have the detected body's proportions.
"""

from __future__ import annotations

import numpy as np

from humove.keypoints.base import KeypointTrack
from humove.schemas.motion import SMPL_PARENTS, MotionClip

_FEET = ((7, 10), (8, 11))  # (ankle, foot) per side


def _per_joint(valid: np.ndarray) -> np.ndarray:
    """(T,) frame mask or (T, 24) joint mask → (T, 24) bool."""
    valid = np.asarray(valid, bool)
    return np.repeat(valid[:, None], 24, axis=1) if valid.ndim == 1 else valid


def _consecutive(valid: np.ndarray, span: int) -> np.ndarray:
    """(T - span, ...) True where frames t..t+span are all valid; valid (T, ...)."""
    ok = valid[: len(valid) - span].copy()
    for k in range(1, span + 1):
        ok &= valid[k : len(valid) - span + k]
    return ok


def jitter(joints: np.ndarray, valid: np.ndarray, fps: float) -> float:
    """Mean joint acceleration (m/s²) over joints seen on three consecutive frames; valid (T,) or (T, 24)."""
    if len(joints) < 3:
        return float("nan")
    accel = np.linalg.norm(joints[2:] - 2 * joints[1:-1] + joints[:-2], axis=-1) * fps**2  # (T-2, 24)
    ok = _consecutive(_per_joint(valid), 2)
    return float(accel[ok].mean()) if ok.any() else float("nan")


def bone_length_cv(joints: np.ndarray, valid: np.ndarray) -> float:
    """Mean over the bones seen (both ends, on two frames or more) of the bone length's std / mean; valid (T,) or
    (T, 24)."""
    seen = _per_joint(valid)
    child = np.arange(1, 24)
    parent = np.asarray(SMPL_PARENTS[1:])
    both = seen[:, child] & seen[:, parent]  # (T, 23)
    lengths = np.where(both, np.linalg.norm(joints[:, child] - joints[:, parent], axis=-1), np.nan)
    bones = both.sum(axis=0) >= 2
    if not bones.any():
        return float("nan")
    lengths = lengths[:, bones]
    return float((np.nanstd(lengths, axis=0) / np.maximum(np.nanmean(lengths, axis=0), 1e-6)).mean())


def foot_contacts(joints: np.ndarray, valid: np.ndarray, fps: float, contact_height_m: float = 0.05,
                  contact_speed_mps: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Which foot stands on the floor between consecutive frames and how fast it moves horizontally.

    joints (T, 24, 3) metres, valid (T,) frames or (T, 24) joints seen → contact (T-1, 2) bool (left, right;
    only where that side's ankle is seen on frames t and t+1) and speed (T-1, 2) m/s. See the module docstring
    for the rule."""
    frames = len(joints)
    contact, speed = np.zeros((max(frames - 1, 0), 2), bool), np.zeros((max(frames - 1, 0), 2))
    seen = _per_joint(valid)
    torso = seen[:, 0] & seen[:, 12]  # pelvis and neck: the up axis
    if torso.sum() < 2:
        return contact, speed
    up = (joints[torso][:, 12] - joints[torso][:, 0]).mean(axis=0)
    up /= max(np.linalg.norm(up), 1e-9)
    low = np.zeros_like(contact)
    for side, foot in enumerate(_FEET):
        ankle = seen[:, foot[0]]
        if ankle.sum() < 2:
            continue
        height = joints[:, list(foot)] @ up  # (T, 2): ankle and ball of the foot
        near = ((height - height[ankle].min(axis=0)) < contact_height_m).all(axis=1)
        low[:, side] = near[:-1] & near[1:] & _consecutive(ankle, 1)
        step = np.diff(joints[:, list(foot)].mean(axis=1), axis=0)  # (T-1, 3)
        speed[:, side] = np.linalg.norm(step - (step @ up)[:, None] * up, axis=-1) * fps
    slower = speed <= speed[:, ::-1]
    contact = low & (slower | ~low[:, ::-1] | (speed < contact_speed_mps))
    return contact, speed


def foot_sliding(joints: np.ndarray, valid: np.ndarray, fps: float, contact_height_m: float = 0.05,
                 contact_speed_mps: float = 0.3) -> float:
    """Mean horizontal speed (m/s) of the feet in contact with the floor where their ankles are seen (NaN when
    no foot ever is); valid (T,) or (T, 24)."""
    contact, speed = foot_contacts(joints, valid, fps, contact_height_m, contact_speed_mps)
    return float(speed[contact].mean()) if contact.any() else float("nan")


def max_abs_beta(clip: MotionClip) -> float:
    """The largest |β| over valid frames (NaN without one)."""
    valid = clip.valid.astype(bool)
    return float(np.abs(clip.betas[valid]).max()) if valid.any() else float("nan")


# SMPL bones whose image length tells the person's size: both sides of the torso, thighs and shins.
SIZE_BONES = ((16, 1), (17, 2), (1, 4), (2, 5), (4, 7), (5, 8))


def depth_drift(clip: MotionClip, keypoints: KeypointTrack, min_score: float = 0.3) -> float:
    """Root depth change per second (m/s) beyond what the detected size change supports, over valid frames with
    at least two confident size bones; NaN with fewer than three such frames."""
    from scipy.stats import theilslopes  # ~50 MB: not with the smooth stage's config (`humove report`)

    _, target, use, smpl = _matched(clip, keypoints, min_score)
    column = {int(j): i for i, j in enumerate(smpl)}
    changes = []
    for a, b in SIZE_BONES:
        if a not in column or b not in column:
            continue
        i, j = column[a], column[b]
        length = np.linalg.norm(target[:, i] - target[:, j], axis=-1)
        seen = use[:, i] & use[:, j] & clip.valid & (length > 1.0)
        log_length = np.where(seen, np.log(np.maximum(length, 1.0)), np.nan)
        if seen.any():
            changes.append(log_length - np.nanmedian(log_length))
    if not changes:
        return float("nan")
    changes = np.stack(changes)  # (bones, T)
    enough = (np.isfinite(changes).sum(axis=0) >= 2) & clip.valid.astype(bool)
    depth = clip.joints[:, 0, 2]
    enough &= depth > 1e-3
    if enough.sum() < 3:
        return float("nan")
    with np.errstate(all="ignore"):
        size = np.nanmedian(changes[:, enough], axis=0)
    consistent = np.log(depth[enough]) + size  # constant when depth follows the image size
    slope = theilslopes(consistent, np.flatnonzero(enough) / clip.fps)[0]
    return float(abs(slope) * np.median(depth[enough]))


# SMPL limbs (parent, child): upper and lower arms and legs of both sides.
LIMBS = ((16, 18), (18, 20), (17, 19), (19, 21), (1, 4), (4, 7), (2, 5), (5, 8))


def project_joints(clip: MotionClip) -> np.ndarray:
    """(T, 24, 2) pixels: the clip's camera-frame joints through its pinhole camera (principal point at the
    image centre)."""
    height, width = (int(v) for v in clip.image_size)
    z = np.maximum(clip.joints[..., 2:], 1e-3)
    return clip.joints[..., :2] / z * clip.focal[:, None, None] + np.array([width / 2, height / 2])


def _matched(clip: MotionClip, keypoints: KeypointTrack, min_score: float):
    """Projected SMPL joints and the keypoints matched to them: proj, target (T, M, 2), use (T, M), smpl (M,).
    A keypoint is used where it is seen and the clip counts its joint as seen (`joint_valid`: valid frames only,
    and no brief sighting of a hidden limb)."""
    if keypoints.num_frames != clip.num_frames:
        raise ValueError(f"keypoints have {keypoints.num_frames} frames, motion has {clip.num_frames}")
    kp, smpl, _ = keypoints.layout.smpl_indices()
    proj = project_joints(clip)[:, smpl]
    target = keypoints.xy[:, kp]
    use = keypoints.seen(min_score)[:, kp] & clip.joint_valid[:, smpl] & clip.valid.astype(bool)[:, None]
    return proj, target, use, smpl


def _person_height(target: np.ndarray, use: np.ndarray) -> np.ndarray:
    """(T,) pixel height spanned by the used keypoints of each frame (0 where none)."""
    ys = np.where(use, target[..., 1], np.nan)
    ys[~use.any(axis=1)] = 0.0
    return np.nanmax(ys, axis=1) - np.nanmin(ys, axis=1)


def frame_agreement(clip: MotionClip, keypoints: KeypointTrack, min_score: float = 0.3,
                    pck_alpha: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: PCK (T,) = share of confident matched keypoints within `pck_alpha` × person height of their
    projected SMPL joint (NaN where no keypoint is confident), and the count (T,) of those keypoints."""
    proj, target, use, _ = _matched(clip, keypoints, min_score)
    height = np.maximum(_person_height(target, use), 1.0)
    close = np.linalg.norm(proj - target, axis=-1) <= pck_alpha * height[:, None]
    count = use.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pck = np.where(count > 0, (close & use).sum(axis=1) / np.maximum(count, 1), np.nan)
    return pck.astype(np.float32), count.astype(np.int32)


def limb_length_error(clip: MotionClip, keypoints: KeypointTrack, min_score: float = 0.3) -> float:
    """Median |log ratio| of projected SMPL limb lengths to the detected keypoints' limb lengths (valid frames,
    limbs with both ends confident); NaN when no limb is seen."""
    proj, target, use, smpl = _matched(clip, keypoints, min_score)
    column = {int(j): i for i, j in enumerate(smpl)}
    ratios = []
    for a, b in LIMBS:
        if a not in column or b not in column:
            continue
        i, j = column[a], column[b]
        seen = use[:, i] & use[:, j] & clip.valid
        fitted = np.linalg.norm(proj[seen, i] - proj[seen, j], axis=-1)
        detected = np.linalg.norm(target[seen, i] - target[seen, j], axis=-1)
        keep = (fitted > 1.0) & (detected > 1.0)
        ratios.append(np.abs(np.log(fitted[keep] / detected[keep])))
    ratios = np.concatenate(ratios) if ratios else np.zeros(0)
    return float(np.median(ratios)) if len(ratios) else float("nan")


def reprojection_error(
    clip: MotionClip, keypoints: KeypointTrack, min_score: float = 0.3
) -> tuple[float, float]:
    """(mean pixels, mean relative to person pixel height) over matched, confident, valid joints."""
    proj, target, use, _ = _matched(clip, keypoints, min_score)
    use = use & clip.valid[:, None]
    if not use.any():
        return float("nan"), float("nan")
    dist = np.linalg.norm(proj - target, axis=-1)
    rel = dist / np.maximum(_person_height(target, use), 1.0)[:, None]
    return float(dist[use].mean()), float(rel[use].mean())


def motion_quality(
    clip: MotionClip,
    keypoints2d: KeypointTrack | None = None,
    contact_height_m: float = 0.05,
    min_score: float = 0.3,
    contact_speed_mps: float = 0.3,
) -> dict[str, float]:
    """Raw quality measures of one clip (NaN where a measure has too few valid frames or joints seen)."""
    valid = clip.valid.astype(bool)
    seen = clip.joint_valid & valid[:, None]
    result = {
        "jitter_mps2": jitter(clip.joints, seen, clip.fps),
        "foot_sliding_mps": foot_sliding(clip.joints, seen, clip.fps, contact_height_m, contact_speed_mps),
        "max_abs_beta": max_abs_beta(clip),
        "valid_fraction": float(valid.mean()),
    }
    if keypoints2d is not None:
        result["reprojection_px"], result["reprojection_rel"] = reprojection_error(
            clip, keypoints2d, min_score
        )
        pck, _ = frame_agreement(clip, keypoints2d, min_score)
        seen = valid & np.isfinite(pck)
        result["agreement_pck"] = float(pck[seen].mean()) if seen.any() else float("nan")
        result["limb_length_error"] = limb_length_error(clip, keypoints2d, min_score)
        result["depth_drift_mps"] = depth_drift(clip, keypoints2d, min_score)
    return result
