"""PrismCheckpointSweep: render and score every Stage 2 checkpoint of a run, pick a step (paper Fig. 3)."""
from __future__ import annotations

import torch

import comfy.samplers

from ..prism_core.host.internals.contract import DINO, SCORING, TOKENS, require
from ..prism_core.host.stock_nodes import apply_lora_file, placeholder_conditioning
from ..prism_core.host.sweep import SweepSettings, run_candidates, run_sweep
from ..prism_core.judging.prompt_sets import PLACEHOLDER, set_names, sweep_prompts
from ..prism_core.judging.score_table import Table, draw_table
from ..prism_core.judging.scores import format_value
from ..prism_core.pictures.sweep_plot import draw_tradeoff
from .concept_score import CLIP_TEXT_TIP, CLIP_VISION_TIP, DINO_TIP
from .types import CATEGORY, PRISM_TOKENS

RULE = ("the highest mean DINO among the trained steps whose mean CLIP-T stays within clip_t_tolerance of step 0's "
        "(if none does, the step with the highest CLIP-T)")


class PrismCheckpointSweep:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "STRING", "INT", "IMAGE", "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("model", "lora_name", "step", "trade_off", "table", "images", "report")
    OUTPUT_TOOLTIPS = (
        "The incoming model with the chosen LoRA applied (strength 1), exactly as Load LoRA (model only) loads that file.",
        "The chosen LoRA's name in models/loras: use it with Load LoRA in other graphs.",
        "The chosen step.",
        "CLIP-T against DINO, one point per step, the chosen step starred (the paper's Fig. 3).",
        "Mean CLIP-T, CLIP-I and DINO per step, with the first render of each step; the chosen row shaded.",
        "Every render, step by step (prompt by prompt, seed by seed within a step).",
        "The cost, the per-step numbers (tab-separated) and why the step was chosen.",
    )
    FUNCTION = "sweep"
    DESCRIPTION = ("Renders a prompt set with each Stage 2 checkpoint of a run (and the untrained tokens as step 0), "
                   "scores CLIP-T, CLIP-I and DINO, plots the trade-off and picks a step by a stated rule: " + RULE + ".")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The base model the LoRA was trained on (not Prism LoRA Train's output): each checkpoint is applied to it."}),
                "clip": ("CLIP", {"tooltip": "The checkpoint's CLIP, for the prompts with the learned token."}),
                "vae": ("VAE", {"tooltip": "Decodes the renders."}),
                "tokens": (PRISM_TOKENS, {"tooltip": "The tokens the LoRA was trained with (Stage 1's output)."}),
                "reference_images": ("IMAGE", {"tooltip": "The concept's own images (Load Concept Set's image output), for CLIP-I and DINO."}),
                "score_clip": ("CLIP", {"tooltip": CLIP_TEXT_TIP}),
                "clip_vision": ("CLIP_VISION", {"tooltip": CLIP_VISION_TIP}),
                "dino": ("CLIP_VISION", {"tooltip": DINO_TIP}),
                "class_noun": ("STRING", {"default": "", "tooltip": "The concept's class, e.g. dog. CLIP-T reads it in place of [V] (CLIP cannot read the learned token), as DreamBench does."}),
                "checkpoint_prefix": ("STRING", {"default": "conceptprism/concept_lora", "tooltip": "The same checkpoint_prefix as on Prism LoRA Train. Only checkpoints of this run (same tokens, loss curve the start of the final's) are used."}),
                "prompt_set": (set_names(), {"default": "objects", "tooltip": "DreamBench-style templates (25 for objects, 25 for live subjects: pets, people), or custom_prompts."}),
                "prompt_count": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "How many prompts per step: spread evenly over the set (backgrounds, accessories, property changes)."}),
                "custom_prompts": ("STRING", {"multiline": True, "default": "a photo of [V] on the beach\na photo of [V] in the snow", "tooltip": "Used when prompt_set is custom: one prompt per line, [V] where the concept goes."}),
                "seeds": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip": "Renders per prompt (seeds seed, seed+1, ...). The paper averaged 4."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "The first seed; every step uses the same seeds, so steps differ only by the LoRA."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 200, "tooltip": "Sampler steps per render (the paper: DDIM, 25)."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01, "tooltip": "Classifier-free guidance (the paper: 7.5)."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "ddim", "tooltip": "Sampler, as in KSampler (the paper: DDIM)."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "ddim_uniform", "tooltip": "Scheduler, as in KSampler."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Render width (SD1.x/SD2.x-base 512, SDXL 1024)."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Render height."}),
                "negative": ("STRING", {"multiline": True, "default": "", "tooltip": "Negative prompt for every render (the paper: none)."}),
                "clip_t_tolerance": ("FLOAT", {"default": 0.02, "min": 0.0, "max": 1.0, "step": 0.005, "tooltip": "The rule: " + RULE + ". How much CLIP-T may drop below step 0's."}),
                "max_sampler_steps": ("INT", {"default": 5000, "min": 1, "max": 1000000, "tooltip": "Refuse to run when (step 0 + checkpoints) x prompts x seeds x steps is more than this. The cost is shown on the node before rendering."}),
                # Last: frontends from about 1.4x give a forceInput STRING a widget slot in a saved graph's
                # widgets_values and older ones do not; at the end it shifts no other widget's value either way.
                "lora_name": ("STRING", {"forceInput": True, "tooltip": "The run's final LoRA: connect Save Prism LoRA's lora_name. Its checkpoints are found by checkpoint_prefix."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sweep(self, model, clip, vae, tokens, lora_name, reference_images, score_clip, clip_vision, dino, class_noun,
              checkpoint_prefix, prompt_set, prompt_count, custom_prompts, seeds, seed, steps, cfg, sampler_name,
              scheduler, width, height, negative, clip_t_tolerance, max_sampler_steps, unique_id=None):
        require("Prism Checkpoint Sweep", TOKENS, SCORING, DINO)
        settings = SweepSettings(sweep_prompts(prompt_set, prompt_count, custom_prompts), class_noun, seeds, seed, steps,
                                 cfg, sampler_name, scheduler, width, height, clip_t_tolerance, max_sampler_steps, PLACEHOLDER)
        candidates = run_candidates(lora_name, checkpoint_prefix, tokens)
        result = run_sweep(model, vae, lambda template: placeholder_conditioning(clip, tokens, template, PLACEHOLDER, where="Prism Checkpoint Sweep"),
                           clip.encode_from_tokens_scheduled(clip.tokenize(negative)), reference_images, candidates,
                           settings, score_clip, clip_vision, dino, unique_id)
        chosen = result.choice.point
        floor = next(p.clip_t for p in result.points if p.step == 0) - clip_t_tolerance
        plot = draw_tradeoff(result.points, chosen.step, floor,
                             f"CLIP-T against DINO over Stage 2 steps: chosen step {chosen.step} (star)")
        per_step = len(settings.prompts) * seeds
        table = Table(
            title=f"Checkpoint sweep: {result.cost.describe()}",
            header=["step", "CLIP-T", "CLIP-I", "DINO", "LoRA"],
            rows=[[str(p.step), format_value(p.clip_t), format_value(p.clip_i), format_value(p.dino),
                   p.lora_name or "(untrained tokens, no LoRA)"] for p in result.points],
            thumbnails=[result.images[k * per_step].cpu().numpy() for k in range(len(result.points))],
            highlight=[p.step for p in result.points].index(chosen.step))
        report = "\n".join([result.cost.describe(), "step\tCLIP-T\tCLIP-I\tDINO\tLoRA"]
                           + [f"{p.step}\t{format_value(p.clip_t)}\t{format_value(p.clip_i)}\t{format_value(p.dino)}\t{p.lora_name or '-'}"
                              for p in result.points]
                           + [f"chosen: {result.choice.reason}"])
        return (apply_lora_file(model, chosen.lora_name), chosen.lora_name, chosen.step,
                torch.from_numpy(plot)[None], torch.from_numpy(draw_table(table))[None], result.images, report)
