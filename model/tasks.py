"""Which modality is generated and which conditions, per training sample (paper §3.2, "mixed in-context learning").

Phase 2 samples one paradigm per sample:

| task           | id | noised (gets a loss) | clean condition (t = 0, no loss) | condition dropout                    |
|----------------|----|----------------------|----------------------------------|--------------------------------------|
| joint          | 0  | video and motion     | —                                | text dropped at random               |
| motion → video | 1  | video                | motion                           | text, motion, or both dropped        |
| video → motion | 2  | motion               | video                            | text always dropped, video at random |

Phase 1 is motion only (the video is absent from the sequence): every sample is generated as task 0 with
motion noised and the joint paradigm's text dropout, so text CFG works for motion generation too.

Choices the paper leaves open (documented here, used the same way by the sampler):
- A dropped text is an all-zero context (the contract with the network); a dropped video or motion condition is
  an all-zero latent / normalised-motion tensor kept in the sequence with t = 0. Keeping the tokens in place (rather
  than removing them) lets one batch mix dropped and kept conditions, keeps every parameter in use each step
  (DDP/FSDP need no unused-parameter search), and the sampler builds its "∅" inputs the same way.
- Joint samples share one σ for both modalities (the sampler denoises both on one schedule).
- Motion → video drops text and motion independently, and in addition both together with probability
  `motion_to_video_both_drop`: independent draws alone (0.1 · 0.1 of a third of the samples) would train the
  unconditional term u(x_t, ∅, ∅) of eq. 5 on 0.3% of phase-2 samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from humove.model import flow

JOINT, MOTION_TO_VIDEO, VIDEO_TO_MOTION = 0, 1, 2
TASK_NAMES = {JOINT: "joint", MOTION_TO_VIDEO: "motion2video", VIDEO_TO_MOTION: "video2motion"}


@dataclass(frozen=True)
class Dropout:
    """Condition dropout of one paradigm: the text and the clean condition are each dropped on their own draw with
    their probability, and both together with probability `both`."""

    text: float
    condition: float  # the clean modality: motion for motion→video, video for video→motion, none for joint
    both: float


@dataclass
class TaskConfig:
    """Paradigm probabilities (phase 2) and per-paradigm condition-dropout probabilities."""

    p_joint: float = 1 / 3
    p_motion_to_video: float = 1 / 3
    p_video_to_motion: float = 1 / 3
    joint_text_drop: float = 0.1
    motion_to_video_text_drop: float = 0.1
    motion_to_video_motion_drop: float = 0.1
    motion_to_video_both_drop: float = 0.1  # drop text and motion together (the unconditional term of eq. 5)
    video_to_motion_video_drop: float = 0.1
    shift: float = 8.0

    def __post_init__(self) -> None:
        probs = self.task_probabilities()
        if (probs < 0).any() or probs.sum() <= 0:
            raise ValueError(f"task probabilities must be >= 0 with a positive sum, got {probs.tolist()}")
        for name in ("joint_text_drop", "motion_to_video_text_drop", "motion_to_video_motion_drop",
                     "motion_to_video_both_drop", "video_to_motion_video_drop"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"task config {name}={value} is not a probability")

    def dropout_table(self) -> dict[int, Dropout]:
        """Per paradigm, the probabilities of dropping its conditions (paper §3.2: joint drops text; motion→video
        drops text and motion; video→motion always drops text and drops video at random)."""
        return {
            JOINT: Dropout(text=self.joint_text_drop, condition=0.0, both=0.0),
            MOTION_TO_VIDEO: Dropout(text=self.motion_to_video_text_drop, condition=self.motion_to_video_motion_drop,
                                     both=self.motion_to_video_both_drop),
            VIDEO_TO_MOTION: Dropout(text=1.0, condition=self.video_to_motion_video_drop, both=0.0),
        }

    def task_probabilities(self) -> torch.Tensor:
        return torch.tensor([self.p_joint, self.p_motion_to_video, self.p_video_to_motion], dtype=torch.float64)


@dataclass
class TrainingInputs:
    """Everything one training forward/loss needs. Shapes: video (B, C, T, H, W), motion (B, F, 235)."""

    video: torch.Tensor | None  # network input: noised, clean condition, or zeros (dropped)
    motion: torch.Tensor | None
    t_video: torch.Tensor | None  # (B,) in [0, 1000]; 0 where the video is a clean condition
    t_motion: torch.Tensor | None
    context: torch.Tensor  # (B, L, D); zeros where the text is dropped
    task: torch.Tensor  # (B,) long
    video_target: torch.Tensor | None  # ε − x0
    motion_target: torch.Tensor | None
    video_loss_mask: torch.Tensor | None  # (B, 1, 1, 1, 1) true where the video was noised
    motion_loss_mask: torch.Tensor | None  # (B, F, 1) true where the motion was noised and the frame is valid
    sigma: torch.Tensor  # (B,) noise level of the generated modalities


def _where_sample(keep: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample choice between a and b: (B,) bool → (B, …)."""
    return torch.where(keep.to(a.device).reshape(-1, *([1] * (a.dim() - 1))), a, b)


def _modality_inputs(clean: torch.Tensor, noised: torch.Tensor, dropped: torch.Tensor, sigma: torch.Tensor,
                     t_noise: torch.Tensor, generator: torch.Generator | None):
    """One modality's network input, timestep and target. Noised samples get x_σ and t_noise; the others are a
    clean condition with t = 0, or zeros where that condition is dropped. Returns (input, t (B,), target)."""
    device = clean.device
    noise = torch.randn(clean.shape, generator=generator).to(device=device, dtype=clean.dtype)
    model_input = _where_sample(
        noised, flow.add_noise(clean, noise, sigma.to(device)),
        _where_sample(dropped, torch.zeros_like(clean), clean),
    )
    t = torch.where(noised, t_noise, torch.zeros_like(t_noise)).to(device)
    return model_input, t, flow.velocity_target(clean, noise)


def sample_tasks(config: TaskConfig, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) long task ids drawn with the configured probabilities."""
    probs = config.task_probabilities()
    return torch.multinomial(probs / probs.sum(), batch, replacement=True, generator=generator)


def build_training_inputs(
    config: TaskConfig,
    video: torch.Tensor | None,
    motion: torch.Tensor,
    context: torch.Tensor,
    motion_valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> TrainingInputs:
    """Sample tasks, noise levels, noise and condition dropout for one batch.

    video: (B, C, T, H, W) clean VAE latents, or None in phase 1 (video absent); motion: (B, F, 235) normalised
    clean motion features; context: (B, L, D) text embeddings; motion_valid: (B, F) bool, frames with a trusted fit
    (frames without one get no motion loss). All random draws come from `generator` (CPU) so a run is reproducible.
    """
    batch, device = motion.shape[0], motion.device
    if video is None:
        tasks = torch.full((batch,), JOINT, dtype=torch.long)
    else:
        tasks = sample_tasks(config, batch, generator)
    sigma = flow.sample_training_sigma(batch, config.shift, generator)
    t_noise = flow.sigma_to_timestep(sigma)

    # Condition dropout (paper §3.2), each sample with its paradigm's row of the table. The condition is the clean
    # modality (motion for motion→video, video for video→motion): each modality below uses `drop_condition` only
    # where it is not noised.
    dropout = config.dropout_table()
    p_text, p_condition, p_both = (torch.tensor([getattr(dropout[task], column) for task in TASK_NAMES])[tasks]
                                   for column in ("text", "condition", "both"))
    u_text, u_condition, u_both = (torch.rand(batch, generator=generator) for _ in range(3))
    drop_both = u_both < p_both
    drop_text = (u_text < p_text) | drop_both
    drop_condition = (u_condition < p_condition) | drop_both

    context = _where_sample(~drop_text.to(device), context, torch.zeros_like(context))

    motion_noised = (tasks == JOINT) | (tasks == VIDEO_TO_MOTION)
    motion_in, t_motion, motion_target = _modality_inputs(motion, motion_noised, drop_condition, sigma, t_noise,
                                                          generator)
    frame_mask = torch.ones(motion.shape[:2], dtype=torch.bool, device=device) if motion_valid is None \
        else motion_valid.to(device=device, dtype=torch.bool)
    motion_loss_mask = (motion_noised.to(device)[:, None] & frame_mask)[..., None]

    video_in = t_video = video_target = video_loss_mask = None
    if video is not None:
        video_noised = (tasks == JOINT) | (tasks == MOTION_TO_VIDEO)
        video_in, t_video, video_target = _modality_inputs(video, video_noised, drop_condition, sigma, t_noise,
                                                           generator)
        video_loss_mask = video_noised.to(device).reshape(-1, 1, 1, 1, 1)

    return TrainingInputs(
        video=video_in, motion=motion_in, t_video=t_video, t_motion=t_motion, context=context,
        task=tasks.to(device), video_target=video_target, motion_target=motion_target,
        video_loss_mask=video_loss_mask, motion_loss_mask=motion_loss_mask, sigma=sigma.to(device),
    )


LOSS_WEIGHTINGS = ("per_modality", "pooled")


def flow_losses(
    inputs: TrainingInputs, video_pred: torch.Tensor | None, motion_pred: torch.Tensor | None,
    weighting: str = "per_modality",
) -> dict[str, torch.Tensor]:
    """Flow-matching losses over the noised samples only (and, for motion, the valid frames).

    Returns {"loss": what is trained, "video": …, "motion": …} (scalars; a modality absent from the batch is left
    out). "video" and "motion" are each modality's mean squared error; "loss" depends on `weighting`:
    - "per_modality": their sum, so motion weighs as much as video whatever their element counts;
    - "pooled": one mean over all the noised elements of both (the paper's eq. 8 read literally), where motion
      weighs by its share of the elements (19,035 of 2,115,675 per joint sample at 81 frames, 480×832: 0.9 %).
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss weighting {weighting!r}: choose from {LOSS_WEIGHTINGS}")
    terms = []  # (prediction, target, mask) of the modalities predicted
    if inputs.video_target is not None and video_pred is not None:
        terms.append(("video", video_pred, inputs.video_target, inputs.video_loss_mask))
    if inputs.motion_target is not None and motion_pred is not None:
        terms.append(("motion", motion_pred, inputs.motion_target, inputs.motion_loss_mask))
    if not terms:
        raise ValueError("no modality to compute a loss on: the network returned no prediction")
    losses = {name: flow.masked_mse(pred, target, mask) for name, pred, target, mask in terms}
    if weighting == "per_modality":
        losses["loss"] = sum(losses.values())
    else:
        squared = sum(flow.masked_squared_error(pred, target, mask) for _, pred, target, mask in terms)
        count = sum(mask.expand_as(pred).sum() for _, pred, _, mask in terms)
        losses["loss"] = squared / count.clamp(min=1)
    return losses
