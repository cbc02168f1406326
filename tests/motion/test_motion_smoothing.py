"""Temporal smoothing: less jitter without drifting from the clean motion; invalid frames; options."""

import numpy as np
import pytest
import torch

from humove.motion.body_model import clip_joints, standin_model
from humove.motion.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from humove.motion.smoothing import SmoothingConfig, fill_gaps, reject_outliers, runs, smooth_motion
from humove.motion.synthetic import walking_clip


def _noisy(clip, rot_noise=0.04, transl_noise=0.01, seed=0):
    """Perturb every rotation by a random small rotation and the translation by Gaussian noise."""
    rng = np.random.default_rng(seed)
    rot = np.concatenate([clip.global_orient[:, None], clip.body_rotations], axis=1)
    delta = axis_angle_to_matrix(
        torch.as_tensor(rng.normal(scale=rot_noise, size=rot.shape), dtype=torch.float32)
    )
    noisy = matrix_to_axis_angle(delta @ axis_angle_to_matrix(torch.as_tensor(rot))).numpy()
    betas = clip.betas + rng.normal(scale=0.1, size=clip.betas.shape).astype(np.float32)
    transl = clip.transl + rng.normal(scale=transl_noise, size=clip.transl.shape).astype(np.float32)
    joints = clip_joints(standin_model(), betas, noisy[:, 0], noisy[:, 1:], transl)
    from dataclasses import replace

    return replace(
        clip, global_orient=noisy[:, 0], body_pose=noisy[:, 1:], transl=transl, betas=betas, joints=joints
    )


def _accel_error(a, b):
    acc = lambda j: j[2:] - 2 * j[1:-1] + j[:-2]
    return float(np.linalg.norm(acc(a) - acc(b), axis=-1).mean())


def _position_error(a, b):
    return float(np.linalg.norm(a - b, axis=-1).mean())


@pytest.mark.parametrize("method", ["gaussian", "savgol", "one_euro"])
def test_smoothing_halves_acceleration_error_without_raising_position_error(method):
    clean = walking_clip(frames=90)
    noisy = _noisy(clean)
    smooth = smooth_motion(noisy, SmoothingConfig(method=method))
    before, after = _accel_error(noisy.joints, clean.joints), _accel_error(smooth.joints, clean.joints)
    pos_before = _position_error(noisy.joints, clean.joints)
    pos_after = _position_error(smooth.joints, clean.joints)
    print(
        f"\n{method}: acceleration error {before * 1000:.1f} → {after * 1000:.1f} mm/frame², "
        f"position error {pos_before * 1000:.1f} → {pos_after * 1000:.1f} mm"
    )
    assert smooth.valid.all()
    assert after <= 0.5 * before
    if method == "one_euro":  # causal, so it lags: an option for streaming, not the default
        assert pos_after <= 1.05 * pos_before
        return
    assert pos_after <= pos_before
    # One shape per track, close to the clean one.
    assert np.ptp(smooth.betas, axis=0).max() == 0
    np.testing.assert_allclose(smooth.betas[0], clean.betas[0], atol=0.1)


def test_gaps_are_bridged_for_the_filter_but_never_become_valid():
    """Frames that come in invalid (the person, or a required body part, not seen) are filled so the arrays stay
    finite, and short ones are bridged by the filter, but they stay invalid with no joint seen: smoothing never
    makes up a hidden body."""
    clip = walking_clip(frames=60)
    valid = np.ones(60, bool)
    valid[10:14] = False  # short gap → bridged, still invalid
    valid[30:50] = False  # long gap → not bridged, invalid
    valid[:2] = False  # at the start: no left neighbour → invalid
    from dataclasses import replace

    broken = clip.global_orient.copy()
    broken[10:14] = 0.0  # garbage in invalid frames must not leak into the result
    damaged = replace(clip, valid=valid, global_orient=broken)
    out = smooth_motion(damaged, SmoothingConfig(max_gap=5))
    assert out.valid.tolist() == valid.tolist()
    assert not out.joint_valid[~valid].any() and out.joint_valid[valid].all()
    assert np.isfinite(out.joints).all()
    # The filled frames are close to the true motion (it is smooth there), and so are their valid neighbours.
    err = np.linalg.norm(out.joints[8:16] - clip.joints[8:16], axis=-1).mean()
    assert err < 0.03, err
    assert runs(np.array([1, 1, 0, 1, 0, 0], bool)) == [(0, 2), (3, 4)]


def test_outlier_frames_are_rejected_then_repaired():
    clip = _noisy(walking_clip(frames=60), rot_noise=0.01, transl_noise=0.002)
    joints = clip.joints.copy()
    joints[25] += np.array([0.5, 0.0, 0.0], np.float32)  # a 50 cm jump for one frame
    valid = reject_outliers(joints, clip.valid, SmoothingConfig())
    assert np.flatnonzero(~valid).tolist() == [25]
    # A single limb glitch (left forearm thrown 30 cm for one frame) is caught too.
    limb = clip.joints.copy()
    limb[40, [18, 20, 22]] += np.array([0.0, 0.3, 0.0], np.float32)
    assert np.flatnonzero(~reject_outliers(limb, clip.valid, SmoothingConfig())).tolist() == [40]
    from dataclasses import replace

    transl = clip.transl.copy()
    transl[25] += np.array([0.5, 0.0, 0.0], np.float32)
    bad = replace(clip, transl=transl, joints=joints)
    out = smooth_motion(bad)
    assert out.valid[25]  # one-frame gap: interpolated from its neighbours
    assert abs(out.transl[25, 0] - clip.transl[25, 0]) < 0.05


def test_fill_gaps_keeps_valid_frames_and_config_is_checked():
    rot6d = np.random.default_rng(0).normal(size=(6, 24, 6))
    transl = np.arange(18, dtype=float).reshape(6, 3)
    valid = np.array([1, 0, 0, 1, 1, 1], bool)
    rot, trans, new_valid = fill_gaps(rot6d, transl, valid, max_gap=2)
    np.testing.assert_array_equal(rot[valid], rot6d[valid])
    np.testing.assert_allclose(trans[1], transl[1])  # linear data: interpolation is exact
    assert new_valid.all()
    with pytest.raises(ValueError, match="method"):
        SmoothingConfig(method="kalman")
    with pytest.raises(ValueError, match="odd"):
        SmoothingConfig(rotation_window=8)
    assert SmoothingConfig().as_record()["method"] == "gaussian"
