"""EchoMotionDiT at the tiny size: shapes, modes, branch initialisation, parameter groups, checkpointing."""

import pytest
import torch

from humove.model.blocks import EchoMotionBlock, VideoBlock
from humove.model.config import DiTConfig
from humove.model.dit import EchoMotionDiT, is_motion_key
from humove.model.weights import wan_state_dict

BATCH, FRAMES, LATENT_T, LATENT_HW = 2, 9, 3, 8  # 9 motion frames ↔ 3 latent frames (1 + 4k layout)


def make_model(seed: int = 0, **overrides) -> EchoMotionDiT:
    """Tiny model with every parameter randomised (the real init zeroes the output layers)."""
    torch.manual_seed(seed)
    model = EchoMotionDiT(DiTConfig.preset("tiny", **overrides))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    return model


def make_inputs(seed: int = 1):
    torch.manual_seed(seed)
    return dict(
        video=torch.randn(BATCH, 16, LATENT_T, LATENT_HW, LATENT_HW),
        motion=torch.randn(BATCH, FRAMES, 235),
        t_video=torch.tensor([700.0, 0.0]),
        t_motion=torch.tensor([0.0, 250.0]),
        context=torch.randn(BATCH, 5, 32),
        task=torch.tensor([0, 2]),
    )


def test_presets_have_the_papers_shapes():
    small = DiTConfig.preset("wan2.1-1.3b")
    assert (small.dim, small.ffn_dim, small.num_heads, small.num_layers, small.num_video_only_layers) == (
        1536, 8960, 12, 30, 0)
    assert small.head_dim == 128 and small.patch_size == (1, 2, 2) and small.text_dim == 4096
    # Video keeps Wan's pre-training positions (t, h, w); motion frame f sits at time f/4 (README: Departures).
    assert all(DiTConfig.preset(name).rope_time_scale == 1.0 for name in ("wan2.1-1.3b", "wan2.2-5b", "tiny"))
    large = DiTConfig.preset("wan2.2-5b")
    assert (large.dim, large.num_heads, large.num_layers, large.num_video_only_layers, large.in_channels) == (
        3072, 24, 30, 15, 48)
    tiny = DiTConfig.preset("tiny")
    assert tiny.num_video_only_layers == 2 and tiny.num_dual_layers == 2
    assert DiTConfig.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ValueError, match="unknown preset"):
        DiTConfig.preset("wan9")
    with pytest.raises(ValueError, match="not divisible"):
        DiTConfig(dim=65, ffn_dim=128, num_heads=4, num_layers=2)


def test_forward_shapes_in_all_modes():
    model, inputs = make_model(), make_inputs()
    video_pred, motion_pred = model(**inputs)
    assert video_pred.shape == inputs["video"].shape and motion_pred.shape == (BATCH, FRAMES, 235)
    assert video_pred.dtype == motion_pred.dtype == torch.float32
    assert torch.isfinite(video_pred).all() and torch.isfinite(motion_pred).all()

    no_video = model(None, inputs["motion"], None, inputs["t_motion"], inputs["context"], inputs["task"])
    assert no_video[0] is None and no_video[1].shape == (BATCH, FRAMES, 235)
    no_motion = model(inputs["video"], None, inputs["t_video"], None, inputs["context"], inputs["task"])
    assert no_motion[1] is None and no_motion[0].shape == inputs["video"].shape


def test_full_size_forward_with_the_papers_token_counts_on_meta_device():
    """1.3B at 480x832, 81 frames: 21x30x52 = 32,760 video and 81x51 = 4,131 motion tokens (shapes only)."""
    with torch.device("meta"):
        model = EchoMotionDiT(DiTConfig.preset("wan2.1-1.3b"))
        video, motion = torch.randn(1, 16, 21, 60, 104), torch.randn(1, 81, 235)
        tokens, grid = model.embed_video(video)
        assert tokens.shape == (1, 32760, 1536) and grid == (21, 30, 52)
        assert model.motion_embedder(motion).flatten(1, 2).shape == (1, 4131, 1536)
        video_pred, motion_pred = model(video, motion, torch.tensor([900.0]), torch.tensor([0.0]),
                                        torch.randn(1, 512, 4096), torch.tensor([1]))
    assert video_pred.shape == video.shape and motion_pred.shape == motion.shape


def test_block_layout_is_hybrid():
    model = make_model()
    kinds = [type(block) for block in model.blocks]
    assert kinds == [VideoBlock, VideoBlock, EchoMotionBlock, EchoMotionBlock]
    assert set(model.no_split_modules) == {cls.__name__ for cls in model.block_classes}


def test_joint_attention_couples_the_modalities():
    model, inputs = make_model(), make_inputs()
    _, motion_pred = model(**inputs)
    changed = dict(inputs, video=inputs["video"] + 1.0)
    _, motion_pred_changed = model(**changed)
    assert (motion_pred - motion_pred_changed).abs().max() > 1e-3


def test_video_prediction_without_motion_ignores_the_motion_branch():
    """Motion absent: the model is Wan's video path; motion weights must not touch it."""
    model, inputs = make_model(), make_inputs()
    args = (inputs["video"], None, inputs["t_video"], None, inputs["context"], inputs["task"])
    before = model(*args)[0]
    with torch.no_grad():
        for name, param in model.named_parameters():
            # The task MLP is new too, but it is meant to act on video tokens; everything else must not.
            if is_motion_key(name) and not name.startswith("task_embedding."):
                param.add_(1.0)
    assert torch.equal(model(*args)[0], before)


def test_phase_one_motion_only_trains_only_motion_parameters():
    model, inputs = make_model(), make_inputs()
    for param in model.video_parameters():
        param.requires_grad_(False)
    _, motion_pred = model(None, inputs["motion"], None, inputs["t_motion"], inputs["context"], inputs["task"])
    motion_pred.square().mean().backward()
    named = dict(model.named_parameters())
    assert all(named[name].grad is None for name in named if not is_motion_key(name))
    motion_grads = [param.grad for name, param in named.items() if is_motion_key(name)]
    assert all(grad is not None for grad in motion_grads)
    assert sum(grad.abs().sum() for grad in motion_grads) > 0
    # Video-only blocks take no part when video is absent.
    assert all(p.grad is None for block in model.blocks[:2] for p in block.parameters())


def test_parameter_groups_partition_the_model_and_match_wan_keys():
    model = make_model()
    video_ids = {id(p) for p in model.video_parameters()}
    motion_ids = {id(p) for p in model.motion_parameters()}
    assert not video_ids & motion_ids
    assert video_ids | motion_ids == {id(p) for p in model.parameters()}
    video_names = {name for name, _ in model.named_parameters() if not is_motion_key(name)}
    assert video_names == set(wan_state_dict(model))


def test_motion_branch_equals_video_branch_after_initialisation():
    model = make_model()  # randomised: motion and video streams differ
    block = model.dual_blocks[0]
    assert not torch.equal(block.motion.self_attn.q.weight, block.self_attn.q.weight)
    model.init_motion_from_video()
    for block in model.dual_blocks:
        motion_state = block.motion.state_dict()
        video_state = {k: v for k, v in block.state_dict().items() if not k.startswith("motion.")}
        assert set(motion_state) == set(video_state)
        for key, value in motion_state.items():
            assert torch.equal(value, video_state[key]), key
        assert motion_state["self_attn.q.weight"].data_ptr() != video_state["self_attn.q.weight"].data_ptr()
    assert torch.equal(model.motion_head.modulation, model.head.modulation)


def test_fresh_model_starts_as_wan_with_copied_motion_branch_and_silent_task_hint():
    torch.manual_seed(0)
    model = EchoMotionDiT(DiTConfig.preset("tiny"))
    block = model.dual_blocks[0]
    assert torch.equal(block.motion.ffn[0].weight, block.ffn[0].weight)
    inputs = make_inputs()
    with torch.no_grad():
        model.head.head.weight.normal_()  # Wan's zero-initialised head would hide any difference
        first = model(**inputs)[0]
        second = model(**dict(inputs, task=torch.tensor([1, 1])))[0]
    assert torch.equal(first, second)


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    inputs = make_inputs()
    results = []
    for checkpointing in (False, True):
        model = make_model(seed=4)
        model.enable_gradient_checkpointing(checkpointing)
        video_pred, motion_pred = model(**inputs)
        (video_pred.square().mean() + motion_pred.square().mean()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((video_pred.detach(), motion_pred.detach(), grads))
    (v0, m0, g0), (v1, m1, g1) = results
    assert torch.equal(v0, v1) and torch.equal(m0, m1)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-6, rtol=1e-5), name


def test_bf16_autocast_path_runs_and_stays_close():
    """GPU training uses bf16 autocast; the same code path runs under CPU autocast."""
    model, inputs = make_model(seed=5), make_inputs()
    reference = model(**inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(**inputs)
    for ref, out in zip(reference, low, strict=True):
        assert out.dtype == torch.float32
        assert (out - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_bf16_weights_run_without_autocast():
    """Sampling may hold the weights in bf16; float32 inputs and residuals must still meet them cleanly."""
    model, inputs = make_model(seed=6), make_inputs()
    reference = model(**inputs)
    low = model.to(torch.bfloat16)(**inputs)
    for ref, out in zip(reference, low, strict=True):
        assert out.dtype == torch.float32
        assert (out - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_clear_errors_for_bad_inputs():
    model, inputs = make_model(), make_inputs()
    with pytest.raises(ValueError, match="both absent"):
        model(None, None, None, None, inputs["context"], inputs["task"])
    with pytest.raises(ValueError, match="t_motion is required"):
        model(None, inputs["motion"], None, None, inputs["context"], inputs["task"])
    with pytest.raises(ValueError, match="motion shape"):
        model(None, inputs["motion"][..., :200], None, inputs["t_motion"], inputs["context"], inputs["task"])
    with pytest.raises(ValueError, match="more than text_len"):
        model(**dict(inputs, context=torch.randn(BATCH, 600, 32)))
    with pytest.raises(ValueError, match="not divisible by patch"):
        model(**dict(inputs, video=torch.randn(BATCH, 16, 3, 7, 8)))
    with pytest.raises(ValueError, match="outside"):
        model(**dict(inputs, task=torch.tensor([0, 3])))
