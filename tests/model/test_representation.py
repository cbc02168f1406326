"""Motion features (F, 235) ↔ MotionClip, 6D rotations, normalisation statistics."""

import json

import numpy as np
import pytest
import torch

from humove.motion.representation import (
    MOTION_DIM,
    SLICE_BETAS,
    SLICE_GAMMA,
    SLICE_JOINTS,
    SLICE_THETA,
    SLICE_V,
    TOKENS_PER_FRAME,
    MotionStats,
    features_to_motion,
    motion_to_features,
    windowed_features,
)
from humove.motion.rotations import (
    axis_angle_to_matrix,
    matrix_to_rot6d,
    rot6d_to_matrix,
)
from humove.schemas.motion import MotionClip


def random_axis_angle(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Axis-angle vectors with angles in (0.05, π - 0.05): away from the π sign ambiguity."""
    axis = rng.normal(size=(*shape, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = rng.uniform(0.05, np.pi - 0.05, size=(*shape, 1))
    return (axis * angle).astype(np.float32)


def random_clip(frames: int = 12, seed: int = 0) -> MotionClip:
    rng = np.random.default_rng(seed)
    transl = rng.normal(size=(frames, 3)).astype(np.float32) + np.array([0, 0, 4], np.float32)
    return MotionClip(
        betas=np.repeat(rng.normal(size=(1, 10)), frames, axis=0).astype(np.float32),
        global_orient=random_axis_angle(rng, (frames,)),
        body_pose=random_axis_angle(rng, (frames, 23)),
        transl=transl,
        joints=(transl[:, None, :] + rng.normal(scale=0.5, size=(frames, 24, 3))).astype(np.float32),
        focal=np.full(frames, 1000.0, np.float32),
        image_size=np.array([480, 832], np.int32),
        valid=np.ones(frames, bool),
        fps=16.0,
        body_model="smpl-neutral",
    )


def rotation_matrices(axis_angle: np.ndarray) -> np.ndarray:
    return axis_angle_to_matrix(torch.from_numpy(axis_angle.astype(np.float64))).numpy()


def test_layout_covers_235_values_in_order():
    slices = [SLICE_V, SLICE_JOINTS, SLICE_THETA, SLICE_GAMMA, SLICE_BETAS]
    assert [s.stop - s.start for s in slices] == [3, 72, 144, 6, 10]
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:], strict=False))
    assert slices[0].start == 0 and slices[-1].stop == MOTION_DIM == 235
    assert TOKENS_PER_FRAME == 51


def test_features_hold_the_documented_quantities():
    clip = random_clip()
    features = motion_to_features(clip)
    assert features.shape == (12, 235) and features.dtype == np.float32
    np.testing.assert_array_equal(features[:, SLICE_V], clip.transl)
    np.testing.assert_allclose(
        features[:, SLICE_JOINTS].reshape(12, 24, 3), clip.joints - clip.transl[:, None], atol=1e-6
    )
    np.testing.assert_array_equal(features[:, SLICE_BETAS], clip.betas)
    # γ = global orientation as the first two columns of R (camera frame).
    rot = rotation_matrices(clip.global_orient)
    np.testing.assert_allclose(features[:, SLICE_GAMMA], np.concatenate([rot[:, :, 0], rot[:, :, 1]], 1), atol=1e-6)
    theta = features[:, SLICE_THETA].reshape(12, 24, 6)
    # θ[0]: root rotation relative to the first frame (identity there), θ[1:]: body pose.
    np.testing.assert_allclose(theta[0, 0], [1, 0, 0, 0, 1, 0], atol=1e-6)
    relative = np.einsum("ji,fjk->fik", rot[0], rot)
    np.testing.assert_allclose(rot6d_to_matrix(torch.from_numpy(theta[:, 0].astype(np.float64))).numpy(),
                               relative, atol=1e-5)
    body = rotation_matrices(clip.body_rotations)
    np.testing.assert_allclose(rot6d_to_matrix(torch.from_numpy(theta[:, 1:].astype(np.float64))).numpy(),
                               body, atol=1e-5)


def test_motion_round_trip_is_exact_for_valid_rotations():
    clip = random_clip(frames=20, seed=3)
    back = features_to_motion(motion_to_features(clip), fps=clip.fps, body_model=clip.body_model,
                              image_size=clip.image_size, focal=clip.focal)
    np.testing.assert_array_equal(back.transl, clip.transl)
    np.testing.assert_array_equal(back.betas, clip.betas)
    np.testing.assert_allclose(back.joints, clip.joints, atol=1e-6)
    np.testing.assert_allclose(back.global_orient, clip.global_orient, atol=1e-5)
    np.testing.assert_allclose(back.body_pose, clip.body_pose, atol=1e-5)
    np.testing.assert_allclose(rotation_matrices(back.body_rotations), rotation_matrices(clip.body_rotations),
                               atol=1e-6)
    np.testing.assert_array_equal(back.focal, clip.focal)
    np.testing.assert_array_equal(back.image_size, clip.image_size)
    assert back.fps == clip.fps and back.body_model == clip.body_model and back.valid.all()


def test_features_round_trip_through_motion():
    features = motion_to_features(random_clip(seed=5))
    again = motion_to_features(features_to_motion(features, 16.0, "smpl-neutral", (480, 832), 900.0))
    np.testing.assert_allclose(again, features, atol=1e-5)


def test_6d_inverse_is_exact_on_rotations_and_projects_other_vectors():
    torch.manual_seed(0)
    rotations = axis_angle_to_matrix(torch.randn(500, 3, dtype=torch.float64) * 2)
    assert torch.allclose(rot6d_to_matrix(matrix_to_rot6d(rotations)), rotations, atol=1e-12, rtol=0)
    projected = rot6d_to_matrix(torch.randn(100, 6, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    assert torch.allclose(projected.transpose(1, 2) @ projected, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(projected), torch.ones(100, dtype=torch.float64))


def test_features_to_motion_rejects_bad_input():
    with pytest.raises(ValueError, match="expected \\(F, 235\\)"):
        features_to_motion(np.zeros((4, 234)), 16.0, "smpl", (480, 832), 1000.0)
    bad = motion_to_features(random_clip())
    bad[2, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        features_to_motion(bad, 16.0, "smpl", (480, 832), 1000.0)


def test_motion_stats_normalise_and_serialise():
    arrays = [motion_to_features(random_clip(frames=f, seed=s)) for f, s in ((10, 1), (7, 2))]
    stats = MotionStats.from_features(arrays)
    stacked = np.concatenate(arrays).astype(np.float64)
    np.testing.assert_allclose(stats.mean, stacked.mean(0), atol=1e-5)
    spread = stacked.std(0)
    np.testing.assert_allclose(stats.std, np.where(spread < MotionStats.MIN_STD, 1.0, spread), rtol=1e-4, atol=1e-6)
    assert stats.count == 17
    # A dimension that is constant everywhere is centred but not scaled.
    constant = [np.ones((5, 235), np.float32)]
    assert (MotionStats.from_features(constant).std == 1.0).all()

    normalised = stats.normalize(stacked.astype(np.float32))
    np.testing.assert_allclose(normalised.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(stats.denormalize(normalised), stacked, atol=1e-4)
    as_torch = stats.normalize(torch.from_numpy(stacked.astype(np.float32)))
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), normalised, atol=1e-6)

    restored = MotionStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    np.testing.assert_array_equal(restored.mean, stats.mean)
    np.testing.assert_array_equal(restored.std, stats.std)
    assert restored.count == stats.count


def test_motion_stats_reject_bad_input():
    with pytest.raises(ValueError, match="array 1 has shape"):
        MotionStats.from_features([np.zeros((3, 235)), np.zeros((3, 200))])
    with pytest.raises(ValueError, match="no frames"):
        MotionStats.from_features([])
    with pytest.raises(ValueError, match="std has shape"):
        MotionStats(mean=np.zeros(235), std=np.ones(3))


def test_windowed_features_of_many_clips_equal_each_window_converted_alone():
    """Clips of different lengths and rates converted together: each window's features are those of the window
    cut out as its own clip (θ[0] relative to the window's first frame); tiny angles use the first-order form."""
    clips = [random_clip(frames=frames, seed=seed) for frames, seed in ((7, 1), (20, 2), (3, 3))]
    clips[1].fps = 8.0
    clips[0].body_pose[2, :3] = [1e-8, 0.0, -2e-8]  # below the small-angle cut
    clips[2].valid[1] = False
    features, valid = windowed_features(clips, window_seconds=0.25)  # windows of 5 frames at 16 fps, 3 at 8 fps
    expected, expected_valid = [], []
    for clip, length in zip(clips, (5, 3, 5), strict=True):
        for start in range(0, clip.num_frames, length):
            window = slice(start, start + length)
            part = MotionClip(betas=clip.betas[window], global_orient=clip.global_orient[window],
                              body_pose=clip.body_pose[window], transl=clip.transl[window],
                              joints=clip.joints[window], focal=clip.focal[window], image_size=clip.image_size,
                              valid=clip.valid[window], fps=clip.fps, body_model=clip.body_model)
            alone = motion_to_features(part)
            np.testing.assert_allclose(alone[:, SLICE_THETA][0, :6], [1, 0, 0, 0, 1, 0], atol=1e-6)
            expected.append(alone)
            expected_valid.append(part.valid)
    np.testing.assert_array_equal(features, np.concatenate(expected))
    np.testing.assert_array_equal(valid, np.concatenate(expected_valid))
    # The NumPy rotations agree with the torch ones the model uses.
    angles = np.concatenate([c.body_rotations for c in clips]).astype(np.float64)
    theta = features[:, SLICE_THETA].reshape(-1, 24, 6)[:, 1:]
    np.testing.assert_allclose(theta, matrix_to_rot6d(torch.from_numpy(rotation_matrices(angles))).numpy(),
                               atol=1e-6)
