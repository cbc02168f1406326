"""Rotation conversions shared by the motion library, the SMPL stage and the trainer.

Conventions (one place, used everywhere):
- Axis-angle vectors `(..., 3)`: direction = axis, norm = angle in radians (SMPL's convention).
- Rotation matrices `(..., 3, 3)` act on column vectors: x' = R @ x.
- 6D rotations `(..., 6)` are the **first two columns** of R, concatenated: [R[:, 0], R[:, 1]]
  (Zhou et al. 2019 and CameraHMR; pytorch3d uses rows instead). `rot6d_to_matrix(matrix_to_rot6d(R)) == R`
  exactly for any rotation matrix; for an arbitrary 6D vector Gram-Schmidt gives the nearest valid rotation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle → (..., 3, 3) rotation matrix (Rodrigues, stable near zero)."""
    angle = torch.linalg.norm(axis_angle, dim=-1, keepdim=True)  # (..., 1)
    small = angle < 1e-6
    safe_angle = torch.where(small, torch.ones_like(angle), angle)
    axis = axis_angle / safe_angle
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    sin = torch.sin(angle)[..., None]
    cos = torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    rot = eye + sin * skew + (1 - cos) * (skew @ skew)
    # First-order expansion for tiny angles keeps gradients finite.
    a = axis_angle
    ax, ay, az = a.unbind(-1)
    skew_a = torch.stack([zero, -az, ay, az, zero, -ax, -ay, ax, zero], dim=-1).reshape(*a.shape[:-1], 3, 3)
    return torch.where(small[..., None], eye + skew_a, rot)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 4) unit quaternion (w, x, y, z) with w >= 0."""
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Four candidate denominators; pick the largest for numerical stability.
    q_abs = torch.sqrt(
        torch.clamp(
            torch.stack(
                [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
            ),
            min=1e-12,
        )
    )
    candidates = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                         m[..., 1, 0] - m[..., 0, 1]], dim=-1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], q_abs[..., 1] ** 2, m[..., 1, 0] + m[..., 0, 1],
                         m[..., 0, 2] + m[..., 2, 0]], dim=-1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], q_abs[..., 2] ** 2,
                         m[..., 2, 1] + m[..., 1, 2]], dim=-1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 2, 0] + m[..., 0, 2], m[..., 2, 1] + m[..., 1, 2],
                         q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    ) / (2.0 * q_abs[..., None])
    best = q_abs.argmax(dim=-1)
    quat = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    quat = F.normalize(quat, dim=-1)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def quaternion_to_axis_angle(quat: torch.Tensor) -> torch.Tensor:
    """(..., 4) (w, x, y, z) → (..., 3) axis-angle with angle in [0, π]."""
    quat = torch.where(quat[..., :1] < 0, -quat, quat)
    xyz = quat[..., 1:]
    sin_half = torch.linalg.norm(xyz, dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, quat[..., :1])
    small = sin_half < 1e-6
    scale = torch.where(small, 2.0 / torch.clamp(quat[..., :1], min=1e-6), angle / torch.clamp(sin_half, min=1e-12))
    return xyz * scale


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 3)."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def matrix_to_rot6d(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 6): the first two columns, [R[:, 0], R[:, 1]]."""
    return torch.cat([matrix[..., :, 0], matrix[..., :, 1]], dim=-1)


def rot6d_to_matrix(rot6d: torch.Tensor) -> torch.Tensor:
    """(..., 6) → (..., 3, 3) by Gram-Schmidt; the results are the columns of R."""
    a1, a2 = rot6d[..., :3], rot6d[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def axis_angle_to_rot6d(axis_angle: torch.Tensor) -> torch.Tensor:
    return matrix_to_rot6d(axis_angle_to_matrix(axis_angle))


def rot6d_to_axis_angle(rot6d: torch.Tensor) -> torch.Tensor:
    return matrix_to_axis_angle(rot6d_to_matrix(rot6d))
