"""MPJPE, PA-MPJPE and acceleration error on known transforms of known joints."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from humove.motion.evaluate import acceleration_error, evaluate_joints, mpjpe, pa_mpjpe, procrustes_align
from humove.motion.synthetic import walking_clip


@pytest.fixture(scope="module")
def gt():
    return walking_clip(frames=20).joints.astype(np.float64)  # (20, 24, 3) metres, a real pose sequence


def test_a_perfect_prediction_scores_zero(gt):
    scores = evaluate_joints(gt, gt)
    assert scores["mpjpe_mm"] == pytest.approx(0, abs=1e-9)
    assert scores["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-6)
    assert scores["accel_error_mm"] == pytest.approx(0, abs=1e-9)
    assert scores["frames"] == 20


def test_a_rotated_scaled_shifted_copy_has_zero_pa_mpjpe_but_not_zero_mpjpe(gt):
    rotations = Rotation.from_rotvec(np.random.default_rng(0).normal(size=(20, 3))).as_matrix()
    moved = 1.3 * np.einsum("fik,fjk->fji", rotations, gt) + np.array([0.5, -0.2, 1.0])
    assert pa_mpjpe(moved, gt) == pytest.approx(0, abs=1e-9)
    np.testing.assert_allclose(procrustes_align(moved, gt), gt, atol=1e-9)
    assert mpjpe(moved, gt) > 0.05


def test_a_mirrored_copy_is_not_aligned_away(gt):
    """Procrustes uses proper rotations only: a reflected body (left and right swapped in space) keeps an error."""
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert pa_mpjpe(mirrored, gt) > 0.01


def test_mpjpe_is_root_aligned_and_in_the_input_unit(gt):
    shifted = gt + np.array([0.3, 0.0, 2.0])  # a depth error only
    assert mpjpe(shifted, gt) == pytest.approx(0, abs=1e-12)
    assert mpjpe(shifted, gt, root_aligned=False) == pytest.approx(np.linalg.norm([0.3, 0.0, 2.0]))
    one_joint_off = gt.copy()
    one_joint_off[:, 20, 1] += 0.024  # the left wrist 24 mm lower in every frame
    assert mpjpe(one_joint_off, gt) == pytest.approx(0.024 / 24)
    assert evaluate_joints(one_joint_off, gt)["mpjpe_mm"] == pytest.approx(1.0)


def test_invalid_frames_are_left_out(gt):
    pred = gt.copy()
    pred[5] += 10.0
    pred[6] = np.nan
    valid = np.ones(20, bool)
    valid[[5, 6]] = False
    scores = evaluate_joints(pred, gt, valid)
    assert scores["frames"] == 18
    assert scores["mpjpe_mm"] == pytest.approx(0, abs=1e-9) and scores["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-6)
    assert scores["accel_error_mm"] == pytest.approx(0, abs=1e-9)  # frames 4–7 have an invalid neighbour
    assert np.isnan(mpjpe(pred, gt, np.zeros(20, bool)))


def test_acceleration_error_sees_jitter_not_constant_velocity(gt):
    drift = gt + np.arange(20)[:, None, None] * np.array([0.01, 0.0, 0.0])  # constant velocity: no acceleration
    assert acceleration_error(drift, gt) == pytest.approx(0, abs=1e-12)
    jitter = gt.copy()
    jitter[10] += np.array([0.0, 0.01, 0.0])  # one frame 10 mm off: accelerations 10, 20, 10 mm/frame²
    assert acceleration_error(jitter, gt) == pytest.approx((10 + 20 + 10) / 18 / 1000)


def test_mismatched_shapes_and_nan_in_valid_frames_are_clear_errors(gt):
    with pytest.raises(ValueError, match="same shape"):
        mpjpe(gt[:, :23], gt)
    with pytest.raises(ValueError, match="valid: expected shape"):
        mpjpe(gt, gt, np.ones(3, bool))
    broken = gt.copy()
    broken[2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="frame 2"):
        pa_mpjpe(broken, gt)


def test_foot_sliding_and_depth_drift_against_the_truth(gt):
    """A still truth (feet planted at 3 m): a prediction gliding sideways at 0.5 m/s slides 0.5 m/s where the
    truth's feet stand; one fitted ever deeper drifts; a constant scale or depth offset is not drift."""
    from humove.motion.evaluate import depth_drift, foot_sliding_at_contacts

    frames, fps = 21, 20.0
    truth = np.zeros((frames, 24, 3))
    truth[:, 12] = [0, -0.5, 3]
    truth[:, 0] = [0, 0, 3]
    truth[:, [7, 10]] = [0.1, 0.9, 3]
    truth[:, [8, 11]] = [-0.1, 0.9, 3]
    t = np.arange(frames) / fps
    gliding = truth + 0.5 * t[:, None, None] * np.array([1, 0, 0])
    assert foot_sliding_at_contacts(truth, truth, fps) == pytest.approx(0, abs=1e-9)
    assert foot_sliding_at_contacts(gliding, truth, fps) == pytest.approx(0.5, rel=1e-6)
    assert depth_drift(truth + np.array([0, 0, 0.2]), truth) == pytest.approx(0.0, abs=1e-9)
    assert depth_drift(1.1 * gt, gt) == pytest.approx(0.0, abs=1e-9)  # a walker, fitted 10% too big and far
    deeper = truth + 0.2 * t[:, None, None] * np.array([0, 0, 1])  # 0.2 m deeper after 1 s
    assert depth_drift(deeper, truth) == pytest.approx(0.2, rel=0.05)
    scores = evaluate_joints(deeper, truth, fps=fps)
    assert scores["depth_drift_m"] == pytest.approx(depth_drift(deeper, truth))
    assert "foot_sliding_mps" not in evaluate_joints(deeper, truth)


def test_motion_sets_compare_foot_sliding_and_depth_drift_by_key():
    from dataclasses import replace

    from humove.evaluation import compare_sets, overall

    truth = walking_clip(frames=20)
    drift = (np.arange(20) / truth.fps * 0.3).astype(np.float32)  # 0.3 m/s further away than the truth
    pred = replace(truth, joints=truth.joints + drift[:, None, None] * np.array([0, 0, 1], np.float32))
    (row,) = compare_sets({"a": pred, "b": truth}, {"a": truth})
    assert row.key == "a" and row.frames == 20 and row.mpjpe_mm == pytest.approx(0, abs=1e-3)
    assert row.depth_drift_m == pytest.approx(0.3 * 19 / truth.fps, rel=0.05)
    assert np.isfinite(row.foot_sliding_mps)
    assert overall([row]).depth_drift_m == pytest.approx(row.depth_drift_m)
    assert set(row.as_dict()) >= {"foot_sliding_mps", "depth_drift_m"}
