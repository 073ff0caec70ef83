"""The preview inputs and output both training nodes share (optional, so graphs saved before them still run)."""
from __future__ import annotations

import comfy.samplers

from ..prism_core.host.previews import PreviewSettings, TrainingPreviews
from ..prism_core.pictures.previews import DEFAULT_PROMPTS, PLACEHOLDER, preview_prompts

PREVIEW_OUTPUT_TOOLTIP = (
    "Every preview of the run (each prompt at steps N, 2N, ...), oldest first, with its step written on it; wire it "
    "to Preview Image. With preview_every 0 (or fewer steps than preview_every): one small placeholder image saying so.")


def preview_inputs(what: str) -> dict:
    """Optional inputs; `what` names what a preview shows (e.g. "the current tokens")."""
    return {
        "preview_every": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": (
            f"Every N optimizer steps, render each preview prompt with {what} (a fixed seed, so the images are "
            "comparable) and show the newest on this node; all of them come out of 'previews'. 0 = off. Cost: one "
            "preview is about preview_steps x prompts sampler steps (twice the model calls when cfg is not 1) plus "
            "one VAE decode per prompt, at the concept set's resolution: with the defaults (12 steps, 1 prompt) about half a "
            "Stage 1 step or 2.5 Stage 2 steps (gradient_accumulation 4), so every 40 of 200 steps adds about 1% to Stage 1 "
            "and 6% to Stage 2 (measured, CPU bench, bench/RESULTS.md). Training results are the same with previews on or off.")}),
        "preview_prompts": ("STRING", {"multiline": True, "default": DEFAULT_PROMPTS, "tooltip": (
            f"One prompt per line, {PLACEHOLDER} where the concept goes (e.g. 'a photo of {PLACEHOLDER} on the beach'); "
            "each line is one image per preview, so each line adds its cost. The negative prompt is empty.")}),
        "preview_steps": ("INT", {"default": 12, "min": 1, "max": 150, "tooltip": (
            "Sampler steps per preview image (KSampler's steps). Few are enough to see the concept; cost grows linearly.")}),
        "preview_sampler": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler", "tooltip": "KSampler's sampler_name for the previews."}),
        "preview_scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip": "KSampler's scheduler for the previews."}),
        "preview_cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": "KSampler's cfg for the previews. FLUX.1 takes guidance, not cfg: with preset auto a FLUX.1, Z-Image or FLUX.2 Klein model previews at cfg 1 while this is at its default 7, and the node's guidance goes on the preview prompt as FluxGuidance would put it."}),
        "preview_seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": (
            "KSampler's seed for the previews: the same for every preview, so they differ only by training.")}),
    }


def training_previews(node: str, label: str, clip, vae, resolution: int, total_steps: int, node_id,
                      preview_every: int, preview_prompts_text: str, preview_steps: int, preview_sampler: str,
                      preview_scheduler: str, preview_cfg: float, preview_seed: int, flux_guidance: float | None = None,
                      preset: str = "widgets", flow_transformer: bool = False) -> TrainingPreviews:
    """The run's previews, the prompts checked before training starts (a clear error naming preview_prompts).
    flux_guidance: on a FLUX.1 model, the guidance the previews sample with (None on SD); with preset "auto" a FLUX.1
    preview at the default cfg 7 samples at cfg 1 (FLUX.1-dev is guidance-distilled: cfg 1 is how it is sampled), and so
    does one of another `flow_transformer` (Z-Image: Turbo, the model most people train, is sampled at cfg 1)."""
    prompts = tuple(preview_prompts(preview_prompts_text, PLACEHOLDER, node)) if preview_every > 0 else ()
    if (flux_guidance is not None or flow_transformer) and preset == "auto" and preview_cfg == PreviewSettings.cfg:
        preview_cfg = 1.0
    settings = PreviewSettings(preview_every, prompts, preview_steps, preview_sampler, preview_scheduler,
                               preview_cfg, preview_seed, guidance=flux_guidance)
    return TrainingPreviews(settings, clip, vae, resolution, total_steps, node_id, label)
