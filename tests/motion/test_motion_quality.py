"""Raw quality measures respond to what they measure."""

from dataclasses import replace

import numpy as np
import pytest

from humove.motion.quality import bone_length_cv, foot_sliding, jitter, motion_quality
from humove.motion.synthetic import keypoints_from_clip, walking_clip


def test_quality_measures_on_clean_and_damaged_motion():
    clip = walking_clip(frames=60)
    track = keypoints_from_clip(clip)
    clean = motion_quality(clip, track)
    assert set(clean) == {
        "jitter_mps2",
        "bone_length_cv",
        "foot_sliding_m",
        "valid_fraction",
        "reprojection_px",
        "reprojection_rel",
    }
    assert clean["reprojection_px"] < 1e-3  # keypoints are the exact projections
    assert clean["bone_length_cv"] < 1e-5  # one shape: rigid bones
    assert clean["valid_fraction"] == 1.0
    rng = np.random.default_rng(0)
    shaky = replace(
        clip, joints=clip.joints + rng.normal(scale=0.01, size=clip.joints.shape).astype(np.float32)
    )
    assert jitter(shaky.joints, shaky.valid, shaky.fps) > 5 * clean["jitter_mps2"]
    assert bone_length_cv(shaky.joints, shaky.valid) > 0.01
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
