"""Offline fitting backend: SMPL parameters for a whole track from detected keypoints, by optimisation.

SMPLify-style, batched over the T frames of one track (one shape for the track):
- 2D reprojection of the SMPL joints through a pinhole camera (focal f, principal point at the image centre),
  robust (Geman-McClure) and weighted by keypoint confidence, in units of the person's pixel height;
- a 3D landmark term when the detector gives metric landmarks (hip-centred, camera-aligned), on root-relative
  joints: it resolves the depth and facing ambiguities that 2D alone leaves;
- priors: body rotations near rest (‖R − I‖²), betas near the mean (‖β‖², per frame: one β per track);
- a temporal term on joint velocities and root translation, which also fills frames without detections.

Rotations are optimised as 6D (continuous; first two columns of R, see rotations.py). Stage 1 fits the root
(orientation + translation) on torso points from two starts, facing the camera and facing away, and keeps the
better one per frame; stage 2 fits everything. Joints come from `BodyModel.joints_only` while optimising
(exact and cheap) and from the smplx forward for the saved clip.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform

from humove.keypoints.base import KeypointTrack
from humove.motion.body_model import BodyModel, clip_joints
from humove.motion.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rot6d_to_matrix,
)
from humove.schemas.motion import NUM_BETAS, MotionClip

_TORSO = (1, 2, 16, 17)  # SMPL hips and shoulders: enough to place and orient the root


@dataclass
class FitConfig:
    """All fitter settings; `as_record()` is stored with the motion so a fit can be reproduced."""

    root_iterations: int = 60
    iterations: int = 300
    learning_rate: float = 0.03
    min_score: float = 0.3  # keypoints below this confidence are ignored
    min_keypoints: int = 6  # a frame with fewer confident SMPL-matched keypoints is marked invalid
    robust_sigma: float = 0.05  # Geman-McClure scale, in person heights
    reprojection_weight: float = 1.0
    landmark3d_weight: float = 1.0
    pose_prior_weight: float = 1e-5
    # Per frame: β is one per track, so a weak prior lets it absorb, over many frames, every systematic
    # difference between the detector's keypoints and SMPL's joints (at 1e-5: |β| up to 3.3 in the demo, −4.1 on
    # real footage). At 1e-3 the rendered people keep |β| < 0.6 at the same MPJPE. A prior on the root's depth
    # speed was tried and left out: it steadied a still person's depth by 1 cm but made the demo's walker, coming
    # closer, drift 0.6 m away in 3 s. The smooth stage measures depth drift instead.
    shape_prior_weight: float = 1e-3
    temporal_weight: float = 0.02
    joint_limit_weight: float = 1.0  # knees and elbows must not bend backwards (see hinge_violation)
    focal: float | None = None  # pixels; None → image diagonal (about 53° vertical field of view at 16:9)
    device: str = "cpu"
    # Tensors here are small: one CPU thread is faster than several (measured 5-10x under load) and lets
    # workers run one fit per core. None keeps torch's setting.
    cpu_threads: int | None = 1

    def as_record(self) -> dict:
        return asdict(self)


def default_focal(image_size: tuple[int, int]) -> float:
    """A neutral focal guess (pixels) when no camera model is available: the image diagonal."""
    height, width = image_size
    return float(math.hypot(height, width))


def project(points: torch.Tensor, focal: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Pinhole projection: points (..., N, 3) camera frame, focal (...,), center (2,) → (..., N, 2)."""
    z = points[..., 2:].clamp(min=1e-3)
    return points[..., :2] / z * focal[..., None, None] + center


def _gmof(residual_sq: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure robust penalty of squared residuals."""
    return residual_sq * sigma**2 / (residual_sq + sigma**2)


def hinge_violation(rotmats: torch.Tensor) -> torch.Tensor:
    """(T, 24, 3, 3) → (T,) squared amount by which knees and elbows bend the wrong way.

    SMPL's frame: y up, x to the body's left, z forward. A bent knee sends the shin backwards (its local
    rotation maps (0, −1, 0) to negative z, i.e. R[2, 1] ≥ 0); a bent elbow sends the forearm forwards
    (left: R[2, 0] ≥ 0, right: R[2, 0] ≤ 0). Without this, 2D keypoints allow mirror-image limb bends.
    """
    knees = torch.relu(-rotmats[:, [4, 5], 2, 1]).pow(2).sum(-1)
    elbows = torch.relu(-rotmats[:, 18, 2, 0]).pow(2) + torch.relu(rotmats[:, 19, 2, 0]).pow(2)
    return knees + elbows


def _posed_joints(model: BodyModel, betas: torch.Tensor, rotmats: torch.Tensor, transl: torch.Tensor):
    """betas (T, 10) or (1, 10) shared, rotmats (T, 24, 3, 3), transl (T, 3) → joints (T, 24, 3)."""
    rest = model.rest_joints(betas).expand(len(rotmats), -1, -1)
    posed, _ = batch_rigid_transform(rotmats, rest, model.parents)
    return posed + transl[:, None]


@dataclass
class _Targets:
    """Keypoint targets re-indexed to SMPL joints, as tensors: xy (T, 24, 2), conf (T, 24), world (T, 24, 3).

    `pixel_scale` is the person's median pixel height: 2D residuals are measured in person heights.
    """

    xy: torch.Tensor
    conf: torch.Tensor
    world: torch.Tensor | None
    pixel_scale: float
    valid: np.ndarray  # (T,) frames with enough confident keypoints

    @classmethod
    def from_track(cls, track: KeypointTrack, config: FitConfig, device: torch.device) -> _Targets:
        xy, conf, world, _ = track.smpl_targets()
        kp, smpl, _ = track.layout.smpl_indices()
        raw = np.zeros_like(conf)
        raw[:, smpl] = track.scores[:, kp]
        conf = np.where(raw >= config.min_score, conf, 0.0)  # threshold the detector's score, not the weight
        seen = (conf > 0).any(axis=1)
        if seen.any():
            ys = np.where(conf > 0, xy[..., 1], np.nan)[seen]
            scale = float(np.median(np.nanmax(ys, axis=1) - np.nanmin(ys, axis=1)))
        else:
            scale = float(max(track.image_size)) / 2
        return cls(
            xy=torch.as_tensor(xy, device=device),
            conf=torch.as_tensor(conf, dtype=torch.float32, device=device),
            world=None if world is None else torch.as_tensor(world, device=device),
            pixel_scale=max(scale, 1.0),
            valid=(conf > 0).sum(axis=1) >= config.min_keypoints,
        )

    def repeated(self, times: int, joint_mask: torch.Tensor) -> _Targets:
        """The targets stacked `times` over the frame axis, only joints where joint_mask (24,) is 1."""
        return _Targets(
            xy=self.xy.repeat(times, 1, 1),
            conf=self.conf.repeat(times, 1) * joint_mask,
            world=None if self.world is None else self.world.repeat(times, 1, 1),
            pixel_scale=self.pixel_scale,
            valid=np.tile(self.valid, times),
        )


def _initial_root(targets: _Targets, model: BodyModel, focal: float, center: np.ndarray) -> torch.Tensor:
    """Root translation (T, 3) from the torso's pixel size: depth = f · metric length / pixel length."""
    rest = model.joint_template.cpu().numpy()
    torso_3d = np.linalg.norm((rest[16] + rest[17]) / 2 - (rest[1] + rest[2]) / 2)
    xy = targets.xy.cpu().numpy()
    conf = targets.conf.cpu().numpy()
    torso_ok = (conf[:, list(_TORSO)] > 0).all(axis=1)
    shoulders, hips = (xy[:, 16] + xy[:, 17]) / 2, (xy[:, 1] + xy[:, 2]) / 2
    torso_px = np.linalg.norm(shoulders - hips, axis=1)
    depth = np.where(torso_ok & (torso_px > 1), focal * torso_3d / np.maximum(torso_px, 1), np.nan)
    fill = np.nanmedian(depth) if np.isfinite(depth).any() else 3.0
    depth = np.where(np.isfinite(depth), depth, fill)
    pelvis_px = np.where(torso_ok[:, None], hips, center)
    xy_metric = (pelvis_px - center) * depth[:, None] / focal
    return torch.as_tensor(np.concatenate([xy_metric, depth[:, None]], axis=1), dtype=torch.float32)


def _losses(joints, targets: _Targets, focal, center, config: FitConfig, rotmats, betas):
    """Sum of the SMPLify terms for joints (T, 24, 3). Returns (total, per-frame data term (T,))."""
    proj = project(joints, focal, center)
    res = ((proj - targets.xy) / targets.pixel_scale).pow(2).sum(-1)  # (T, 24)
    data = (targets.conf * _gmof(res, config.robust_sigma)).sum(-1) * config.reprojection_weight
    if targets.world is not None and config.landmark3d_weight > 0:
        hips = (joints[:, 1] + joints[:, 2]) / 2
        rel = joints - hips[:, None]
        res3d = (rel - targets.world).pow(2).sum(-1)  # metres²
        data = data + config.landmark3d_weight * (targets.conf * _gmof(res3d, 0.1)).sum(-1)
    total = data.sum()
    if rotmats is not None:
        eye = torch.eye(3, device=rotmats.device)
        total = total + config.pose_prior_weight * (rotmats[:, 1:] - eye).pow(2).sum()
        total = total + config.joint_limit_weight * hinge_violation(rotmats).sum()
    if betas is not None:
        total = total + config.shape_prior_weight * betas.pow(2).sum() * len(joints)
    if len(joints) > 1 and config.temporal_weight > 0:
        rel = joints - joints[:, :1]
        total = total + config.temporal_weight * (rel[1:] - rel[:-1]).pow(2).sum()
        total = total + config.temporal_weight * (joints[1:, 0] - joints[:-1, 0]).pow(2).sum()
    return total, data


def _root_stage(model, targets, focal, center, config, transl0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit root rotation + translation on torso points from two facing starts; keep the better per frame."""
    frames = len(transl0)
    device = transl0.device
    # SMPL is y-up, the camera y-down: a half turn about x makes the body upright and facing the camera.
    flip_x = axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0], device=device))
    turn = axis_angle_to_matrix(torch.tensor([0.0, math.pi, 0.0], device=device))  # facing away
    starts = torch.stack([flip_x, flip_x @ turn])  # (2, 3, 3)
    root6d = matrix_to_rot6d(starts).repeat_interleave(frames, 0).clone().requires_grad_(True)  # (2T, 6)
    transl = transl0.repeat(2, 1).clone().requires_grad_(True)
    torso = torch.zeros(24, device=device)
    torso[list(_TORSO)] = 1.0
    doubled = targets.repeated(2, torso)
    betas = torch.zeros(2 * frames, NUM_BETAS, device=device)
    eye = torch.eye(3, device=device).expand(2 * frames, 23, 3, 3)
    optimiser = torch.optim.Adam([root6d, transl], lr=config.learning_rate)
    no_temporal = FitConfig(**{**config.as_record(), "temporal_weight": 0.0})
    for _ in range(config.root_iterations):
        optimiser.zero_grad()
        rot = torch.cat([rot6d_to_matrix(root6d)[:, None], eye], dim=1)
        loss, _ = _losses(
            _posed_joints(model, betas, rot, transl), doubled, focal, center, no_temporal, None, None
        )
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        rot = torch.cat([rot6d_to_matrix(root6d)[:, None], eye], dim=1)
        _, data = _losses(
            _posed_joints(model, betas, rot, transl), doubled, focal, center, no_temporal, None, None
        )
        pick = (data[frames:] < data[:frames]).long()  # 1 → facing-away start was better
        index = torch.arange(frames, device=device) + pick * frames
        return root6d[index].detach(), transl[index].detach()


@contextmanager
def _torch_threads(count: int | None):
    """Temporarily set torch's intra-op CPU threads (restored afterwards)."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_keypoints(
    track: KeypointTrack,
    model: BodyModel,
    fps: float,
    config: FitConfig | None = None,
    focal: float | None = None,
) -> MotionClip:
    """Fit SMPL parameters to one track's keypoints → MotionClip (body_model = model.name).

    Frames with fewer than `min_keypoints` confident matched keypoints are filled by the temporal term and
    marked invalid. The focal length is `focal`, else `config.focal`, else `default_focal(image_size)`.
    """
    config = config or FitConfig()
    with _torch_threads(config.cpu_threads if config.device == "cpu" else None):
        return _fit(track, model, fps, config, focal)


def _fit(track: KeypointTrack, model: BodyModel, fps: float, config: FitConfig, focal: float | None):
    device = torch.device(config.device)
    model = model.to(device)
    frames = track.num_frames
    if frames < 1:
        raise ValueError("keypoint track has no frames")
    targets = _Targets.from_track(track, config, device)
    height, width = track.image_size
    f_value = float(focal or config.focal or default_focal(track.image_size))
    focal_t = torch.full((frames,), f_value, device=device)
    center_np = np.array([width / 2, height / 2], dtype=np.float32)
    center = torch.as_tensor(center_np, device=device)

    transl0 = _initial_root(targets, model, f_value, center_np).to(device)
    root6d, transl = _root_stage(model, targets, focal_t.repeat(2), center, config, transl0)

    body6d = matrix_to_rot6d(torch.eye(3, device=device).expand(frames, 23, 3, 3)).clone()
    root6d, transl = root6d.clone().requires_grad_(True), transl.clone().requires_grad_(True)
    body6d.requires_grad_(True)
    betas = torch.zeros(1, NUM_BETAS, device=device, requires_grad=True)
    optimiser = torch.optim.Adam([root6d, body6d, transl, betas], lr=config.learning_rate)
    for _ in range(config.iterations):
        optimiser.zero_grad()
        rot = torch.cat([rot6d_to_matrix(root6d)[:, None], rot6d_to_matrix(body6d)], dim=1)
        joints = _posed_joints(model, betas, rot, transl)
        loss, _ = _losses(joints, targets, focal_t, center, config, rot, betas)
        loss.backward()
        optimiser.step()

    with torch.no_grad():
        global_orient = matrix_to_axis_angle(rot6d_to_matrix(root6d)).cpu().numpy()
        body_pose = matrix_to_axis_angle(rot6d_to_matrix(body6d)).cpu().numpy()
        betas_np = betas.expand(frames, -1).cpu().numpy()
        transl_np = transl.cpu().numpy()
    joints_np = clip_joints(model.cpu(), betas_np, global_orient, body_pose, transl_np)
    return MotionClip(
        betas=betas_np.astype(np.float32),
        global_orient=global_orient.astype(np.float32),
        body_pose=body_pose.astype(np.float32),
        transl=transl_np.astype(np.float32),
        joints=joints_np,
        focal=np.full(frames, f_value, np.float32),
        image_size=np.asarray(track.image_size, np.int32),
        valid=targets.valid.copy(),
        fps=float(fps),
        body_model=model.name,
    ).validate()


def fit_track(
    frames: np.ndarray,
    boxes: np.ndarray,
    detector,
    model: BodyModel,
    fps: float,
    config: FitConfig | None = None,
    focal: float | None = None,
) -> tuple[MotionClip, KeypointTrack]:
    """Detect keypoints on one track's frames (T, H, W, 3) uint8 RGB with boxes (T, 4) xyxy, then fit.

    Returns the motion and the keypoints it was fitted to (for `motion_quality`'s reprojection error).
    """
    track = detector.detect_track(frames, boxes)
    return fit_keypoints(track, model, fps, config, focal), track
