"""The two Stage 1 objectives, in epsilon space for every model family.

ComfyUI models return a denoised estimate x0_hat. Noising is linear in (x0, eps):
x_t = a * x0 + b * eps (a = 1, b = sigma for eps/v models; a = 1 - sigma, b = sigma for flow
models), so eps_hat = (x_t - a * x0_hat) / b recovers the model's noise prediction exactly for
eps models and gives the equivalent eps estimate for v and flow models. Taking the losses on
eps_hat makes Eq. (2) and Eq. (4) mean the same thing for every family, with the paper's uniform
weighting over its uniformly sampled timesteps.
"""
from __future__ import annotations

import torch


def eps_from_denoised(
    noisy: torch.Tensor, denoised: torch.Tensor, signal_scale: torch.Tensor, noise_scale: torch.Tensor
) -> torch.Tensor:
    """Noise estimate from a denoised estimate.

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


def reconstruction_loss(eps_hat: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Eq. (2): ||eps - eps_theta(z_t(i), t, c(i))||^2, averaged over elements. [1,C,H,W] -> scalar."""
    return per_sample_mse(eps_hat, eps).mean()


def exclusion_loss(eps_residual: torch.Tensor, eps_null: torch.Tensor) -> torch.Tensor:
    """Eq. (4): mean over the anchors j in J of ||eps_theta(z_t(j), c_res(i)) - eps_theta(z_t(j), null)||^2.

    eps_residual, eps_null: [K, C, H, W], row k for anchor j_k, both on the same noised z_t(j_k).
    The null branch is a constant target (no gradient), as in Algorithm 1. Returns a scalar.
    """
    return per_sample_mse(eps_residual, eps_null.detach()).mean()


def micro_step_weights(n_anchors: int, beta: float) -> torch.Tensor:
    """Weight of each sample's MSE in L_rec + beta * L_excl for one micro-step.

    Sample 0 is the reconstruction sample (weight 1); samples 1..K are the anchors
    (weight beta / K each, because L_excl is their mean). Returns [1 + K] float32.
    """
    weights = torch.full((1 + n_anchors,), beta / max(n_anchors, 1), dtype=torch.float32)
    weights[0] = 1.0
    return weights
