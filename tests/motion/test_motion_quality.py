"""Raw quality measures respond to what they measure."""

from dataclasses import replace

import numpy as np
import pytest

from humove.motion.quality import (
    depth_drift,
    foot_contacts,
    foot_sliding,
    frame_agreement,
    jitter,
    limb_length_error,
    max_abs_beta,
    motion_quality,
)
from humove.motion.synthetic import keypoints_from_clip, walking_clip


def test_quality_measures_on_clean_and_damaged_motion():
    clip = walking_clip(frames=60)
    track = keypoints_from_clip(clip)
    clean = motion_quality(clip, track)
    assert set(clean) == {
        "jitter_mps2",
        "foot_sliding_mps",
        "max_abs_beta",
        "valid_fraction",
        "reprojection_px",
        "reprojection_rel",
        "agreement_pck",
        "limb_length_error",
        "depth_drift_mps",
    }
    assert clean["max_abs_beta"] == pytest.approx(0.8)  # walking_clip's β = (0.8, −0.4, 0, …)
    assert clean["depth_drift_mps"] < 0.01  # it walks away at 0.2 m/s, and shrinks in the image accordingly
    assert clean["reprojection_px"] < 1e-3  # keypoints are the exact projections
    assert clean["agreement_pck"] == 1.0 and clean["limb_length_error"] < 1e-4
    assert clean["valid_fraction"] == 1.0
    rng = np.random.default_rng(0)
    shaky = replace(
        clip, joints=clip.joints + rng.normal(scale=0.01, size=clip.joints.shape).astype(np.float32)
    )
    assert jitter(shaky.joints, shaky.valid, shaky.fps) > 5 * clean["jitter_mps2"]
    moved = replace(track, xy=track.xy + 10.0)
    assert motion_quality(clip, moved)["reprojection_px"] == pytest.approx(np.sqrt(200), rel=1e-3)


def _standing(frames: int) -> np.ndarray:
    """(F, 24, 3) joints, camera frame (y down): neck above the pelvis, both feet on the floor."""
    joints = np.zeros((frames, 24, 3), np.float32)
    joints[:, 12] = [0, -0.5, 3]
    joints[:, 0] = [0, 0, 3]
    joints[:, [7, 10]] = [0.1, 0.9, 3]
    joints[:, [8, 11]] = [-0.1, 0.9, 3]
    return joints


def test_foot_sliding_is_a_speed_whatever_the_frame_rate():
    frames = 31
    joints = _standing(frames)
    valid = np.ones(frames, bool)
    assert foot_sliding(joints, valid, fps=30.0) == pytest.approx(0.0, abs=1e-7)
    joints[:, [7, 10], 0] += np.linspace(0, 0.2, frames)[:, None]  # the left foot drags at 0.2 m/s at 30 fps
    assert foot_sliding(joints, valid, fps=30.0) == pytest.approx(0.1, rel=1e-3)  # the right one stands still
    # The same motion at 15 fps: twice the step per frame, the same speed.
    assert foot_sliding(joints[::2], valid[::2], fps=15.0) == pytest.approx(0.1, rel=1e-3)
    valid[:] = False
    assert np.isnan(foot_sliding(joints, valid, fps=30.0))


def test_a_skating_standing_body_counts_and_a_swing_foot_skimming_the_floor_does_not():
    frames = 21
    # A standing body gliding sideways at 1 m/s: both feet on the floor, both sliding. Of two feet near the
    # floor the slower carries the body, however fast it moves.
    skating = _standing(frames) + np.linspace(0, 0.05 * (frames - 1), frames)[:, None, None] * [1, 0, 0]
    assert foot_sliding(skating, np.ones(frames, bool), fps=20.0) == pytest.approx(1.0, rel=1e-3)
    # A walker: the right foot planted, the left swinging forward 2 cm above the floor at 2 m/s (first it was
    # lifted higher, so the floor is the planted foot's height).
    walker = _standing(frames)
    walker[:, [7, 10], 2] += np.linspace(0, 0.1 * (frames - 1), frames)[:, None]
    walker[:, [7, 10], 1] -= 0.02
    walker[0, [7, 10], 1] -= 0.2
    contact, speed = foot_contacts(walker, np.ones(frames, bool), fps=20.0)
    assert contact[:, 1].all() and not contact[:, 0].any()
    assert speed[:, 0] == pytest.approx(2.0, rel=1e-3)
    assert foot_sliding(walker, np.ones(frames, bool), fps=20.0) == pytest.approx(0.0, abs=1e-6)


def test_depth_drift_is_the_depth_change_the_image_does_not_show():
    clip = walking_clip(frames=45)  # 1.5 s walking away at 0.2 m/s: the keypoints shrink accordingly
    track = keypoints_from_clip(clip)
    assert depth_drift(clip, track) < 0.01
    # The same keypoints, but the fit drifts 0.3 m/s further away (a still person fitted ever deeper).
    drift = np.arange(45) / clip.fps * 0.3
    drifted = replace(clip, joints=clip.joints + drift[:, None, None] * np.array([0, 0, 1], np.float32))
    assert depth_drift(drifted, track) == pytest.approx(0.3, rel=0.1)
    assert np.isnan(depth_drift(replace(clip, valid=np.zeros(45, bool)), track))


def test_max_abs_beta_reads_the_valid_frames():
    clip = walking_clip(frames=4)
    betas = clip.betas.copy()
    betas[:, 3] = -4.1
    betas[0, 3] = -9.0
    valid = np.array([False, True, True, True])
    assert max_abs_beta(replace(clip, betas=betas, valid=valid)) == pytest.approx(4.1)


def test_agreement_and_limb_lengths_fail_on_a_body_that_does_not_match():
    """Keypoints of another body (arms and legs 40% longer, as on a cartoon) are not explained by the fit:
    limb lengths disagree and the per-frame PCK drops, while the true keypoints agree on every frame."""
    clip = walking_clip(frames=30)
    track = keypoints_from_clip(clip)
    pck, count = frame_agreement(clip, track)
    assert (pck == 1.0).all() and (count > 6).all()
    kp, smpl, _ = track.layout.smpl_indices()
    limb_points = {18: 16, 20: 18, 19: 17, 21: 19, 4: 1, 7: 4, 5: 2, 8: 5}  # child → parent
    column = {int(j): int(i) for i, j in zip(kp, smpl, strict=True)}
    stretched = track.xy.copy()
    for child in (18, 19, 4, 5, 20, 21, 7, 8):  # parents first, so children follow their moved parents
        parent = limb_points[child]
        c, p = column[child], column[parent]
        stretched[:, c] = stretched[:, p] + 1.4 * (track.xy[:, c] - track.xy[:, p]) + (stretched[:, p] - track.xy[:, p])
    cartoon = replace(track, xy=stretched)
    assert limb_length_error(clip, cartoon) > 0.25
    assert np.nanmean(frame_agreement(clip, cartoon)[0]) < 0.8
