"""6D convention: humove's rot6d is CameraHMR's (columns), not pytorch3d's (rows)."""

import torch
import torch.nn.functional as F

from humove.motion.rotations import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix


def _camerahmr_rot6d_reference(x: torch.Tensor) -> torch.Tensor:
    """CameraHMR's decoder output (B, 6) → (B, 3, 3), restated from its geometry.py: the 6 numbers are read
    as a 2×3 array, transposed so a1 = x[0:3], a2 = x[3:6]; Gram-Schmidt; b1, b2, b3 stacked as columns."""
    pairs = x.reshape(-1, 2, 3)
    a1, a2 = pairs[:, 0], pairs[:, 1]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=-1)], dim=-1)


def test_camerahmr_decoder_6d_needs_no_conversion():
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rot6d_to_matrix(x), _camerahmr_rot6d_reference(x))


def test_6d_is_the_first_two_columns_and_round_trips():
    rot = axis_angle_to_matrix(torch.randn(32, 3, generator=torch.Generator().manual_seed(1)))
    six = matrix_to_rot6d(rot)
    torch.testing.assert_close(six[:, :3], rot[:, :, 0])
    torch.testing.assert_close(six[:, 3:], rot[:, :, 1])
    torch.testing.assert_close(rot6d_to_matrix(six), rot, atol=1e-6, rtol=0)
    # pytorch3d's layout (rows) read with our decoder gives the transpose, i.e. the inverse rotation.
    rows = torch.cat([rot[:, 0, :], rot[:, 1, :]], dim=-1)
    torch.testing.assert_close(rot6d_to_matrix(rows), rot.transpose(1, 2), atol=1e-6, rtol=0)
