"""The VAE layout comes from the model config: Wan2.1's (16 channels, stride (4, 8, 8)) and Wan2.2 TI2V-5B's
(48 channels, stride (4, 16, 16)) both train, cache and sample through the stand-in VAE."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import webdataset as wds
from trainer_fixtures import TINY_OVERRIDES, check_sample_outputs, synthetic_motion, write_paired_shards

from humove.model.config import DiTConfig
from humove.model.data import DataConfig, ShardDataError, decode_sample, iterate_shard, make_loader
from humove.model.encoders import StandInVideoVAE, load_video_vae, vae_layout
from humove.model.sampling import SamplerConfig, generate
from humove.model.train import TrainConfig, train
from humove.schemas.motion import save_motion

WAN22_OVERRIDES = {**TINY_OVERRIDES, "in_channels": 48, "out_channels": 48, "vae_stride": [4, 16, 16]}


def test_presets_carry_their_vae_stride_and_latent_shape():
    assert DiTConfig.preset("wan2.1-1.3b").vae_stride == (4, 8, 8)
    assert DiTConfig.preset("wan2.1-1.3b").latent_shape(81, 480, 832) == (16, 21, 60, 104)
    five_b = DiTConfig.preset("wan2.2-5b")
    assert five_b.vae_stride == (4, 16, 16) and five_b.latent_shape(81, 704, 1280) == (48, 21, 44, 80)
    assert DiTConfig.from_dict(five_b.to_dict()) == five_b
    old = DiTConfig.preset("tiny").to_dict()
    del old["vae_stride"]  # model_config.json written before the field existed: Wan2.1's layout
    assert DiTConfig.from_dict(old).vae_stride == (4, 8, 8)
    with pytest.raises(ValueError, match="multiple of 32"):
        five_b.latent_shape(81, 720, 1280)
    with pytest.raises(ValueError, match="temporal_stride"):
        DiTConfig.preset("tiny", vae_stride=(2, 8, 8))


def test_standin_vae_takes_channels_and_stride():
    wan21 = StandInVideoVAE()
    assert (wan21.latent_channels, wan21.stride) == (16, (4, 8, 8))
    vae = StandInVideoVAE(latent_channels=48, stride=(4, 16, 16))
    g = torch.Generator().manual_seed(0)
    # constant over temporal groups (1, 4, 4) and over 4×4 pixel blocks: what a 48-channel stride-16 stand-in keeps
    coarse = torch.rand(1, 3, 3, 8, 8, generator=g) * 2 - 1
    video = coarse.repeat_interleave(torch.tensor([1, 4, 4]), dim=2).repeat_interleave(4, 3).repeat_interleave(4, 4)
    latents = vae.encode(video)
    assert latents.shape == (1, 48, 3, 2, 2) and latents.abs().max() <= 1.0 + 1e-5
    assert torch.allclose(vae.decode(latents), video, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 16"):
        vae.encode(torch.zeros(1, 3, 9, 24, 32))
    with pytest.raises(ValueError, match="48"):
        vae.decode(torch.zeros(1, 16, 3, 2, 2))
    assert load_video_vae("standin", "cpu", 48, (4, 16, 16)).encode(video).shape == (1, 48, 3, 2, 2)


def test_real_vae_layout_is_read_from_its_config():
    wan21 = SimpleNamespace(z_dim=16, temperal_downsample=[False, True, True])  # no scale factors: older configs
    wan22 = SimpleNamespace(z_dim=48, temperal_downsample=[False, True, True], patch_size=2,
                            scale_factor_temporal=4, scale_factor_spatial=16)
    assert vae_layout(wan21) == (16, (4, 8, 8))
    assert vae_layout(wan22) == (48, (4, 16, 16))
    assert vae_layout(SimpleNamespace(z_dim=48, temperal_downsample=[False, True, True], patch_size=2)) \
        == (48, (4, 16, 16))



def test_real_wan22_style_vae_normalises_48_channels(tmp_path):
    """diffusers' AutoencoderKLWan in the Wan2.2 TI2V-5B layout (residual, patch 2, z_dim 48), tiny random weights."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    diffusers.AutoencoderKLWan(
        base_dim=8, decoder_base_dim=8, z_dim=48, in_channels=12, out_channels=12, dim_mult=[1, 2, 2, 2],
        num_res_blocks=1, is_residual=True, patch_size=2, scale_factor_spatial=16,
        latents_mean=[0.1] * 48, latents_std=[2.0] * 48,
    ).save_pretrained(tmp_path / "vae")
    vae = load_video_vae(str(tmp_path), "cpu", 48, (4, 16, 16))
    assert (vae.backend, vae.latent_channels, vae.stride) == ("wan-vae", 48, (4, 16, 16))
    assert vae.mean.shape == vae.std.shape == (1, 48, 1, 1, 1)
    latents = vae.encode(torch.rand(1, 3, 9, 32, 32) * 2 - 1)
    assert latents.shape == (1, 48, 3, 2, 2)
    assert vae.decode(latents).shape == (1, 3, 9, 32, 32)
    with pytest.raises(ValueError, match="48 latent channels, the model expects 16"):
        load_video_vae(str(tmp_path), "cpu", 16, (4, 8, 8))

def test_wan22_layout_trains_caches_and_samples_all_three_modes(tmp_path):
    shards = tmp_path / "shards"
    write_paired_shards(shards, num_samples=2, per_shard=2, stats=True)
    data = dict(shards=[str(shards)], num_frames=9, fps=16, height=64, width=64, batch_size=2, num_workers=0,
                shuffle_buffer=2, random_window=False)
    run = tmp_path / "run"
    config = TrainConfig(run_dir=str(run), model="tiny", model_overrides=WAN22_OVERRIDES, phase=2, steps=2,
                         lr=3e-3, log_every=1, checkpoint_every=1000, device="cpu", data=DataConfig(**data),
                         vae="standin", text_encoder="standin")
    metrics = train(config)
    assert metrics["step"] == 2 and np.isfinite(metrics["loss"])
    saved = json.loads(next(run.glob("checkpoints/step-*/model_config.json")).read_text())
    assert saved["in_channels"] == 48 and saved["vae_stride"] == [4, 16, 16]

    # Cached latents: 48 channels at stride 16 are accepted, Wan2.1-layout caches are refused by name.
    from humove.model.cache import cache_encodings
    from humove.model.encoders import StandInTextEncoder

    dit = DiTConfig.preset("tiny", **WAN22_OVERRIDES)
    shape = dit.latent_shape(9, 64, 64)
    assert shape == (48, 3, 4, 4)
    text = StandInTextEncoder(dit.text_dim, dit.text_len)
    data_config = DataConfig(**data)
    with pytest.raises(ValueError, match="the model needs"):
        cache_encodings(data_config, tmp_path / "bad", StandInVideoVAE(), text, latent_shape=shape)
    cache_encodings(data_config, tmp_path / "cached", load_video_vae("standin", "cpu", 48, (4, 16, 16)), text,
                    latent_shape=shape)
    cached = next(iter(make_loader(DataConfig(**{**data, "shards": [str(tmp_path / "cached")]}),
                                   latent_shape=shape)[0]))
    assert cached["latents"].shape == (2, *shape) and "video" not in cached
    cache_encodings(data_config, tmp_path / "cached16", StandInVideoVAE(), text)
    raw = next(iterate_shard(str(next((tmp_path / "cached16").glob("*.tar")))))
    with pytest.raises(ShardDataError, match="config needs \\(48, 3, 4, 4\\)"):
        decode_sample(raw, DataConfig(**{**data, "shards": [str(tmp_path / "cached16")]}), None, shape)

    motion_file = tmp_path / "clip.motion.npz"
    save_motion(motion_file, synthetic_motion(30, 30.0))
    video_file = tmp_path / "clip.mp4"
    video_file.write_bytes(next(iter(wds.WebDataset(str(next(shards.glob("*.tar"))), shardshuffle=False)))["mp4"])
    sampler = SamplerConfig(steps=2)
    for mode, extra in (("joint", {}), ("motion2video", {"motion_path": motion_file}),
                        ("video2motion", {"video_path": video_file})):
        out = tmp_path / mode
        info = generate(run, mode, out, prompt="" if mode == "video2motion" else "a person", config=sampler,
                        device="cpu", body_model="standin-smpl", **extra)
        check_sample_outputs(out, mode, info)
