"""Raw quality measures respond to what they measure."""

from dataclasses import replace

import numpy as np
import pytest

from humove.motion.quality import foot_sliding, frame_agreement, jitter, limb_length_error, motion_quality
from humove.motion.synthetic import keypoints_from_clip, walking_clip


def test_quality_measures_on_clean_and_damaged_motion():
    clip = walking_clip(frames=60)
    track = keypoints_from_clip(clip)
    clean = motion_quality(clip, track)
    assert set(clean) == {
        "jitter_mps2",
        "foot_sliding_m",
        "valid_fraction",
        "reprojection_px",
        "reprojection_rel",
        "agreement_pck",
        "limb_length_error",
    }
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


def test_foot_sliding_sees_a_dragged_planted_foot():
    frames = 30
    joints = np.zeros((frames, 24, 3), np.float32)
    joints[:, 12] = [0, -0.5, 0]  # neck above the pelvis (camera y down): up = −y
    joints[:, [7, 10]] = [0.1, 0.9, 0]  # left foot planted on the floor
    joints[:, [8, 11]] = [-0.1, 0.6, 0]  # right foot lifted
    valid = np.ones(frames, bool)
    assert foot_sliding(joints, valid) == pytest.approx(0.0, abs=1e-7)
    joints[:, [7, 10], 0] += np.linspace(0, 0.29, frames)[:, None]  # planted foot slides 1 cm per frame
    assert foot_sliding(joints, valid) == pytest.approx(0.01, rel=1e-3)
    valid[:] = False
    assert np.isnan(foot_sliding(joints, valid))


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
