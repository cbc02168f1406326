"""Motion normalisation statistics: all valid frames of all clips of all shard folders, stored moments merged
exactly, E[z²] per feature group."""

import json

import numpy as np
import pytest
from trainer_fixtures import publish_samples, sample_metadata, synthetic_motion, write_paired_shards

from humove.model.data import DataConfig, compute_folder_moments, dataset_moments, motion_stats_for
from humove.motion.representation import (
    MOTION_DIM,
    SLICE_THETA,
    SLICE_V,
    FeatureMoments,
    MotionStats,
    clip_moments,
    normalised_second_moments,
)
from humove.schemas.motion import motion_to_bytes


def test_merged_moments_equal_the_moments_of_all_frames():
    rng = np.random.default_rng(0)
    parts = [rng.normal(loc=i, scale=1 + i, size=(n, MOTION_DIM)) for i, n in enumerate((5, 17, 1, 40))]
    merged = FeatureMoments.merge_all(FeatureMoments.of(p) for p in parts)
    every = np.concatenate(parts)
    assert merged.count == len(every)
    np.testing.assert_allclose(merged.mean, every.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.variance, every.var(0), rtol=1e-10)
    restored = FeatureMoments.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert np.array_equal(restored.mean, merged.mean) and np.array_equal(restored.m2, merged.m2)  # exact in JSON
    valid = rng.random(len(every)) > 0.3
    np.testing.assert_allclose(FeatureMoments.of(every, valid).mean, every[valid].mean(0), rtol=1e-12)


def set_feature_stats(folder, value):
    """Replace `feature_stats` in a dataset folder's dataset.json (None: nothing stored)."""
    path = folder / "dataset.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    info["feature_stats"] = value
    path.write_text(json.dumps(info))


def test_statistics_use_every_valid_frame_of_every_clip(tmp_path):
    """Long clips (not their first window only), invalid frames left out: v (= transl) is checked by hand."""
    clips = [synthetic_motion(90, 30.0, seed=i, invalid=(3, 4, 50) if i == 0 else ()) for i in range(2)]
    clips[0].transl[[3, 4, 50]] = 100.0  # an invalid fit far away: must not move the statistics
    (shard,) = publish_samples(tmp_path, [({"__key__": f"clip{i:04d}", "motion.npz": motion_to_bytes(clip)},
                                           sample_metadata(f"clip{i:04d}", 90, 30.0)) for i, clip in enumerate(clips)])
    stats = compute_folder_moments([shard], window_seconds=0.5).to_stats()
    transl = np.concatenate([clips[0].transl[clips[0].valid], clips[1].transl])
    assert stats.count == len(transl) == 177
    np.testing.assert_allclose(stats.mean[SLICE_V], transl.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.std[SLICE_V][:2], transl.std(0)[:2], rtol=1e-4)  # z is constant: std 1
    assert stats.std[SLICE_V][2] == 1.0


def test_stored_moments_of_several_folders_are_merged_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr("humove.model.data._MOMENTS_FRAMES", 50)  # several conversion batches per folder
    write_paired_shards(tmp_path / "a", num_samples=2, frames=30, motion_only=True, stats=True)
    write_paired_shards(tmp_path / "b", num_samples=3, frames=40, motion_only=True, stats=True)
    config = DataConfig(shards=[str(tmp_path / "a"), str(tmp_path / "b")], num_frames=9, fps=16, motion_only=True)
    for name in "ab":
        set_feature_stats(tmp_path / name, None)
    computed = dataset_moments(config)  # nothing stored: computed from both folders
    window = (9 - 1) / 16
    by_hand = FeatureMoments.merge_all(
        [clip_moments(synthetic_motion(30, 30, seed=i), window) for i in range(2)]
        + [clip_moments(synthetic_motion(40, 30, seed=i), window) for i in range(3)])
    assert computed.count == 2 * 30 + 3 * 40
    np.testing.assert_allclose(computed.mean, by_hand.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(computed.m2, by_hand.m2, rtol=1e-9, atol=1e-12)

    # Stored per-folder moments are used as they are (here deliberately not the folders' own) and merged.
    rng = np.random.default_rng(1)
    stored = [FeatureMoments.of(rng.normal(loc=k, size=(n, MOTION_DIM))) for k, n in ((1, 50), (-2, 70))]
    for name, moments in zip("ab", stored, strict=True):
        set_feature_stats(tmp_path / name, moments.to_stats().to_dict())
    stats = motion_stats_for(config)
    expected = stored[0].merge(stored[1]).to_stats()
    assert stats.count == 120
    np.testing.assert_array_equal(stats.mean, expected.mean)
    np.testing.assert_array_equal(stats.std, expected.std)


def test_normalised_second_moments_per_feature_group():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(200, MOTION_DIM))
    data = 3.0 * rng.normal(size=(300, MOTION_DIM)) + 0.5
    stats = MotionStats.from_features([reference])
    z2 = normalised_second_moments(stats, FeatureMoments.of(data))
    z = (data - stats.mean.astype(np.float64)) / stats.std.astype(np.float64)
    assert set(z2) == {"v", "η", "θ", "γ", "β"}
    assert z2["θ"] == pytest.approx(np.square(z[:, SLICE_THETA]).mean(), rel=1e-5)
    own = normalised_second_moments(stats, stats.moments)
    assert all(value == pytest.approx(1.0, rel=1e-5) for value in own.values())


def test_old_stored_statistics_without_moments_still_load():
    old = {"dim": MOTION_DIM, "count": 5, "mean": [0.0] * MOTION_DIM, "std": [1.0] * MOTION_DIM}
    stats = MotionStats.from_dict(old)
    assert stats.moments is None and stats.count == 5


def test_statistics_far_from_the_data_are_named_and_can_be_recomputed(tmp_path, caplog):
    """Phase 2 inherits phase 1's statistics: a feature group whose E[z²] on this data leaves [0.25, 4] is named
    in a warning; `recompute_motion_stats` normalises with the shards' own statistics instead."""
    import logging

    from humove.model.train import TrainConfig, load_motion_stats
    from humove.motion.representation import SLICE_GAMMA

    write_paired_shards(tmp_path / "shards", num_samples=2, frames=30, motion_only=True, stats=True)
    data = DataConfig(shards=[str(tmp_path / "shards")], num_frames=9, fps=16, motion_only=True)
    own = motion_stats_for(data)
    inherited = MotionStats(mean=own.mean.copy(), std=own.std.copy(), count=own.count)
    inherited.std[SLICE_THETA] /= 3  # θ of this data 3× wider than the statistics: E[z²] ≈ 9
    inherited.std[SLICE_GAMMA] *= 3  # γ 3× narrower: ≈ 1/9
    phase1 = tmp_path / "phase1"  # what init_checkpoint reads of a phase-1 checkpoint for the statistics
    phase1.mkdir()
    (phase1 / "state.json").write_text("{}")
    (phase1 / "motion_stats.json").write_text(json.dumps(inherited.to_dict()))
    config = TrainConfig(phase=2, init_checkpoint=str(phase1), data=data)

    with caplog.at_level(logging.INFO, logger="humove.train"):
        stats = load_motion_stats(config, None)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    named = warning.split("E[z²] of ")[1].split(" outside")[0]
    assert [part.split()[0] for part in named.split(", ")] == ["θ", "γ"], warning
    assert str(phase1) in warning and "recompute_motion_stats: true" in warning
    np.testing.assert_array_equal(stats.std, inherited.std)

    caplog.clear()
    config.recompute_motion_stats = True
    with caplog.at_level(logging.INFO, logger="humove.train"):
        stats = load_motion_stats(config, None)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    np.testing.assert_array_equal(stats.mean, own.mean)
    np.testing.assert_array_equal(stats.std, own.std)
