"""Task sampling, clean conditions (never noised, no loss) and per-paradigm condition dropout (paper §3.2)."""

import pytest
import torch
from trainer_fixtures import TINY_OVERRIDES

from humove.model import flow
from humove.model.config import DiTConfig
from humove.model.dit import EchoMotionDiT
from humove.model.tasks import (
    JOINT,
    MOTION_TO_VIDEO,
    VIDEO_TO_MOTION,
    Dropout,
    TaskConfig,
    TrainingInputs,
    build_training_inputs,
    flow_losses,
)

NO_DROP = {"joint_text_drop": 0.0, "motion_to_video_text_drop": 0.0, "motion_to_video_motion_drop": 0.0,
           "motion_to_video_both_drop": 0.0, "video_to_motion_video_drop": 0.0}
ONLY = {JOINT: (1, 0, 0), MOTION_TO_VIDEO: (0, 1, 0), VIDEO_TO_MOTION: (0, 0, 1)}


def batch(size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(size, 16, 3, 8, 8, generator=g), torch.randn(size, 9, 235, generator=g),
            torch.randn(size, 16, 32, generator=g))


def config_for(task, **drops):
    p = ONLY[task]
    return TaskConfig(p_joint=p[0], p_motion_to_video=p[1], p_video_to_motion=p[2], **{**NO_DROP, **drops})


def test_joint_noises_both_modalities_at_one_sigma():
    video, motion, context = batch()
    inputs = build_training_inputs(config_for(JOINT), video, motion, context,
                                   generator=torch.Generator().manual_seed(0))
    assert (inputs.task == JOINT).all()
    assert torch.equal(inputs.t_video, inputs.t_motion)
    assert torch.allclose(inputs.t_video, flow.sigma_to_timestep(inputs.sigma))
    noise_motion = inputs.motion_target + motion  # target = ε − x0
    assert torch.allclose(inputs.motion, flow.add_noise(motion, noise_motion, inputs.sigma), atol=1e-6)
    assert inputs.video_loss_mask.all() and inputs.motion_loss_mask.all()
    assert torch.equal(inputs.context, context)


@pytest.mark.parametrize("task", [MOTION_TO_VIDEO, VIDEO_TO_MOTION])
def test_clean_modality_is_never_noised_and_gets_no_loss(task):
    video, motion, context = batch()
    inputs = build_training_inputs(config_for(task), video, motion, context,
                                   generator=torch.Generator().manual_seed(1))
    clean_input, clean_t, clean_mask = (
        (inputs.motion, inputs.t_motion, inputs.motion_loss_mask) if task == MOTION_TO_VIDEO
        else (inputs.video, inputs.t_video, inputs.video_loss_mask))
    assert torch.equal(clean_input, motion if task == MOTION_TO_VIDEO else video)  # exactly the data
    assert (clean_t == 0).all() and not clean_mask.any()

    # Through the real network: the loss has no gradient into the clean modality's prediction.
    torch.manual_seed(0)
    model = EchoMotionDiT(DiTConfig.preset("tiny", **TINY_OVERRIDES))
    video_pred, motion_pred = model(inputs.video, inputs.motion, inputs.t_video, inputs.t_motion, inputs.context,
                                    inputs.task)
    video_pred.retain_grad()
    motion_pred.retain_grad()
    losses = flow_losses(inputs, video_pred, motion_pred)
    losses["loss"].backward()
    clean_grad, noised_grad = ((motion_pred.grad, video_pred.grad) if task == MOTION_TO_VIDEO
                               else (video_pred.grad, motion_pred.grad))
    assert torch.count_nonzero(clean_grad) == 0
    assert torch.count_nonzero(noised_grad) > 0
    clean_name = "motion" if task == MOTION_TO_VIDEO else "video"
    assert losses[clean_name].item() == 0.0


def test_video_to_motion_always_drops_text_and_drops_video_with_its_probability():
    video, motion, context = batch(size=2000)
    inputs = build_training_inputs(config_for(VIDEO_TO_MOTION, video_to_motion_video_drop=0.3), video, motion,
                                   context, generator=torch.Generator().manual_seed(2))
    assert torch.count_nonzero(inputs.context) == 0
    dropped = (inputs.video.flatten(1) == 0).all(1)
    kept = (inputs.video == video).flatten(1).all(1)
    assert torch.equal(dropped | kept, torch.ones_like(dropped)) and (inputs.t_video == 0).all()
    assert abs(dropped.float().mean().item() - 0.3) < 0.04


def test_motion_to_video_drops_text_and_motion_independently():
    video, motion, context = batch(size=2000)
    config = config_for(MOTION_TO_VIDEO, motion_to_video_text_drop=0.2, motion_to_video_motion_drop=0.4)
    inputs = build_training_inputs(config, video, motion, context, generator=torch.Generator().manual_seed(3))
    text_dropped = (inputs.context.flatten(1) == 0).all(1).float()
    motion_dropped = (inputs.motion.flatten(1) == 0).all(1).float()
    assert abs(text_dropped.mean().item() - 0.2) < 0.04
    assert abs(motion_dropped.mean().item() - 0.4) < 0.04
    assert abs((text_dropped * motion_dropped).mean().item() - 0.08) < 0.03  # independent draws


def test_motion_to_video_drops_both_conditions_with_its_own_probability():
    """The unconditional term of eq. 5 gets p_both + (1 − p_both)·p_text·p_motion of the motion→video samples."""
    video, motion, context = batch(size=4000)
    config = config_for(MOTION_TO_VIDEO, motion_to_video_text_drop=0.1, motion_to_video_motion_drop=0.1,
                        motion_to_video_both_drop=0.2)
    inputs = build_training_inputs(config, video, motion, context, generator=torch.Generator().manual_seed(7))
    text_dropped = (inputs.context.flatten(1) == 0).all(1)
    motion_dropped = (inputs.motion.flatten(1) == 0).all(1)
    both = (text_dropped & motion_dropped).float().mean().item()
    assert abs(both - (0.2 + 0.8 * 0.01)) < 0.025
    assert abs(text_dropped.float().mean().item() - (0.2 + 0.8 * 0.1)) < 0.025
    assert (inputs.t_motion == 0).all() and inputs.video_loss_mask.all()
    with pytest.raises(ValueError, match="motion_to_video_both_drop"):
        TaskConfig(motion_to_video_both_drop=-0.1)


def test_joint_drops_only_text():
    video, motion, context = batch(size=2000)
    inputs = build_training_inputs(config_for(JOINT, joint_text_drop=0.25), video, motion, context,
                                   generator=torch.Generator().manual_seed(4))
    assert abs((inputs.context.flatten(1) == 0).all(1).float().mean().item() - 0.25) < 0.04
    assert inputs.video_loss_mask.all() and inputs.motion_loss_mask.all()


def test_task_probabilities_are_followed():
    video, motion, context = batch(size=3000)
    config = TaskConfig(p_joint=0.5, p_motion_to_video=0.3, p_video_to_motion=0.2)
    tasks = build_training_inputs(config, video, motion, context, generator=torch.Generator().manual_seed(5)).task
    frequencies = torch.bincount(tasks, minlength=3).float() / len(tasks)
    assert torch.allclose(frequencies, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)


def test_phase_one_is_motion_only_and_invalid_frames_get_no_loss():
    _, motion, context = batch()
    valid = torch.ones(4, 9, dtype=torch.bool)
    valid[:, 4] = False
    inputs = build_training_inputs(TaskConfig(), None, motion, context, valid,
                                   generator=torch.Generator().manual_seed(6))
    assert inputs.video is None and inputs.t_video is None and (inputs.task == JOINT).all()
    assert not inputs.motion_loss_mask[:, 4].any() and inputs.motion_loss_mask[:, :4].all()
    losses = flow_losses(inputs, None, torch.zeros_like(motion))
    assert set(losses) == {"motion", "loss"}


def test_bad_task_config_is_refused_by_name():
    with pytest.raises(ValueError, match="joint_text_drop"):
        TaskConfig(joint_text_drop=1.5)
    with pytest.raises(ValueError, match="probabilities"):
        TaskConfig(p_joint=0, p_motion_to_video=0, p_video_to_motion=0)


@pytest.mark.parametrize("weighting, expected", [("per_modality", 4.5 + 1.0), ("pooled", (18 + 3) / (4 + 3))])
def test_loss_weighting_by_hand(weighting, expected):
    """Two samples: 0 joint (video and motion noised, its motion frame 1 without a trusted fit), 1 motion→video
    (video noised, motion a clean condition). Predictions are zero, so each squared error is the target squared.
    Video: sample 0 targets 1, 3 and sample 1 targets 2, 2 → 18 over 4 elements (mean 4.5). Motion: only sample 0's
    frame 0 counts, three values of 1 → 3 over 3 elements (mean 1). Per modality: 4.5 + 1; pooled: 21 / 7."""
    video_target = torch.tensor([[1.0, 3.0], [2.0, 2.0]]).reshape(2, 1, 1, 1, 2)
    motion_target = torch.tensor([[[1.0] * 3, [5.0] * 3], [[2.0] * 3, [2.0] * 3]])
    inputs = TrainingInputs(
        video=None, motion=None, t_video=None, t_motion=None, context=torch.zeros(2, 1, 1),
        task=torch.tensor([JOINT, MOTION_TO_VIDEO]), video_target=video_target, motion_target=motion_target,
        video_loss_mask=torch.ones(2, 1, 1, 1, 1, dtype=torch.bool),
        motion_loss_mask=torch.tensor([[[True], [False]], [[False], [False]]]), sigma=torch.zeros(2))
    losses = flow_losses(inputs, torch.zeros_like(video_target), torch.zeros_like(motion_target), weighting)
    assert losses["video"].item() == 4.5 and losses["motion"].item() == 1.0  # logged the same way in both
    assert losses["loss"].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="loss weighting 'mean'"):
        flow_losses(inputs, torch.zeros_like(video_target), torch.zeros_like(motion_target), "mean")


def test_dropout_table_rows_are_the_papers_paradigms():
    table = TaskConfig(joint_text_drop=0.2, motion_to_video_text_drop=0.3, motion_to_video_motion_drop=0.4,
                       motion_to_video_both_drop=0.5, video_to_motion_video_drop=0.6).dropout_table()
    assert table[JOINT] == Dropout(text=0.2, condition=0.0, both=0.0)  # joint has no clean condition
    assert table[MOTION_TO_VIDEO] == Dropout(text=0.3, condition=0.4, both=0.5)
    assert table[VIDEO_TO_MOTION] == Dropout(text=1.0, condition=0.6, both=0.0)  # text always dropped
