"""Shard reader: aligned video/motion windows, splitting, exact resume, motion-only shards, encoders' layout."""

import io
import json
import logging

import numpy as np
import pytest
import torch
import webdataset as wds
from trainer_fixtures import mp4_bytes, publish_samples, sample_metadata, synthetic_motion, write_paired_shards

from humove.model.data import DataConfig, DataPosition, ShardDataError, make_loader, resample_motion
from humove.model.encoders import StandInTextEncoder, StandInVideoVAE
from humove.motion.representation import SLICE_V
from humove.schemas.motion import motion_to_bytes


def small_config(shards, **kw):
    values = dict(shards=[str(shards)], num_frames=9, fps=16, height=64, width=64, batch_size=1, num_workers=0,
                  shuffle_buffer=4)
    values.update(kw)
    return DataConfig(**values)


def take(loader, count):
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def test_video_and_motion_windows_are_aligned(tmp_path):
    """Frame i of the source video is grey level 4·i and the motion walks x = 0.5·t, so both tell the time."""
    fps, frames = 30, 48
    grey = np.repeat((4 * np.arange(frames, dtype=np.uint8))[:, None, None, None], 3, axis=3)
    video = np.broadcast_to(grey, (frames, 96, 128, 3)).copy()
    publish_samples(tmp_path, [
        ({"__key__": f"clip{index}", "mp4": mp4_bytes(video, fps),
          "motion.npz": motion_to_bytes(synthetic_motion(frames, fps, seed=index))},
         sample_metadata(f"clip{index}", frames, fps, caption="x", size=(128, 96)))
        for index in range(4)])
    config = small_config(tmp_path, shuffle_buffer=1)
    loader, _ = make_loader(config, max_epochs=1)
    starts = []
    for batch in loader:
        assert batch["video"].shape == (1, 9, 64, 64, 3) and batch["video"].dtype == torch.uint8
        assert batch["motion"].shape == (1, 9, 235)
        times = 2 * batch["motion"][0, :, SLICE_V][:, 0].double()  # transl x = 0.5 t
        # 16 fps steps, each snapped to a 30 fps source frame: a step is off by at most one source frame.
        assert torch.allclose(times.diff(), torch.full((8,), 1 / 16, dtype=torch.float64), atol=1 / fps + 1e-5)
        source_index = np.rint(batch["video"][0].float().mean(dim=(1, 2, 3)).numpy() / 4)
        # The motion is sampled at exactly the source frames the video shows.
        assert np.allclose(times.numpy() * fps, source_index, atol=1e-4)
        starts.append(times[0].item())
    assert len(starts) == 4 and max(starts) > 0  # random window starts, inside the clip
    assert all(0 <= s <= (frames - 1) / fps - 0.5 + 1e-6 for s in starts)


def test_resample_motion_is_exact_at_source_frames_and_slerps_between():
    clip = synthetic_motion(10, 10.0, invalid=(4,))
    same = resample_motion(clip, np.arange(10) / 10.0)
    assert np.allclose(same.body_pose, clip.body_pose, atol=1e-5) and np.allclose(same.transl, clip.transl)
    half = resample_motion(clip, np.array([0.05, 0.35, 0.45]))
    assert np.allclose(half.transl[0], (clip.transl[0] + clip.transl[1]) / 2, atol=1e-6)
    assert half.valid.tolist() == [True, False, False]  # a frame is valid only if both neighbours are
    from scipy.spatial.transform import Rotation

    a, b = Rotation.from_rotvec(clip.body_rotations[0, 5]), Rotation.from_rotvec(clip.body_rotations[1, 5])
    middle = Rotation.from_rotvec(half.body_rotations[0, 5])
    assert np.isclose((a.inv() * middle).magnitude(), (middle.inv() * b).magnitude(), atol=1e-5)


@pytest.mark.parametrize("num_shards", [2, 5])
def test_each_sample_once_per_epoch_over_ranks_and_workers(tmp_path, num_shards):
    write_paired_shards(tmp_path, num_samples=num_shards * 2, per_shard=2, motion_only=True)
    seen = []
    for rank in range(2):
        loader, _ = make_loader(small_config(tmp_path, motion_only=True, num_workers=2), rank=rank, world_size=2,
                                max_epochs=1)
        seen += [key for batch in loader for key in batch["keys"]]
    assert sorted(seen) == [f"clip{i:04d}" for i in range(num_shards * 2)]


def test_resume_continues_the_stream_exactly_with_workers(tmp_path):
    write_paired_shards(tmp_path, num_samples=8, per_shard=2, motion_only=True)
    config = small_config(tmp_path, motion_only=True, num_workers=2, batch_size=2)
    reference = take(make_loader(config)[0], 7)
    loader, position = make_loader(config)
    for batch in take(loader, 3):
        position.update(batch)
    saved = json.loads(json.dumps(position.to_dict()))  # as stored in a checkpoint
    resumed_loader, resumed_position = make_loader(config, resume=saved)
    resumed = take(resumed_loader, 4)
    for expected, got in zip(reference[3:], resumed, strict=True):
        assert got["keys"] == expected["keys"]
        assert torch.equal(got["motion"], expected["motion"])
    assert DataPosition.from_dict(saved).batches == 3 and resumed_position.batches == 3
    with pytest.raises(ValueError, match="same number of data workers"):
        take(make_loader(small_config(tmp_path, motion_only=True, num_workers=0), resume=saved)[0], 1)


def test_unusable_samples_are_skipped_or_named(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="humove.model.data")
    publish_samples(tmp_path, [
        ({"__key__": "short", "motion.npz": motion_to_bytes(synthetic_motion(5, 30))},
         sample_metadata("short", 5, 30, caption="too short")),
        ({"__key__": "good", "motion.npz": motion_to_bytes(synthetic_motion(30, 30))},
         sample_metadata("good", 30, 30, caption="fine")),
        ({"__key__": "broken", "motion.npz": b"not an npz"}, sample_metadata("broken", 30, 30)),
    ])
    batches = []
    with pytest.raises(ShardDataError, match="broken"):
        for batch in make_loader(small_config(tmp_path, motion_only=True, shuffle_buffer=1), max_epochs=1)[0]:
            batches.append(batch)
    assert [b["keys"] for b in batches] == [["good"]]
    assert "short" in caplog.text


def test_cached_latents_and_text_replace_decoding(tmp_path):
    latents = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)
    text = np.ones((5, 32), np.float32)

    def npy(array):
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    publish_samples(tmp_path, [
        ({"__key__": "cached", "motion.npz": motion_to_bytes(synthetic_motion(30, 30)),
          "latents.npy": npy(latents), "text.npy": npy(text)},
         sample_metadata("cached", 30, 30, caption="c", size=(128, 96)))])
    batch = take(make_loader(small_config(tmp_path))[0], 1)[0]
    assert "video" not in batch and torch.equal(batch["latents"][0], torch.from_numpy(latents))
    assert torch.equal(batch["text"][0], torch.from_numpy(text))


def test_standin_vae_has_wan_layout_and_inverts_block_constant_videos():
    vae = StandInVideoVAE()
    assert vae.backend == "standin-vae"
    g = torch.Generator().manual_seed(0)
    # constant over each temporal group (1, 4, 4) and over 4×4 pixel blocks: exactly what the stand-in keeps
    coarse = torch.rand(1, 3, 3, 4, 4, generator=g) * 2 - 1
    video = coarse.repeat_interleave(torch.tensor([1, 4, 4]), dim=2).repeat_interleave(4, 3).repeat_interleave(4, 4)
    latents = vae.encode(video)
    assert latents.shape == (1, 16, 3, 2, 2)
    assert torch.allclose(vae.decode(latents), video, atol=1e-5)
    assert vae.encode(torch.zeros(2, 3, 81, 16, 32)).shape == (2, 16, 21, 2, 4)  # 81 frames → 21 latents
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(torch.zeros(1, 3, 8, 64, 64))


def test_standin_text_encoder_is_deterministic_and_zero_padded():
    encoder = StandInTextEncoder(text_dim=32, text_len=16)
    a, b = encoder.encode(["a person jumps", "a person jumps"]), encoder.encode(["a person runs"])
    assert a.shape == (2, 16, 32) and torch.equal(a[0], a[1])
    assert torch.count_nonzero(a[0, 3:]) == 0 and torch.count_nonzero(a[0, :3]) > 0
    assert torch.equal(a[0, :2], b[0, :2]) and not torch.equal(a[0, 2], b[0, 2])


def test_ingest_motion_writes_camera_frame_motion_only_shards(tmp_path):
    from humove.model.ingest_motion import WORLD_TO_CAMERA, MotionIngestError, ingest_motion
    from humove.motion.body_model import clip_joints, load_body_model
    from humove.schemas.motion import load_motion

    rng = np.random.default_rng(0)
    frames = 90
    poses = 0.2 * rng.normal(size=(frames, 156))
    poses[:, :3] = [np.pi / 2, 0.0, 0.3]
    trans = np.stack([np.linspace(0, 1, frames), np.linspace(0, 2, frames), np.full(frames, 0.9)], axis=1)
    source = tmp_path / "amass" / "subject1"
    source.mkdir(parents=True)
    np.savez(source / "jump_poses.npz", poses=poses, trans=trans, betas=rng.normal(size=16),
             mocap_framerate=np.array(60.0))
    np.savez(source / "shape.npz", betas=rng.normal(size=16))  # AMASS subject file: no poses, skipped
    captions = tmp_path / "texts"
    captions.mkdir()
    (captions / "jump_poses.txt").write_text("a person jumps forward#a/DET person/NOUN#0.0#0.0\n")

    summary = ingest_motion(tmp_path / "amass", tmp_path / "shards", body_model="standin-smpl", fps=60.0,
                            captions_dir=captions, stats_frames=9)
    assert summary["samples"] == 1 and summary["skipped"] == 1
    info = json.loads((tmp_path / "shards" / "dataset.json").read_text())
    assert len(info["feature_stats"]["mean"]) == 235

    raw = next(iter(wds.WebDataset(str(tmp_path / "shards" / "humove-train-000000.tar"), shardshuffle=False)))
    assert raw["__key__"].startswith("subject1_jump_poses-")
    assert json.loads(raw["json"])["caption"] == "a person jumps forward"
    clip = load_motion(raw["motion.npz"])
    assert clip.body_model == "standin-smpl" and clip.num_frames == frames
    # A rigid change of frame: camera joints = R · world joints + one constant offset; pelvis starts 4 m ahead.
    model = load_body_model("standin-smpl")
    body_pose = np.concatenate([poses[:, 3:66], np.zeros((frames, 6))], axis=1).reshape(frames, 23, 3)
    world = clip_joints(model, np.tile(clip.betas[:1], (frames, 1)), poses[:, :3], body_pose, trans)
    offset = clip.joints - (WORLD_TO_CAMERA @ world.reshape(-1, 3).T).T.reshape(frames, 24, 3)
    assert np.abs(offset - offset[:1, :1]).max() < 1e-4
    assert np.allclose(clip.joints[0, 0], [0.0, 0.0, 4.0], atol=1e-4)

    batch = take(make_loader(small_config(tmp_path / "shards", motion_only=True))[0], 1)[0]
    assert batch["keys"] == [raw["__key__"]] and batch["motion"].shape == (1, 9, 235)

    np.savez(source / "bad.npz", poses=np.zeros((4, 10)), trans=np.zeros((4, 3)), mocap_framerate=30.0)
    summary = ingest_motion(tmp_path / "amass", tmp_path / "shards2", body_model="standin-smpl")
    assert summary["samples"] == 1 and "poses" in dict(
        (s["file"], s["reason"]) for s in summary["skipped_files"])["subject1/bad.npz"]
    with pytest.raises(MotionIngestError, match="bad.npz.*poses"):
        ingest_motion(source / "bad.npz", tmp_path / "shards3", body_model="standin-smpl")


def test_cached_encodings_match_encoding_on_the_fly(tmp_path):
    from humove.model.cache import cache_encodings

    write_paired_shards(tmp_path / "raw", num_samples=2, per_shard=2, stats=True)
    config = small_config(tmp_path / "raw", random_window=False, batch_size=2)
    vae, text_encoder = StandInVideoVAE(), StandInTextEncoder(text_dim=32, text_len=16)
    summary = cache_encodings(config, tmp_path / "cached", vae, text_encoder)
    assert summary["cached"] == 2 and summary["vae"] == "standin-vae"
    assert (tmp_path / "cached" / "dataset.json").exists()

    fresh = take(make_loader(config)[0], 1)[0]
    cached_config = small_config(tmp_path / "cached", random_window=False, batch_size=2)
    cached = take(make_loader(cached_config)[0], 1)[0]
    assert cached["keys"] == fresh["keys"] and "video" not in cached
    from humove.model.data import pixels_to_video

    assert torch.allclose(cached["latents"], vae.encode(pixels_to_video(fresh["video"])), atol=2e-3)
    on_the_fly = text_encoder.encode(fresh["captions"])
    assert torch.allclose(cached["text"], on_the_fly[:, : cached["text"].shape[1]], atol=2e-3)
    assert torch.count_nonzero(on_the_fly[:, cached["text"].shape[1]:]) == 0  # only padding was left out
    assert torch.equal(cached["motion"], fresh["motion"])


def test_real_encoder_loaders_run_small_random_models_of_the_same_architecture(tmp_path):
    """The Wan VAE / umT5 code paths with tiny random-weight models saved in the diffusers / transformers layout
    (the real weights are multi-GB and never downloaded here)."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from humove.model.encoders import load_text_encoder, load_video_vae

    torch.manual_seed(0)
    pipeline = tmp_path / "Wan-Diffusers"  # the root of a diffusers pipeline folder: vae/, text_encoder/, tokenizer/
    diffusers.AutoencoderKLWan(base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1).save_pretrained(pipeline / "vae")
    words = ["<pad>", "</s>", "<unk>", "a", "person", "jumps"]
    vocabulary = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    vocabulary.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=vocabulary, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(pipeline / "tokenizer")
    config = transformers.UMT5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    transformers.UMT5EncoderModel(config).save_pretrained(pipeline / "text_encoder")

    vae = load_video_vae(str(pipeline), "cpu")
    assert vae.backend == "wan-vae"
    latents = vae.encode(torch.rand(1, 3, 9, 32, 32) * 2 - 1)
    assert latents.shape == (1, 16, 3, 4, 4)
    assert vae.decode(latents).shape == (1, 3, 9, 32, 32)
    encoder = load_text_encoder(str(pipeline), text_dim=32, text_len=8, device="cpu")
    embeddings = encoder.encode(["a person jumps", "a person"])
    assert encoder.backend == "umt5" and embeddings.shape == (2, 8, 32)
    assert (embeddings.abs().sum(-1) > 0).sum(1).tolist() == [3, 2]  # zero after each prompt's tokens
    with pytest.raises(ValueError, match="width 32"):
        load_text_encoder(str(pipeline), text_dim=4096, text_len=8, device="cpu")


def test_normalisation_statistics_come_from_feature_stats_or_are_computed(tmp_path, caplog):
    """The shard stage's dataset.json holds descriptive per-key `motion_stats`, not the trainer's 235-feature
    statistics: the trainer must compute its own from such shards, and use `feature_stats` when present."""
    from humove.model.data import motion_stats_for
    from humove.motion.representation import MOTION_DIM, MotionStats

    write_paired_shards(tmp_path / "pipeline", num_samples=4, per_shard=2, motion_only=True)
    manifest_path = tmp_path / "pipeline" / "dataset.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "motion_stats": {
        "split": "train", "clips": 4, "frames": 96,
        "keys": {"transl": {"shape": [3], "mean": [0, 0, 0], "std": [1, 1, 1]}}}}))
    config = DataConfig(shards=[str(tmp_path / "pipeline")], num_frames=9, fps=16, motion_only=True)
    with caplog.at_level(logging.WARNING):
        computed = motion_stats_for(config)
    assert computed.mean.shape == (MOTION_DIM,) and "computing motion normalisation" in caplog.text
    stored = MotionStats(mean=np.arange(MOTION_DIM, dtype=np.float32), std=np.ones(MOTION_DIM, np.float32))
    manifest_path.write_text(json.dumps({**manifest, "feature_stats": stored.to_dict()}))
    np.testing.assert_array_equal(motion_stats_for(config).mean, stored.mean)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_shard_edited_in_place_is_refused_when_its_last_byte_is_read(tmp_path, num_workers):
    """Issue 22 item 5: one caption byte changed, same size: the shard's BLAKE3 is checked while it streams."""
    from pathlib import Path

    from hostile.trainer.corpus import tamper_same_size

    shards = write_paired_shards(tmp_path, num_samples=4, per_shard=2, motion_only=True)
    tamper_same_size(Path(shards[1]), b"walks", b"talks")  # clip0002's caption, in the second shard
    keys = []
    loader = make_loader(small_config(tmp_path, motion_only=True, shuffle_buffer=1, num_workers=num_workers),
                         max_epochs=1)[0]
    with pytest.raises(ShardDataError) as error:
        for batch in loader:
            keys += batch["keys"]
    message = str(error.value)
    assert message.startswith(f"shard {shards[1]} does not match its blake3 in dataset.json"), message
    assert "\n" not in message
    assert "clip0003" not in keys  # the shard's last sample is never handed out


def test_cached_latent_shards_are_verified_too(tmp_path):
    from pathlib import Path

    from hostile.trainer.corpus import tamper_same_size

    from humove.model.cache import cache_encodings

    raw = write_paired_shards(tmp_path / "raw", num_samples=2, per_shard=2)
    vae, text_encoder = StandInVideoVAE(), StandInTextEncoder(text_dim=32, text_len=16)
    config = small_config(tmp_path / "raw", batch_size=2)
    cached = tmp_path / "cached"
    cache_encodings(config, cached, vae, text_encoder)
    (shard,) = sorted(cached.glob("*.tar"))
    tamper_same_size(shard, b"walks", b"talks")
    with pytest.raises(ShardDataError, match=rf"shard {shard} does not match its blake3"):
        take(make_loader(small_config(cached, batch_size=2), max_epochs=1)[0], 1)

    tamper_same_size(Path(raw[0]), b"walks", b"talks")  # and cache-encodings checks what it reads
    with pytest.raises(ShardDataError, match=rf"shard {raw[0]} does not match its blake3"):
        cache_encodings(config, tmp_path / "cached2", vae, text_encoder)
    assert not (tmp_path / "cached2" / "dataset.json").exists()


def test_shards_of_datasets_that_recorded_sha256_stream_and_verify_by_it(tmp_path):
    import hashlib
    from pathlib import Path

    from hostile.trainer.corpus import tamper_same_size

    shards = write_paired_shards(tmp_path, num_samples=2, per_shard=2, motion_only=True)
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    for shard in manifest["shards"]:  # as builds before 2026-12-03 recorded them
        del shard["blake3"]
        shard["sha256"] = hashlib.sha256((tmp_path / shard["name"]).read_bytes()).hexdigest()
    (tmp_path / "dataset.json").write_text(json.dumps(manifest))
    config = small_config(tmp_path, motion_only=True, batch_size=2)
    assert take(make_loader(config, max_epochs=1)[0], 1)[0]["keys"] != []
    tamper_same_size(Path(shards[0]), b"walks", b"talks")
    with pytest.raises(ShardDataError, match=rf"shard {shards[0]} does not match its sha256"):
        take(make_loader(config, max_epochs=1)[0], 1)
