"""OptimizePrismTokens: Stage 1 (paper Algorithm 1) as a node."""
from __future__ import annotations

from ..prism_core.training.config import FLUX_TOKEN_DEFAULTS, TokenConfig, help_text
from ..prism_core.host.family import describe
from ..prism_core.host.runtime import RunOptions, step_reporter
from ..prism_core.host.stage1 import family_config, learn_tokens
from ..prism_core.host.internals.contract import family_uses, require, training_uses, validation_answer
from .run_inputs import family_inputs, memory_inputs
from .preview_inputs import PREVIEW_OUTPUT_TOOLTIP, preview_inputs, training_previews
from .types import CATEGORY, CONCEPT_SET, PRISM_TOKENS

NODE = "Optimize Prism Tokens"


def _tip(name: str) -> str:
    return help_text(TokenConfig, name)


def _flux_values() -> str:
    return ", ".join(f"{name} {value:g}" for name, value in FLUX_TOKEN_DEFAULTS.items())


class OptimizePrismTokens:
    CATEGORY = CATEGORY
    RETURN_TYPES = (PRISM_TOKENS, "IMAGE")
    RETURN_NAMES = ("tokens", "previews")
    OUTPUT_TOOLTIPS = ("The learned target token, one residual token per image, the captions, settings and loss history.",
                       PREVIEW_OUTPUT_TOOLTIP)
    FUNCTION = "optimize"
    DESCRIPTION = ("Learns a target token for what the images share and a residual token per image for what they don't "
                   "(reconstruction + exclusion loss). The model and CLIP are not changed.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model (SD1.x, SD2.x incl. v-prediction, SDXL, FLUX.1 dev or schnell, Z-Image, FLUX.2 Klein 4B or 9B). Left unchanged."}),
                "clip": ("CLIP", {"tooltip": "The model's text encoder(s) (FLUX.1: CLIP-L + T5-XXL from DualCLIPLoader; Z-Image: Qwen3-4B from Load CLIP type lumina2; FLUX.2 Klein: its Qwen3 from Load CLIP type flux2); its CLIPSetLastLayer setting is honoured. Left unchanged."}),
                "vae": ("VAE", {"tooltip": "Encodes the reference images once per run."}),
                "concept_set": (CONCEPT_SET, {"tooltip": "From Load Concept Set."}),
                "target_length": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip": _tip("target_length")}),
                "residual_length": ("INT", {"default": 8, "min": 0, "max": 32, "tooltip": _tip("residual_length")}),
                "beta": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": _tip("beta")}),
                "exclusion_set_size": ("INT", {"default": 3, "min": 1, "max": 16, "tooltip": _tip("exclusion_set_size")}),
                "learning_rate": ("FLOAT", {"default": 4e-4, "min": 1e-6, "max": 1e-1, "step": 1e-5, "round": False, "tooltip": _tip("learning_rate")}),
                "steps": ("INT", {"default": 200, "min": 1, "max": 10000, "tooltip": _tip("steps")}),
                "gradient_accumulation": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": _tip("gradient_accumulation")}),
                "caption_init": ("BOOLEAN", {"default": True, "tooltip": _tip("caption_init")}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": _tip("seed")}),
            },
            "optional": {
                **memory_inputs("samples (reconstruction + anchors)", "The token vectors always stay float32.", "about 30% slower"),
                **preview_inputs("the current tokens on the incoming model (as Prism Conditioning + KSampler would)"),
                **family_inputs(_flux_values(), ", on every branch (the reference: 3.5, the host's default too). Use the value you will sample with (FluxGuidance)"),
                "flux_clip_l": (["fixed", "learned"], {"default": "fixed", "tooltip": "FLUX.1 only: fixed (default, as the reference) keeps the tokens' CLIP-L rows at their seeded start and trains the T5 rows; CLIP-L then only feeds FLUX's pooled vector the same way at every load. learned: train both."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, caption_init=None):
        """When the graph is validated, before upstream nodes load models: refuse a ComfyUI whose internals Stage 1
        needs changed (internals/contract.py); what the connected model adds (FLUX.1) is asked when the node runs.
        It takes caption_init (a required switch, with no range the host would stop checking) because the host
        reports a refusal once per input the method takes that the graph holds; gradient checkpointing's part is
        asked when the node runs."""
        return validation_answer(NODE, *training_uses(1, False))

    def optimize(self, model, clip, vae, concept_set, target_length, residual_length, beta, exclusion_set_size,
                 learning_rate, steps, gradient_accumulation, caption_init, seed, max_batch=4,
                 gradient_checkpointing=False, training_dtype="auto", preview_every=0, preview_prompts="a photo of [V]",
                 preview_steps=12, preview_sampler="euler", preview_scheduler="normal", preview_cfg=7.0, preview_seed=0,
                 preset="auto", guidance=3.5, flux_clip_l="fixed",
                 unique_id=None):
        require(NODE, *training_uses(1, gradient_checkpointing))
        family = describe(model, clip)  # the one decision of this run's model family
        require(NODE, *family_uses(family.name, 1))
        config = TokenConfig(target_length=target_length, residual_length=residual_length, beta=beta,
                             exclusion_set_size=exclusion_set_size, learning_rate=learning_rate, steps=steps,
                             gradient_accumulation=gradient_accumulation, caption_init=caption_init, seed=seed)
        config, label = family_config(family, config, preset, flux_clip_l)
        options = RunOptions(max_batch=max_batch, training_dtype=training_dtype, gradient_checkpointing=gradient_checkpointing,
                             guidance=guidance)
        previews = training_previews("Optimize Prism Tokens", "Stage 1", clip, vae, concept_set.resolution, config.steps,
                                     unique_id, preview_every, preview_prompts, preview_steps, preview_sampler,
                                     preview_scheduler, preview_cfg, preview_seed,
                                     family.guidance_input(guidance), preset, family.presets == "flux")
        tokens = learn_tokens(model, clip, vae, concept_set, config, options,
                              on_step=step_reporter(config.steps, unique_id, label, ("rec", "excl")), previews=previews,
                              node_id=unique_id, family=family)
        return (tokens, previews.output())
