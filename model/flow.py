"""Flow matching in Wan's convention, shared by training and sampling.

Wan labels time so that σ = 1 is pure noise and σ = 0 is data:

    x_σ = (1 − σ)·x0 + σ·ε,      the network predicts the velocity  dx_σ/dσ = ε − x0,
    timestep fed to the network = σ · 1000,
    shifted schedule  σ' = s·σ / (1 + (s − 1)·σ)  (s = 8.0 in the paper, both for training and sampling).

The paper writes x_t = t·x1 + (1 − t)·x0 with time running the other way; we follow Wan so that Wan2.1 weights
are reused as they are (see ../shared/notes/model-facts.md).
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = sσ / (1 + (s − 1)σ): spends more steps near σ = 1 (high noise) for s > 1; keeps 0 and 1 fixed."""
    if shift <= 0:
        raise ValueError(f"flow shift must be positive, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_training_sigma(
    batch: int, shift: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B,) noise levels for training: u ~ U(0, 1), shifted like the sampling schedule."""
    u = torch.rand(batch, generator=generator, device="cpu").to(device)
    return shift_sigma(u, shift)


def sigma_to_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """(B,) σ in [0, 1] → (B,) network timestep in [0, 1000]."""
    return sigma * NUM_TRAIN_TIMESTEPS


def _expand(per_sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, …, 1) broadcastable against `like`."""
    return per_sample.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x0 + σ·ε for any (B, …) tensor and (B,) σ."""
    s = _expand(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ε − x0 (what Wan's network predicts)."""
    return noise - x0


def sampling_sigmas(steps: int, shift: float) -> torch.Tensor:
    """(steps + 1,) decreasing noise levels from 1 to 0 for an Euler sampler, shifted."""
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of dx/dσ = v from σ to σ_next (σ_next < σ)."""
    return x + (sigma_next - sigma) * velocity


def masked_squared_error(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors (float32) over the elements where `mask` (broadcastable to prediction) is true."""
    mask = mask.to(prediction.dtype).expand_as(prediction)
    return ((prediction.float() - target.float()) ** 2 * mask).sum()


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the elements where `mask` is true.

    prediction/target: (B, …); mask: broadcastable to them (e.g. (B, 1, …) per sample or (B, F, 1) per frame).
    Returns a scalar; exactly 0 (still attached to the graph) when the mask selects nothing, so a modality that is
    clean in every sample of the batch contributes neither loss nor gradient.
    """
    count = mask.to(prediction.dtype).expand_as(prediction).sum()
    return masked_squared_error(prediction, target, mask) / count.clamp(min=1.0)
