"""`Stage1Backend` on ComfyUI's MODEL (ModelPatcher) and CLIP."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch

import comfy.model_management

from ..prism_core.losses import eps_from_denoised
from ..prism_core.optimize import Cond, Prompt, SlotVectors
from . import text, training_guard

TRAINING_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ComfyStage1Backend:
    """Encodes prompts with learned slots and predicts noise with the host's own primitives.

    Use as a context manager inside ``torch.inference_mode(False)``: entering clones the MODEL's
    and CLIP's patchers (with weight copies where needed), loads them, and patches the CLIP
    layers (and, optionally, checkpointing); leaving restores every module.
    """

    def __init__(self, model: Any, clip: Any, slot_lengths: dict[str, dict[str, int]], resolution: int,
                 max_batch: int = 8, training_dtype: str = "float32", checkpointing: bool = False) -> None:
        self.model, self.clip, self.slot_lengths = model, clip, slot_lengths
        self.resolution, self.max_batch = resolution, max_batch
        self.autocast_dtype = TRAINING_DTYPES[training_dtype]
        self.checkpointing = checkpointing
        self.model_sampling = model.get_model_object("model_sampling")
        self.num_timesteps = int(self.model_sampling.sigmas.shape[0])
        self._tokens: dict[Prompt, dict[str, list]] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "ComfyStage1Backend":
        self.train_model = training_guard.with_weight_copies(self.model)
        self.train_clip = self.clip.clone()
        self.train_clip.patcher = training_guard.with_weight_copies(self.clip.patcher)
        self._stack.enter_context(training_guard.restore_modules(self.model.model, self.clip.cond_stage_model))
        try:
            training_guard.out_of_place_clip_layers(self.clip.cond_stage_model)
            if self.checkpointing:
                training_guard.gradient_checkpointing(self.train_model.model.diffusion_model)
            comfy.model_management.load_models_gpu([self.train_model, self.train_clip.patcher], force_full_load=True)
        except BaseException:
            self._stack.close()  # __exit__ does not run when __enter__ fails
            raise
        self.device = self.train_model.load_device
        self.transformer_options = dict(self.train_model.model_options.get("transformer_options", {}))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    # -- text ---------------------------------------------------------------------------------
    def _conditioning(self, cond: torch.Tensor, pooled: torch.Tensor | None) -> Cond:
        """The model inputs one prompt provides: c_crossattn and the family's extras (SDXL: y from
        the pooled output and the size conditioning, which follows the training resolution)."""
        size = self.resolution
        extras = self.train_model.model.extra_conds(
            cross_attn=cond, pooled_output=pooled, width=size, height=size, target_width=size,
            target_height=size, crop_w=0, crop_h=0, device=self.device)
        unsupported = set(extras) - {"c_crossattn", "y"}
        if unsupported:
            raise ValueError(f"ConceptPrism does not support models that need {sorted(unsupported)} (e.g. inpainting models).")
        return {key: value.cond for key, value in extras.items()}

    def encode(self, prompt: Prompt, vectors: SlotVectors) -> Cond:
        if prompt not in self._tokens:
            self._tokens[prompt] = text.tokenize_with_slots(
                self.train_clip, text.prompt_text(prompt, set(self.slot_lengths)), self.slot_lengths)
        tokens = text.fill_slots(self._tokens[prompt], vectors)
        return self._conditioning(*text.encode_tokens(self.train_clip, tokens))

    def encode_null(self) -> Cond:
        with torch.no_grad():
            return self._conditioning(*text.encode_tokens(self.train_clip, self.train_clip.tokenize("")))

    # -- diffusion ------------------------------------------------------------------------------
    def predict_eps(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor, cond: Cond) -> torch.Tensor:
        sampling = self.model_sampling
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
            denoised = self.train_model.model.apply_model(noisy, sigma, transformer_options=self.transformer_options, **inputs)
        return eps_from_denoised(noisy, denoised.float(), signal_scale, noise_scale)

    def check_interrupt(self) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()

    # -- initialisation ---------------------------------------------------------------------------
    def caption_embedding(self, caption: str) -> dict[str, torch.Tensor]:
        return text.caption_embedding(self.train_clip, caption)

    def vocabulary_statistics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return text.vocabulary_statistics(self.train_clip)



def encode_latents(model: Any, vae: Any, images: torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] pixels -> [N, C, h, w] latents in the model's space, once per run.

    Call before entering the backend: loading the VAE may unload other models to make room.
    """
    with torch.no_grad():
        latents = vae.encode(images[..., :3]).clone()
        return model.model.process_latent_in(latents).float()
