"""In-context CFG (paper eqs. 4–6) against hand computations, and the Euler sampler."""

import pytest
import torch
from trainer_fixtures import TINY_OVERRIDES

from humove.model.config import DiTConfig
from humove.model.dit import EchoMotionDiT
from humove.model.sampling import SamplerConfig, guided_velocity, sample
from humove.model.tasks import JOINT, MOTION_TO_VIDEO, VIDEO_TO_MOTION


class FakeConditionCounter(torch.nn.Module):
    """Fake network for the formula check: each output = 100 + 1·[text present] + 10·[other modality present],
    per sample, so every term of eqs. 4–6 has a known value."""

    def forward(self, video, motion, t_video, t_motion, context, task):
        text = (context.flatten(1).abs().sum(1) > 0).float()
        has_video = (video.flatten(1).abs().sum(1) > 0).float()
        has_motion = (motion.flatten(1).abs().sum(1) > 0).float()
        video_out = (100 + text + 10 * has_motion)[:, None, None, None, None].expand_as(video)
        motion_out = (100 + text + 10 * has_video)[:, None, None].expand_as(motion)
        return video_out.clone(), motion_out.clone()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 9, 235, generator=g),
            torch.randn(1, 16, 32, generator=g))


def test_iccfg_formulas_by_hand_with_known_terms():
    video, motion, context = inputs()
    config = SamplerConfig(text_guidance=2.0, condition_guidance=3.0)
    t = torch.tensor([500.0])
    fake = FakeConditionCounter()
    # eq. 4: u(x,m,∅) = 110, u(x,m,y) = 111 → 110 + 2·1 = 112 for both outputs
    v, m = guided_velocity(fake, "joint", video, motion, t, context, config)
    assert torch.all(v == 112) and torch.all(m == 112)
    # eq. 5: u(x,∅,∅) = 100, u(x,m,∅) = 110, u(x,m,y) = 111 → 100 + 2·(111−110) + 3·(110−100) = 132
    v, m = guided_velocity(fake, "motion2video", video, motion, t, context, config)
    assert m is None and torch.all(v == 132)
    # eq. 6: u(∅,m,∅) = 100, u(x,m,∅) = 110 → 100 + 3·10 = 130 (the prompt is never used)
    v, m = guided_velocity(fake, "video2motion", video, motion, t, context, config)
    assert v is None and torch.all(m == 130)


@pytest.fixture(scope="module")
def random_tiny_model():
    torch.manual_seed(0)
    model = EchoMotionDiT(DiTConfig.preset("tiny", **TINY_OVERRIDES)).eval()
    with torch.no_grad():  # zero-initialised heads would make every term 0: give all weights random values
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.05)
    return model


def test_iccfg_batched_equals_separate_calls_of_the_real_model(random_tiny_model):
    model, (video, motion, context) = random_tiny_model, inputs(1)
    w1, w2 = 6.0, 4.0
    config = SamplerConfig(text_guidance=w1, condition_guidance=w2)
    t, zero, null = torch.tensor([700.0]), torch.tensor([0.0]), torch.zeros_like(context)

    def u(x, m, t_v, t_m, c, task):
        return model(x, m, t_v, t_m, c, torch.tensor([task]))

    with torch.no_grad():
        cond, uncond = u(video, motion, t, t, context, JOINT), u(video, motion, t, t, null, JOINT)
        expected_v = uncond[0] + w1 * (cond[0] - uncond[0])
        expected_m = uncond[1] + w1 * (cond[1] - uncond[1])
        v, m = guided_velocity(model, "joint", video, motion, t, context, config)
        assert torch.allclose(v, expected_v, atol=1e-5) and torch.allclose(m, expected_m, atol=1e-5)

        full = u(video, motion, t, zero, context, MOTION_TO_VIDEO)[0]
        motion_only = u(video, motion, t, zero, null, MOTION_TO_VIDEO)[0]
        none = u(video, torch.zeros_like(motion), t, zero, null, MOTION_TO_VIDEO)[0]
        v, _ = guided_velocity(model, "motion2video", video, motion, t, context, config)
        assert torch.allclose(v, none + w1 * (full - motion_only) + w2 * (motion_only - none), atol=1e-5)

        with_video = u(video, motion, zero, t, null, VIDEO_TO_MOTION)[1]
        without = u(torch.zeros_like(video), motion, zero, t, null, VIDEO_TO_MOTION)[1]
        _, m = guided_velocity(model, "video2motion", video, motion, t, context, config)
        assert torch.allclose(m, without + w2 * (with_video - without), atol=1e-5)
        assert not torch.allclose(with_video, without)  # the condition matters, so the check has teeth


class FakeExactVelocity(torch.nn.Module):
    """Fake network that knows the data: returns the exact flow velocity (x_σ − x0)/σ towards fixed targets."""

    def __init__(self, video_target, motion_target):
        super().__init__()
        self.video_target, self.motion_target = video_target, motion_target

    def forward(self, video, motion, t_video, t_motion, context, task):
        sigma_v = (t_video / 1000).clamp(min=1e-6)[:, None, None, None, None]
        sigma_m = (t_motion / 1000).clamp(min=1e-6)[:, None, None]
        return (video - self.video_target) / sigma_v, (motion - self.motion_target) / sigma_m


@pytest.mark.parametrize("mode", ["joint", "motion2video", "video2motion"])
def test_sampler_reaches_the_data_with_exact_velocities_and_keeps_conditions(mode):
    video_target, motion_target, context = inputs(2)
    model = FakeExactVelocity(video_target, motion_target)
    video, motion = sample(model, mode, context, tuple(video_target.shape), 9,
                           video_condition=video_target if mode == "video2motion" else None,
                           motion_condition=motion_target if mode == "motion2video" else None,
                           config=SamplerConfig(steps=8, text_guidance=1.0, condition_guidance=1.0),
                           generator=torch.Generator().manual_seed(0))
    assert torch.allclose(video, video_target, atol=1e-4)
    assert torch.allclose(motion, motion_target, atol=1e-4)


def test_sampling_needs_its_condition():
    video, motion, context = inputs()
    with pytest.raises(ValueError, match="motion condition"):
        sample(FakeConditionCounter(), "motion2video", context, tuple(video.shape), 9)
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sample(FakeConditionCounter(), "image2video", context, tuple(video.shape), 9)


class CountingModel(torch.nn.Module):
    """Wraps a real model and counts the samples it is asked to evaluate."""

    def __init__(self, model):
        super().__init__()
        self.model, self.samples = model, 0

    def forward(self, video, *rest):
        self.samples += video.shape[0]
        return self.model(video, *rest)


def test_motion2video_with_equal_scales_skips_the_cancelled_term(random_tiny_model):
    """ω1 = ω2: eq. 5 is two-term CFG; two evaluations per step give the three-term result."""
    video, motion, context = inputs(3)
    t, zero, null = torch.tensor([600.0]), torch.tensor([0.0]), torch.zeros_like(context)
    counting = CountingModel(random_tiny_model)
    with torch.no_grad():
        full = random_tiny_model(video, motion, t, zero, context, torch.tensor([MOTION_TO_VIDEO]))[0]
        motion_only = random_tiny_model(video, motion, t, zero, null, torch.tensor([MOTION_TO_VIDEO]))[0]
        none = random_tiny_model(video, torch.zeros_like(motion), t, zero, null, torch.tensor([MOTION_TO_VIDEO]))[0]
        three_terms = none + 5.0 * (full - motion_only) + 5.0 * (motion_only - none)
        v, _ = guided_velocity(counting, "motion2video", video, motion, t, context,
                               SamplerConfig(text_guidance=5.0, condition_guidance=5.0))
    assert counting.samples == 2
    assert torch.allclose(v, three_terms, atol=1e-5)
    with torch.no_grad():
        guided_velocity(counting, "motion2video", video, motion, t, context,
                        SamplerConfig(text_guidance=5.0, condition_guidance=2.0))
    assert counting.samples == 2 + 3  # different scales need all three terms
