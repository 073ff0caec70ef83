"""The diffusion model's side of both stages: conditioning inputs and noise predictions, through
the host's own ``extra_conds``, ``noise_scaling`` and ``apply_model`` so every family is covered."""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch

from ..losses import eps_from_denoised

Cond = dict[str, torch.Tensor]

TRAINING_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_inputs(patcher: Any, cond: torch.Tensor, pooled: torch.Tensor | None, resolution: int,
                 device: torch.device) -> Cond:
    """The model inputs one encoded prompt provides: c_crossattn [1, L, D] and the family's extras
    (SDXL: y [1, 2816] from the pooled output and the size conditioning, which follows the training
    resolution with crop 0)."""
    extras = patcher.model.extra_conds(
        cross_attn=cond, pooled_output=pooled, width=resolution, height=resolution, target_width=resolution,
        target_height=resolution, crop_w=0, crop_h=0, device=device)
    unsupported = set(extras) - {"c_crossattn", "y"}
    if unsupported:
        raise ValueError(f"ConceptPrism does not support models that need {sorted(unsupported)} (e.g. inpainting models).")
    return {key: value.cond for key, value in extras.items()}


class NoisePredictor:
    """eps_hat for (latents, timesteps, noise, cond) on a loaded ModelPatcher, under optional autocast.

    The model returns a denoised estimate; eps is recovered from it with the coefficients of the
    host's own noising (x_t = a*x0 + b*eps), so eps, v and flow models all train in eps space.
    """

    def __init__(self, patcher: Any, training_dtype: str = "float32") -> None:
        self.patcher = patcher
        self.sampling = patcher.get_model_object("model_sampling")
        self.num_timesteps = int(self.sampling.sigmas.shape[0])
        # Reduced precision is for accelerators; on the CPU it is slower, so training stays float32 there.
        self.autocast_dtype = TRAINING_DTYPES[training_dtype] if patcher.load_device.type != "cpu" else None
        self.device = patcher.load_device
        self.transformer_options = dict(patcher.model_options.get("transformer_options", {}))

    def __call__(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor, cond: Cond) -> torch.Tensor:
        """latents, noise: [B, C, H, W]; timesteps: B indices into the discrete schedule; cond: batched
        model inputs. Returns eps_hat [B, C, H, W] float32."""
        sampling = self.sampling
        sigma = sampling.sigmas[torch.tensor(list(timesteps))].to(self.device, torch.float32)
        latents, noise = latents.to(self.device), noise.to(self.device)
        noisy = sampling.noise_scaling(sigma, noise, latents)
        # x_t = a*x0 + b*eps: read a and b off the host's own noising, so every family is covered.
        ones, zeros = torch.ones_like(sigma).view(-1, 1), torch.zeros_like(sigma).view(-1, 1)
        signal_scale = sampling.noise_scaling(sigma, zeros, ones).view(-1)
        noise_scale = sampling.noise_scaling(sigma, ones, zeros).view(-1)
        inputs = {k: v.to(self.device) for k, v in cond.items()}
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        with autocast:
            denoised = self.patcher.model.apply_model(noisy, sigma, transformer_options=self.transformer_options, **inputs)
        return eps_from_denoised(noisy, denoised.float(), signal_scale, noise_scale)


def encode_latents(model: Any, vae: Any, images: torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] pixels -> [N, C, h, w] latents in the model's space, once per run.

    Call before loading a training clone: loading the VAE may unload other models to make room.
    """
    with torch.no_grad():
        latents = vae.encode(images[..., :3]).clone()
        return model.model.process_latent_in(latents).float()
