"""Wan2.1 weight compatibility: key names and shapes, strict loading, diffusers renaming, file formats.

The expected names below are written out from Wan2.1's `wan/modules/model.py` (`WanModel`, t2v) and from diffusers'
`WanTransformer3DModel`, independently of the loader's own renaming table.
"""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from humove.model.config import DiTConfig
from humove.model.dit import EchoMotionDiT
from humove.model.weights import WanWeightsError, load_wan_state_dict, read_state_dict, wan_state_dict


def expected_wan_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Wan2.1 `WanModel(model_type='t2v')` state-dict keys and shapes for this config."""
    d, f = cfg.dim, cfg.ffn_dim
    out = math.prod(cfg.patch_size) * cfg.out_channels
    shapes = {
        "patch_embedding.weight": (d, cfg.in_channels, *cfg.patch_size),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.text_dim),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
        "head.modulation": (1, 2, d),
        "head.head.weight": (out, d),
        "head.head.bias": (out,),
    }
    for i in range(cfg.num_layers):
        block = f"blocks.{i}."
        for attention in ("self_attn", "cross_attn"):
            for projection in "qkvo":
                shapes[f"{block}{attention}.{projection}.weight"] = (d, d)
                shapes[f"{block}{attention}.{projection}.bias"] = (d,)
            shapes[f"{block}{attention}.norm_q.weight"] = (d,)
            shapes[f"{block}{attention}.norm_k.weight"] = (d,)
        shapes[f"{block}norm3.weight"] = (d,)
        shapes[f"{block}norm3.bias"] = (d,)
        shapes[f"{block}ffn.0.weight"] = (f, d)
        shapes[f"{block}ffn.0.bias"] = (f,)
        shapes[f"{block}ffn.2.weight"] = (d, f)
        shapes[f"{block}ffn.2.bias"] = (d,)
        shapes[f"{block}modulation"] = (1, 6, d)
    return shapes


def wan_name_to_diffusers(name: str) -> str:
    """Diffusers `WanTransformer3DModel` name of a Wan2.1 parameter, spelled out per module."""
    top = {
        "text_embedding.0": "condition_embedder.text_embedder.linear_1",
        "text_embedding.2": "condition_embedder.text_embedder.linear_2",
        "time_embedding.0": "condition_embedder.time_embedder.linear_1",
        "time_embedding.2": "condition_embedder.time_embedder.linear_2",
        "time_projection.1": "condition_embedder.time_proj",
        "head.head": "proj_out",
        "patch_embedding": "patch_embedding",
    }
    if name == "head.modulation":
        return "scale_shift_table"
    if not name.startswith("blocks."):
        module, param = name.rsplit(".", 1)
        return f"{top[module]}.{param}"
    _, index, rest = name.split(".", 2)
    inner = {
        "modulation": "scale_shift_table",
        "norm3.weight": "norm2.weight",
        "norm3.bias": "norm2.bias",
        "ffn.0.weight": "ffn.net.0.proj.weight",
        "ffn.0.bias": "ffn.net.0.proj.bias",
        "ffn.2.weight": "ffn.net.2.weight",
        "ffn.2.bias": "ffn.net.2.bias",
    }
    if rest in inner:
        return f"blocks.{index}.{inner[rest]}"
    attention, module, param = rest.split(".")
    attn = {"self_attn": "attn1", "cross_attn": "attn2"}[attention]
    module = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}.get(module, module)
    return f"blocks.{index}.{attn}.{module}.{param}"


def random_wan_checkpoint(cfg: DiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in expected_wan_shapes(cfg).items()}


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return EchoMotionDiT(DiTConfig.preset("tiny"))


def assert_loaded(model: EchoMotionDiT, checkpoint: dict[str, torch.Tensor]) -> None:
    state = wan_state_dict(model)
    assert state.keys() == checkpoint.keys()
    for key, value in checkpoint.items():
        assert torch.equal(state[key], value), key
    # The motion branch was initialised from the loaded video weights.
    last = model.config.num_layers - 1
    motion_k = model.dual_blocks[-1].motion.cross_attn.k.weight
    assert torch.equal(motion_k, checkpoint[f"blocks.{last}.cross_attn.k.weight"])


def test_video_branch_keys_and_shapes_equal_wan_at_tiny_size(tiny):
    state = wan_state_dict(tiny)
    expected = expected_wan_shapes(tiny.config)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


@pytest.mark.parametrize("preset", ["wan2.1-1.3b", "wan2.2-5b"])
def test_full_size_keys_and_shapes_on_meta_device(preset):
    cfg = DiTConfig.preset(preset)
    with torch.device("meta"):
        model = EchoMotionDiT(cfg)
    state = wan_state_dict(model)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_wan_shapes(cfg)
    if preset == "wan2.1-1.3b":
        assert len(state) == 825  # 15 top-level tensors + 30 blocks × 27
        assert state["blocks.0.self_attn.q.weight"].shape == (1536, 1536)
        assert state["blocks.29.ffn.0.weight"].shape == (8960, 1536)
        # The motion branch roughly doubles the model (paper A.9: 1.3B → 2.6B).
        total = sum(p.numel() for p in model.parameters())
        video = sum(v.numel() for v in state.values())
        assert 1.4e9 < video < 1.45e9 and 1.9 < total / video < 2.1
    else:
        assert sum(isinstance(b, type(model.dual_blocks[0])) for b in model.blocks) == 15


def test_wan_safetensors_file_loads_strictly(tmp_path, tiny):
    checkpoint = random_wan_checkpoint(tiny.config)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(checkpoint, str(path))
    report = load_wan_state_dict(tiny, str(path))
    assert report.source_format == "wan" and not report.missing and not report.unexpected
    assert_loaded(tiny, checkpoint)


def test_sharded_folder_with_index_and_stray_pth_files(tmp_path, tiny):
    checkpoint = random_wan_checkpoint(tiny.config, seed=1)
    keys = sorted(checkpoint)
    shards = {"part-00001.safetensors": keys[: len(keys) // 2], "part-00002.safetensors": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        save_file({k: checkpoint[k] for k in shard_keys}, str(tmp_path / name))
    index = {"weight_map": {k: name for name, shard_keys in shards.items() for k in shard_keys}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    torch.save({"not": torch.zeros(1)}, tmp_path / "Wan2.1_VAE.pth")  # Wan folders hold the VAE too
    load_wan_state_dict(tiny, tmp_path)
    assert_loaded(tiny, checkpoint)


def test_pth_file_with_wrapper_prefix_loads(tmp_path, tiny):
    checkpoint = random_wan_checkpoint(tiny.config, seed=2)
    torch.save({f"module.{k}": v for k, v in checkpoint.items()}, tmp_path / "model.pth")
    load_wan_state_dict(tiny, tmp_path / "model.pth")
    assert_loaded(tiny, checkpoint)


def test_diffusers_format_loads_after_renaming(tmp_path, tiny):
    checkpoint = random_wan_checkpoint(tiny.config, seed=3)
    diffusers = {wan_name_to_diffusers(k): v for k, v in checkpoint.items()}
    assert "blocks.0.attn1.to_out.0.weight" in diffusers and "blocks.1.norm2.weight" in diffusers
    save_file(diffusers, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    report = load_wan_state_dict(tiny, tmp_path)
    assert report.source_format == "diffusers"
    assert_loaded(tiny, checkpoint)


def test_round_trip_through_wan_state_dict(tiny):
    torch.manual_seed(5)
    other = EchoMotionDiT(DiTConfig.preset("tiny"))
    with torch.no_grad():
        for param in other.parameters():
            param.normal_()
    load_wan_state_dict(tiny, wan_state_dict(other))
    inputs = (torch.randn(1, 16, 2, 4, 4), None, torch.tensor([500.0]), None, torch.randn(1, 3, 32), torch.tensor([0]))
    other.task_embedding.load_state_dict(tiny.task_embedding.state_dict())
    assert torch.equal(tiny(*inputs)[0], other(*inputs)[0])


def test_strict_loading_names_what_is_wrong(tiny):
    checkpoint = random_wan_checkpoint(tiny.config)
    missing = dict(checkpoint)
    del missing["blocks.1.ffn.2.bias"]
    with pytest.raises(WanWeightsError, match=r"missing 1 keys: blocks\.1\.ffn\.2\.bias"):
        load_wan_state_dict(tiny, missing)
    extra = dict(checkpoint, **{"img_emb.proj.0.weight": torch.zeros(3)})
    with pytest.raises(WanWeightsError, match=r"unexpected 1 keys: img_emb\.proj\.0\.weight"):
        load_wan_state_dict(tiny, extra)
    wrong = dict(checkpoint, **{"head.head.weight": torch.zeros(5, 5)})
    with pytest.raises(WanWeightsError, match=r"shape mismatch .*head\.head\.weight \(5, 5\)"):
        load_wan_state_dict(tiny, wrong)
    # Non-strict loads what fits and reports the rest.
    report = load_wan_state_dict(tiny, missing, strict=False)
    assert report.missing == ["blocks.1.ffn.2.bias"] and len(report.loaded) == len(checkpoint) - 1


def test_bad_sources_raise_clear_errors(tmp_path, tiny):
    with pytest.raises(WanWeightsError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(WanWeightsError, match="no .safetensors files"):
        read_state_dict(tmp_path)
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(WanWeightsError, match="not a .safetensors"):
        read_state_dict(tmp_path / "weights.txt")


def test_video_branch_matches_diffusers_wan_numerically():
    """With diffusers installed: the same random weights give the same prediction as diffusers' Wan model
    (motion absent; the default RoPE time scale, 1, is Wan's own positions). Skipped without diffusers."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    reference = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6,
    ).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.2)
    ours = EchoMotionDiT(DiTConfig.preset("tiny", num_layers=2, num_video_only_layers=1))
    load_wan_state_dict(ours, reference.state_dict())
    video, t, context = torch.randn(2, 16, 3, 6, 8), torch.tensor([999.0, 37.0]), torch.randn(2, 512, 32)
    with torch.no_grad():
        expected = reference(video, t, context, return_dict=False)[0]
        got = ours(video, None, t, None, context, torch.tensor([0, 1]))[0]
    assert torch.allclose(got, expected, atol=1e-3 * expected.abs().max().item())
