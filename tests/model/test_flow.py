"""Flow matching in Wan's convention: σ = 1 noise, x_σ = (1 − σ)x0 + σε, target ε − x0, shifted schedules."""

import torch

from humove.model import flow


def test_shift_matches_formula_and_keeps_the_ends():
    sigma = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    shifted = flow.shift_sigma(sigma, 8.0)
    assert torch.allclose(shifted, 8 * sigma / (1 + 7 * sigma))
    assert shifted[0] == 0 and shifted[-1] == 1
    assert (shifted[1:-1] > sigma[1:-1]).all()  # more time at high noise
    assert torch.equal(flow.shift_sigma(sigma, 1.0), sigma)


def test_noising_ends_and_velocity_is_the_derivative():
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, generator=generator), torch.randn(3, 4, 5, generator=generator)
    assert torch.equal(flow.add_noise(x0, noise, torch.zeros(3)), x0)
    assert torch.equal(flow.add_noise(x0, noise, torch.ones(3)), noise)
    sigma, eps = torch.tensor([0.2, 0.5, 0.8]), 1e-3
    derivative = (flow.add_noise(x0, noise, sigma + eps) - flow.add_noise(x0, noise, sigma - eps)) / (2 * eps)
    assert torch.allclose(derivative, flow.velocity_target(x0, noise), atol=1e-3)
    assert torch.equal(flow.sigma_to_timestep(torch.tensor([0.0, 0.25, 1.0])), torch.tensor([0.0, 250.0, 1000.0]))


def test_euler_on_the_exact_velocity_lands_on_the_data():
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 7, generator=generator), torch.randn(2, 7, generator=generator)
    sigmas = flow.sampling_sigmas(50, 8.0)
    assert sigmas.shape == (51,) and sigmas[0] == 1 and sigmas[-1] == 0 and (sigmas.diff() < 0).all()
    x = noise.clone()
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        x = flow.euler_step(x, noise - x0, s, s_next)  # straight path: the velocity is constant
    assert torch.allclose(x, x0, atol=1e-5)


def test_training_sigmas_are_shifted_uniforms():
    sigma = flow.sample_training_sigma(20000, 8.0, torch.Generator().manual_seed(0))
    assert 0 <= sigma.min() and sigma.max() <= 1
    # P(σ' < 8u/(1+7u)) = u: the median of σ' is shift(0.5) = 8/9.
    assert abs(sigma.median().item() - 8 / 9) < 0.01


def test_masked_mse_counts_only_selected_elements_and_is_zero_when_none_are():
    prediction = torch.zeros(2, 3, requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    loss = flow.masked_mse(prediction, target, torch.tensor([[True], [False]]))
    assert loss.item() == 1.0
    empty = flow.masked_mse(prediction, target, torch.zeros(2, 1, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(prediction.grad, torch.zeros(2, 3))
