"""The diffusion model's side of both stages: conditioning inputs, native predictions and targets,
through the host's own ``extra_conds``, ``noise_scaling`` and ``apply_model`` so every family is covered."""
from __future__ import annotations

from typing import Any, Sequence

import torch

import comfy.model_management

from ..training.losses import native_coefficients, native_from_denoised
from ..training.prompts import reconstruction_prompt
from ..formats.token_bank import PrismTokens
from ..training.schedule import flow_sigmas
from . import text
from .internals.model_facts import condition_tensors, device_computes, supported_dtypes

Cond = dict[str, torch.Tensor]

# training_dtype widget value -> the diffusion model's compute dtype on the training clone, whatever
# dtype its weights are stored in (float16 on most GPUs). "auto" is resolved per model and device (compute_dtype).
TRAINING_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(training_dtype: str, model: Any) -> torch.dtype:
    """The compute dtype for a training_dtype choice on `model` (a MODEL patcher; its ``load_device`` is where it
    trains. A bare torch.device is taken as a model with the host's default dtype order).

    "auto": the first dtype of the model's host-allowed list (`supported_dtypes`, in the host's order) that the
    host would run on this device: float16 where ``model_management.should_use_fp16`` says so (CUDA cards
    with usable float16), bfloat16 where ``should_use_bf16`` does, float32 always; float32 on the CPU, where
    reduced precision is slower. So SD models get loss-scaled float16 on float16 cards (measured on float16-
    stored tiny models, bench/run.py precision: the float32 gradient to a cosine of 0.9999999 for half the
    activation memory), and FLUX.1, which the host lists bfloat16-first, gets bfloat16 where the card has it,
    as ComfyUI samples it, the reference FLUX trainer and the paper train it: in float16 the host clamps
    FLUX's text stream with ``nan_to_num``, which zeroes the token gradients where it clamps. On a card without
    bfloat16 FLUX.1 gets float16, the host's next choice and what it samples FLUX in there (float32 would
    double activation memory on cards that are the smallest already). The device predicates are read with
    ``prioritize_performance=False``: whether the device computes the dtype, not whether it is the fastest
    choice for inference. Raises KeyError for another name."""
    chosen = TRAINING_DTYPES[training_dtype]
    if chosen is not None:
        return chosen
    device = model if isinstance(model, torch.device) else model.load_device
    if device.type == "cpu":
        return torch.float32
    return next((dtype for dtype in supported_dtypes(model) if device_computes(device, dtype)), torch.float32)


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' / 'bfloat16' / 'float16', as stored in token banks and LoRA headers."""
    return str(dtype).replace("torch.", "")


def model_inputs(patcher: Any, cond: torch.Tensor, pooled: torch.Tensor | None, resolution: int,
                 device: torch.device, guidance: float | None = None) -> Cond:
    """The model inputs one encoded prompt provides: c_crossattn [1, L, D] and the family's extras
    (SDXL: y [1, 2816] from the pooled output and the size conditioning, which follows the training
    resolution with crop 0; FLUX.1: y [1, 768] = CLIP-L's pooled output and guidance [1], which FLUX.1-dev
    embeds and schnell ignores; Z-Image: num_tokens, the int L, as the host derives it from an unpadded prompt).
    guidance None: the host's default (3.5, as a sampler without FluxGuidance
    uses). Raises ValueError for models that need inputs the pack cannot provide (e.g. inpainting)."""
    extras = patcher.model.extra_conds(
        cross_attn=cond, pooled_output=pooled, width=resolution, height=resolution, target_width=resolution,
        target_height=resolution, crop_w=0, crop_h=0, device=device,
        **({"guidance": guidance} if guidance is not None else {}))
    unsupported = set(extras) - {"c_crossattn", "y", "guidance", "num_tokens"}
    if unsupported:
        raise ValueError(f"ConceptPrism does not support models that need {sorted(unsupported)} (e.g. inpainting models).")
    return condition_tensors(extras)


def plan_sigmas(sampling: Any, kind: str, timesteps: Sequence[int]) -> torch.Tensor:
    """sigma [B] float32 (CPU) of plan indices: the discrete schedule's sigmas, or the flow grid's."""
    indices = torch.tensor(list(timesteps))
    return flow_sigmas(indices) if kind == "flow" else sampling.sigmas[indices].float().cpu()


class Predictor:
    """Native predictions and targets for (latents, timesteps, noise, cond) on a loaded training clone.

    The model returns a denoised estimate x0_hat; the family's native prediction (eps_hat, v_hat) is an
    affine map of (x_t, x0_hat) whose coefficients come from the host's own noising (x_t = a*x0 + b*eps,
    read off ``noise_scaling``) and sigma_data, and the target is the same map of (x_t, x0)
    (prism_core.training.losses). Compute precision is the clone's (``set_model_compute_dtype``, see
    training_guard.loaded_training_clones); float16 compute asks the loops to scale the loss.
    """

    def __init__(self, patcher: Any, target: str, compute_dtype: torch.dtype = torch.float32) -> None:
        self.patcher = patcher
        self.sampling = patcher.get_model_object("model_sampling")
        self.kind = target
        self.loss_scaling = compute_dtype == torch.float16
        self.device = patcher.load_device
        self.transformer_options = dict(patcher.model_options.get("transformer_options", {}))

    def _noised(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigma [B], x_t [B,C,H,W], c_x [B], c_d [B]) with native = c_x * x_t + c_d * denoised."""
        sampling = self.sampling
        sigma = plan_sigmas(sampling, self.kind, timesteps).to(self.device)
        latents, noise = latents.to(self.device, torch.float32), noise.to(self.device, torch.float32)
        noisy = sampling.noise_scaling(sigma, noise, latents)
        ones, zeros = torch.ones_like(sigma).view(-1, 1), torch.zeros_like(sigma).view(-1, 1)
        signal_scale = sampling.noise_scaling(sigma, zeros, ones).view(-1)
        noise_scale = sampling.noise_scaling(sigma, ones, zeros).view(-1)
        c_x, c_d = native_coefficients(self.kind, sigma, signal_scale, noise_scale, float(getattr(sampling, "sigma_data", 1.0)))
        return sigma, noisy, c_x, c_d

    def predict(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor, cond: Cond) -> torch.Tensor:
        """latents, noise: [B, C, H, W]; timesteps: B plan indices (`plan_sigmas`); cond: batched
        model inputs. Returns the native prediction [B, C, H, W] float32."""
        sigma, noisy, c_x, c_d = self._noised(latents, timesteps, noise)
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
        denoised = self.patcher.model.apply_model(noisy, sigma, transformer_options=self.transformer_options, **inputs)
        return native_from_denoised(noisy, denoised.float(), c_x, c_d)

    def target(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor) -> torch.Tensor:
        """The native target [B, C, H, W] float32 of the same samples (eps, v, or the flow velocity eps - x0)."""
        if self.kind == "flow":
            # eps - x0 exactly: the affine map would divide x_t's float32 rounding by sigma (small for sigma near 0)
            return noise.to(self.device, torch.float32) - latents.to(self.device, torch.float32)
        _, noisy, c_x, c_d = self._noised(latents, timesteps, noise)
        return native_from_denoised(noisy, latents.to(self.device, torch.float32), c_x, c_d)


class PredictingBackend:
    """What both stages' backends share once their training clone is loaded: native predictions and
    targets through a `Predictor` (set as ``self._predictor`` on entering), and the Cancel check."""

    _predictor: Predictor

    def predict(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self._predictor.predict(latents, timesteps, noise, cond)

    def target(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor) -> torch.Tensor:
        return self._predictor.target(latents, timesteps, noise)

    def check_interrupt(self) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()


def encode_latents(model: Any, vae: Any, images: torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] pixels -> [N, C, h, w] latents in the model's space, once per run.

    Call before loading a training clone: loading the VAE may unload other models to make room. Raises
    ValueError when the VAE's latents have another channel count than the MODEL takes (e.g. an SD VAE on FLUX).
    """
    wanted = model.model.latent_format.latent_channels
    with torch.no_grad():
        latents = vae.encode(images[..., :3]).clone()
        if latents.shape[1] != wanted:
            raise ValueError(f"The VAE makes {latents.shape[1]}-channel latents, but this MODEL takes {wanted}-channel ones: "
                             "connect the VAE of this model (Load VAE: FLUX.1 and Z-Image ae.safetensors, FLUX.2 Klein "
                             "flux2-vae.safetensors; SD: the checkpoint's VAE).")
        return model.model.process_latent_in(latents).float()


@torch.no_grad()
def training_conditionings(model: Any, clip: Any, tokens: PrismTokens, resolution: int,
                           guidance: float | None = None) -> list[Cond]:
    """conds[i]: model inputs for image i's fixed prompt "<t_target> with <t_res(i)>", encoded once
    per run through the host's own encode_from_tokens (CLIPSetLastLayer honoured); guidance: FLUX.1's
    guidance input (None: the host's default). Call inside ``torch.inference_mode(False)``: the copies
    returned are ordinary tensors autograd may save."""
    has_residual = tokens.residual_length > 0
    conds = []
    for i in range(len(tokens.image_names)):
        filled = text.bank_tokens(clip, tokens, "", reconstruction_prompt(i, has_residual).parts)
        cond, pooled = clip.encode_from_tokens(filled, return_pooled=True)
        inputs = model_inputs(model, cond, pooled, resolution, torch.device("cpu"), guidance)
        conds.append({k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
    return conds
