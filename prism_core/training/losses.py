"""The two Stage 1 objectives (and Stage 2's), on each model family's native target.

ComfyUI models return a denoised estimate x0_hat, and noising is linear in (x0, eps):
x_t = a * x0 + b * eps (a = 1, b = sigma for eps and v models; a = 1 - sigma, b = sigma for flow
models). Every family's native prediction is an affine map of (x_t, x0_hat) with coefficients
that depend only on sigma, and its native target is the same map applied to (x_t, x0):
- eps:  eps_hat = (x_t - a * x0_hat) / b;
- v (variance-preserving, sigma_data s): v_hat = k * (x_t * s^2 / (sigma^2 + s^2) - x0_hat) with
  k = sqrt(sigma^2 + s^2) / (sigma * s), the inverse of the host's V_PREDICTION.calculate_denoised;
  for s = 1 this is (eps - sigma * x0) / sqrt(1 + sigma^2), the DDPM v = sqrt(ab) eps - sqrt(1-ab) x0;
- flow velocity (eps - x0): (x_t - x0_hat) / sigma, the output of the host's flow models itself
  (its CONST sampling computes x0_hat = x_t - sigma * output), so the map only undoes that.
The reference implementation trains each family on its own target (eps, v, flow velocity), with the
paper's uniform weighting over its sampled timesteps; an eps loss on a v model would weight each
step by alphabar_t = 1 / (1 + sigma^2) instead (high-noise steps down by up to ~200x for SD).
"""
from __future__ import annotations

import torch

TARGETS = ("eps", "v", "flow")


def native_coefficients(target: str, sigma: torch.Tensor, signal_scale: torch.Tensor, noise_scale: torch.Tensor,
                        sigma_data: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_x, c_d) with native = c_x * x_t + c_d * denoised, per sample.

    target: "eps", "v" or "flow"; sigma, signal_scale (a), noise_scale (b): [B] with x_t = a*x0 + b*eps.
    The v row is written for the noising of the host's EPS/V_PREDICTION family (a = 1, b = sigma), the
    only one a v model has there. The flow row is the velocity eps - x0 of rectified flow (FLUX.1: a = 1 - sigma,
    b = sigma): eps - x0 = x_t / b - (a + b) / b * x0, i.e. (x_t - x0) / sigma. Raises ValueError for another
    target name.
    """
    if target == "eps":
        return 1.0 / noise_scale, -signal_scale / noise_scale
    if target == "v":
        k = torch.sqrt(sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data)
        return k * sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2), -k
    if target == "flow":
        return 1.0 / noise_scale, -(signal_scale + noise_scale) / noise_scale
    raise ValueError(f"unknown prediction target {target!r}; expected one of {TARGETS}")


def native_from_denoised(noisy: torch.Tensor, denoised: torch.Tensor, noisy_weight: torch.Tensor,
                         denoised_weight: torch.Tensor) -> torch.Tensor:
    """noisy_weight * x_t + denoised_weight * x0_hat, per sample.

    noisy, denoised: [B, C, H, W]; weights: [B] from `native_coefficients`. Returns [B, C, H, W].
    """
    assert noisy.shape == denoised.shape, (noisy.shape, denoised.shape)
    shape = (-1,) + (1,) * (noisy.ndim - 1)
    return noisy_weight.view(shape) * noisy + denoised_weight.view(shape) * denoised


def eps_from_denoised(
    noisy: torch.Tensor, denoised: torch.Tensor, signal_scale: torch.Tensor, noise_scale: torch.Tensor
) -> torch.Tensor:
    """Noise estimate from a denoised estimate (the eps row of `native_coefficients`).

    noisy, denoised: [B, C, H, W]; signal_scale (a), noise_scale (b): [B], with x_t = a*x0 + b*eps.
    Returns eps_hat: [B, C, H, W].
    """
    assert noisy.shape == denoised.shape, (noisy.shape, denoised.shape)
    shape = (-1,) + (1,) * (noisy.ndim - 1)
    return (noisy - signal_scale.view(shape) * denoised) / noise_scale.view(shape)


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample: [B, ...] x [B, ...] -> [B]."""
    assert prediction.shape == target.shape, (prediction.shape, target.shape)
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. (2), L_rec, on the native target: ||target - prediction(z_t(i), t, c(i))||^2, averaged over elements
    (for eps models the paper's ||eps - eps_theta||^2) and over the samples given. [B,C,H,W] x2 -> scalar."""
    return per_sample_mse(prediction, target).mean()


def exclusion_loss(eps_residual: torch.Tensor, eps_null: torch.Tensor) -> torch.Tensor:
    """Eq. (4), L_excl: mean over the anchors j in J of ||eps_theta(z_t(j), c_res(i)) - eps_theta(z_t(j), null)||^2,
    with both predictions in the family's native parameterisation (eps, v, flow).

    eps_residual, eps_null: [K, C, H, W], row k for anchor j_k, both on the same noised z_t(j_k).
    The null branch is a constant target (no gradient), as in Algorithm 1. Returns a scalar.
    """
    return per_sample_mse(eps_residual, eps_null.detach()).mean()


def prism_loss(rec: torch.Tensor, excl: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. (5), the Stage 1 objective: L = L_rec + beta * L_excl (scalars; beta = 0 or no anchors: L_rec)."""
    return rec + beta * excl


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite; the message names the step and the fix."""
