"""Embeddings for CLIP-T, CLIP-I and DINO through the host's own models and preprocessing.

Images: a CLIP_VISION from the host's CLIPVisionLoader, encoded with its own ``encode_image`` (its
resize, center crop and normalisation: 224 px and CLIP's mean/std for CLIP, 518 px and ImageNet's
for DINOv2); CLIP's ``image_embeds`` is the projected embedding, DINOv2's is the CLS token after the
final norm. Text: a CLIP's pooled output with its text projection applied (the host's own
``projected_pooled`` option), which lies in the vision tower's space only when the text encoder
carries its projection and belongs to the same CLIP model (see the README's table of pairs).
"""
from __future__ import annotations

from typing import Any

import torch

import comfy.model_management

from ..judging.scores import ImageScore, clip_t_prompt, image_scores
from .internals.host_helpers import vision_kind
from .internals.text_encoders import projected_pooled

# Pairs of a CLIP vision file and a text encoder that are two halves of one CLIP model, for messages.
MATCHING_PAIRS = ("CLIP-ViT-bigG-14 / clip_vision_g (1280) with an SDXL checkpoint's CLIP or SD3's clip_g; "
                  "CLIP-ViT-H-14-laion2B-s32B-b79K (1024) with an SD 2.x checkpoint's CLIP; "
                  "openai clip-vit-large-patch14 (768) with SD3's clip_l (CLIPLoader, type stable_diffusion)")
ENCODE_BATCH = 16


def check_vision(clip_vision: Any, expected: str, input_name: str) -> None:
    """Raise, naming the input, when a CLIP_VISION is not the kind the metric needs."""
    kind = vision_kind(clip_vision)
    if kind == expected:
        return
    if expected == "dinov2":
        raise ValueError(f"{input_name}: this is a {kind} vision model, not DINOv2. Load a DINOv2 file with Load CLIP "
                         "Vision (ComfyUI recognises DINOv2 large and giant, e.g. facebook/dinov2-large's "
                         "model.safetensors in models/clip_vision).")
    raise ValueError(f"{input_name}: this is a {kind} vision model, not CLIP. Load a CLIP vision file with Load CLIP "
                     f"Vision; pairs that match a text encoder: {MATCHING_PAIRS}.")


def image_embeddings(clip_vision: Any, images: torch.Tensor) -> torch.Tensor:
    """[N, D] float32 on CPU: ``encode_image(images, crop=True)["image_embeds"]``, ENCODE_BATCH images a call."""
    rows = []
    for chunk in images.split(ENCODE_BATCH):
        comfy.model_management.throw_exception_if_processing_interrupted()
        rows.append(clip_vision.encode_image(chunk, crop=True)["image_embeds"].float().cpu())
    return torch.cat(rows)


def projected_text_embedding(clip: Any, prompt: str) -> torch.Tensor | None:
    """[1, D]: the CLIP's pooled output for `prompt` with the text projection applied, as
    ``CLIP.encode_from_tokens(..., return_pooled=True)`` computes it, but with the host's own
    ``projected_pooled`` clip option on: SD1.x-style clip_l encoders return the unprojected pooled
    state by default (SD2's clip_h and SDXL's clip_g already project). None when the encoder has no
    pooled output."""
    return projected_pooled(clip, clip.tokenize(prompt))


def text_embeddings(clip: Any, prompts: list[str]) -> torch.Tensor:
    """[P, D] float32 on CPU: the projected text embedding per prompt (each distinct prompt encoded once).

    Raises when the CLIP gives no pooled output, or a zero or non-finite one: a text encoder loaded
    without its text projection (SD1.x checkpoints carry none, and ComfyUI leaves that weight unset).
    """
    cache: dict[str, torch.Tensor] = {}
    for prompt in prompts:
        if prompt in cache:
            continue
        pooled = projected_text_embedding(clip, prompt)
        if pooled is None or not torch.isfinite(pooled).all() or pooled.abs().max() == 0:
            raise ValueError("clip: this text encoder gives no usable projected text embedding (it has no text projection: "
                             "SD1.x checkpoints do not carry one). CLIP-T needs the text half of the CLIP vision model: "
                             f"{MATCHING_PAIRS}.")
        cache[prompt] = pooled[0].float().cpu()
    return torch.stack([cache[p] for p in prompts])


def check_widths(text: torch.Tensor, images: torch.Tensor) -> None:
    if text.shape[1] != images.shape[1]:
        raise ValueError(f"clip gives {text.shape[1]}-wide text embeddings but clip_vision gives {images.shape[1]}-wide "
                         "image embeddings: they are not two halves of one CLIP model, so CLIP-T would mean nothing. "
                         f"Pairs that match: {MATCHING_PAIRS}.")


def preflight(prompts: list[str], references: torch.Tensor, placeholder: str, class_noun: str, clip: Any,
              clip_vision: Any, dino: Any) -> None:
    """Every check score_images makes on its inputs, on one prompt and one reference image, so that a
    long run (the checkpoint sweep) fails before it renders anything rather than after."""
    check_vision(clip_vision, "clip", "clip_vision")
    check_vision(dino, "dinov2", "dino")
    read = [clip_t_prompt(p, placeholder, class_noun) for p in prompts]
    check_widths(text_embeddings(clip, read[:1]), image_embeddings(clip_vision, references[:1]))


def score_images(images: torch.Tensor, prompts: list[str], references: torch.Tensor, placeholder: str, class_noun: str,
                 clip: Any = None, clip_vision: Any = None, dino: Any = None) -> list[ImageScore]:
    """Per generated image (IMAGE [N, H, W, 3]) its CLIP-T against its prompt, and its mean CLIP-I and
    DINO against the references (IMAGE [R, H', W', 3]). A metric whose model is not given is NaN.

    CLIP-T reads each prompt with `placeholder` replaced by `class_noun`. Raises naming the input
    when nothing can be computed, when clip comes without clip_vision, or when a model is of the
    wrong kind or width.
    """
    if clip is None and clip_vision is None and dino is None:
        raise ValueError("Connect at least clip_vision (CLIP-I), clip_vision + clip (CLIP-T) or dino (DINO).")
    if clip is not None and clip_vision is None:
        raise ValueError("clip is connected but clip_vision is not: CLIP-T compares the prompt with the image in one "
                         f"CLIP model's space, so it needs both halves. Pairs that match: {MATCHING_PAIRS}.")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images.")
    if clip_vision is not None:
        check_vision(clip_vision, "clip", "clip_vision")
    if dino is not None:
        check_vision(dino, "dinov2", "dino")
    read = [clip_t_prompt(p, placeholder, class_noun) for p in prompts] if clip is not None else list(prompts)
    clip_images = clip_references = dino_images = dino_references = text = None
    if clip_vision is not None:
        clip_images, clip_references = image_embeddings(clip_vision, images), image_embeddings(clip_vision, references)
    if clip is not None:
        text = text_embeddings(clip, read)
        check_widths(text, clip_images)
    if dino is not None:
        dino_images, dino_references = image_embeddings(dino, images), image_embeddings(dino, references)
    return image_scores(read, text, clip_images, clip_references, dino_images, dino_references)
