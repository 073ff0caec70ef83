"""Training inputs checked once, before any step: a NaN or inf in the pixels or latents is the input's
fault, not the learning rate's, and the message names the image and what to change.

Without this, a non-finite latent (a float16 VAE overflowing on one image, NaN pixels from an upstream
node) only shows when the loss of the first micro-step that samples it turns non-finite, and the loss
check can only advise a lower learning rate. Pure module: torch only.
"""
from __future__ import annotations

from typing import Sequence

import torch


class NonFiniteInputError(ValueError):
    """Pixels or latents with NaN or inf values; the message names the images and the fix."""


def _bad(items: Sequence[torch.Tensor] | torch.Tensor) -> list[int]:
    return [i for i, item in enumerate(items) if not bool(torch.isfinite(item).all())]


def _label(names: Sequence[str], bad: list[int]) -> str:
    total = len(names)
    return ", ".join(f"'{names[i]}' (image {i + 1} of {total})" for i in bad)


def check_pixels(images: Sequence[torch.Tensor] | torch.Tensor, names: Sequence[str], source: str) -> None:
    """images: per image [H, W, C] (or a batch [N, H, W, C]); raises NonFiniteInputError for any NaN/inf pixel."""
    bad = _bad(images)
    if bad:
        raise NonFiniteInputError(
            f"ConceptPrism: {_label(names, bad)} from {source} has NaN or infinite pixels, so nothing could learn from it. "
            "The node that made the image produced them (a VAE Decode in float16 that overflowed does this: start "
            "ComfyUI with --fp32-vae, or use a VAE fixed for float16); fix or replace that node, or remove the image.")


def check_latents(latents: torch.Tensor, names: Sequence[str]) -> None:
    """latents: [N, C, h, w], one per concept-set image; raises NonFiniteInputError naming each non-finite one."""
    bad = _bad(latents)
    if bad:
        raise NonFiniteInputError(
            f"ConceptPrism: the VAE encoded {_label(names, bad)} to NaN or infinite latents (its pixels are finite), "
            "before any training step. A VAE running in float16 overflows like this on some images: start ComfyUI "
            "with --fp32-vae (or load a float32 VAE), or use a VAE fixed for float16 (for SDXL, sdxl-vae-fp16-fix). "
            "The learning rate is not the cause.")


def check_training_inputs(images: torch.Tensor, latents: torch.Tensor, names: Sequence[str], source: str) -> None:
    """Both stages, once per run: images [N, R, R, 3] (the concept set) then their latents [N, C, h, w]."""
    check_pixels(images, names, source)
    check_latents(latents, names)
