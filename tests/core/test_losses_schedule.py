"""Losses (Eqs. 2, 4) and the sampling plan, checked against direct computations."""
import torch

import pytest

from comfyui_conceptprism.prism_core.training.losses import (eps_from_denoised, exclusion_loss, prism_loss,
                                                    native_coefficients, native_from_denoised, reconstruction_loss)
from comfyui_conceptprism.prism_core.training.schedule import FLOW_SIGMA_LEVELS, draw_noise, flow_sigmas, plan_micro_steps


def test_eps_recovered_from_denoised_for_eps_and_flow_noising():
    x0, eps = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    sigma = torch.tensor([0.03, 1.0, 14.6])
    noisy = x0 + sigma.view(-1, 1, 1, 1) * eps  # eps/v models
    assert torch.allclose(eps_from_denoised(noisy, x0, torch.ones(3), sigma), eps, atol=1e-5)
    s = torch.tensor([0.1, 0.5, 0.9])
    noisy = (1 - s).view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * eps  # flow models
    assert torch.allclose(eps_from_denoised(noisy, x0, 1 - s, s), eps, atol=1e-5)


def test_native_targets_are_eps_and_ddpm_v():
    """The v row written as DDPM does it (alphabar = 1/(1+sigma^2) for the VP schedule ComfyUI's sigmas encode):
    v = sqrt(ab) eps - sqrt(1-ab) x0, from the same (x_t, x0) the pack maps affinely."""
    x0, eps = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    sigma = torch.tensor([0.03, 1.0, 14.6])
    noisy = x0 + sigma.view(-1, 1, 1, 1) * eps
    ones = torch.ones(3)
    assert torch.allclose(native_from_denoised(noisy, x0, *native_coefficients("eps", sigma, ones, sigma)), eps, atol=1e-5)
    alphabar = (1 / (1 + sigma ** 2)).view(-1, 1, 1, 1)
    v = alphabar.sqrt() * eps - (1 - alphabar).sqrt() * x0
    assert torch.allclose(native_from_denoised(noisy, x0, *native_coefficients("v", sigma, ones, sigma)), v, atol=1e-5)
    # eps loss = alphabar * v loss: the weighting the issue measured (high noise down by up to ~200x).
    x0_hat = x0 + 0.1 * torch.randn(3, 4, 5, 5)
    eps_err = native_from_denoised(noisy, x0_hat, *native_coefficients("eps", sigma, ones, sigma)) - eps
    v_err = native_from_denoised(noisy, x0_hat, *native_coefficients("v", sigma, ones, sigma)) - v
    ratio = eps_err.pow(2).flatten(1).mean(1) / v_err.pow(2).flatten(1).mean(1)
    assert torch.allclose(ratio, alphabar.view(-1), rtol=1e-4)
    with pytest.raises(ValueError, match="unknown prediction target"):
        native_coefficients("x0", sigma, ones, sigma)


def test_flow_target_is_the_velocity_and_the_model_output_comes_back():
    """Rectified flow (FLUX.1): x_t = (1 - s) x0 + s eps, target v = eps - x0; a flow model's output u gives
    x0_hat = x_t - s u (the host's CONST.calculate_denoised), and the flow row maps x0_hat back to u."""
    x0, eps, u = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    s = torch.tensor([0.02, 0.5, 1.0])  # the map divides by s: float32 rounding of x_t grows as 1e-7 / s
    sv = s.view(-1, 1, 1, 1)
    noisy = (1 - sv) * x0 + sv * eps
    coefficients = native_coefficients("flow", s, 1 - s, s)
    assert torch.allclose(native_from_denoised(noisy, x0, *coefficients), eps - x0, atol=1e-4)
    assert torch.allclose(native_from_denoised(noisy, noisy - sv * u, *coefficients), u, atol=1e-3)


def test_flow_sigma_grid_covers_0_1_exclusive_inclusive():
    ends = flow_sigmas(torch.tensor([0, FLOW_SIGMA_LEVELS // 2 - 1, FLOW_SIGMA_LEVELS - 1]))
    assert ends.tolist() == [1 / FLOW_SIGMA_LEVELS, 0.5, 1.0]


def test_exclusion_loss_is_mean_over_anchors_and_null_gets_no_gradient():
    res = torch.randn(3, 4, 2, 2, requires_grad=True)
    null = torch.randn(3, 4, 2, 2, requires_grad=True)
    loss = exclusion_loss(res, null)
    per_anchor = [((res[k] - null[k]) ** 2).mean() for k in range(3)]
    assert torch.allclose(loss, sum(per_anchor) / 3)
    loss.backward()
    assert res.grad is not None and null.grad is None
    assert torch.allclose(reconstruction_loss(res[:1], null[:1]), per_anchor[0])


def test_prism_loss_is_rec_plus_beta_times_excl():
    assert prism_loss(torch.tensor(2.0), torch.tensor(4.0), 0.05).item() == pytest.approx(2.0 + 0.05 * 4.0)
    assert prism_loss(torch.tensor(2.0), torch.tensor(4.0), 0.0).item() == 2.0


def test_plan_is_deterministic_balanced_and_anchors_exclude_the_image():
    plan = plan_micro_steps(5, 3, steps=10, accumulation=4, num_timesteps=1000, seed=7)
    assert plan == plan_micro_steps(5, 3, steps=10, accumulation=4, num_timesteps=1000, seed=7)
    assert plan != plan_micro_steps(5, 3, steps=10, accumulation=4, num_timesteps=1000, seed=8)
    flat = [m for group in plan for m in group]
    assert len(plan) == 10 and all(len(g) == 4 for g in plan)
    for m in flat:
        assert m.image not in m.anchors and len(set(m.anchors)) == 3
        assert len(m.timesteps) == 4 and all(0 <= t < 1000 for t in m.timesteps)
    counts = torch.bincount(torch.tensor([m.image for m in flat]), minlength=5)
    assert counts.max() - counts.min() <= 1  # 40 micro-steps = 8 epochs of 5 images
    noise = draw_noise(flat[0], torch.Size([4, 8, 8]))
    assert noise.shape == (4, 4, 8, 8) and torch.equal(noise, draw_noise(flat[0], torch.Size([4, 8, 8])))
