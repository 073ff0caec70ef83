"""PrismLoRATrain: Stage 2 (paper Algorithm 2) as a node."""
from __future__ import annotations

from pathlib import Path

import folder_paths

from ..prism_core.training.config import FLUX_LORA_DEFAULTS, LoraConfig, family_preset, help_text
from ..prism_core.formats.lora_file import LoraWeights, read_lora, save_lora
from ..prism_core.formats.names import checked_prefix
from ..prism_core.host.folders import first_folder, refuse_unwritable_folder, validate_save_folder
from ..prism_core.host.internals.contract import family_uses, require, training_uses, validation_answer
from ..prism_core.host.runtime import step_reporter
from ..prism_core.host.family import describe
from ..prism_core.host.runtime import RunOptions
from ..prism_core.host.stage2 import train_concept_lora
from ..prism_core.host.stock_nodes import apply_lora
from .run_inputs import family_inputs, memory_inputs
from .preview_inputs import PREVIEW_OUTPUT_TOOLTIP, preview_inputs, training_previews
from .types import CATEGORY, CONCEPT_SET, LORA_MODEL, LOSS_MAP, PRISM_TOKENS

NO_RESUME = "none"
NODE = "Prism LoRA Train"


def _tip(name: str) -> str:
    return help_text(LoraConfig, name)


class PrismLoRATrain:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", LORA_MODEL, LOSS_MAP, "IMAGE")
    RETURN_NAMES = ("model", "lora", "loss", "previews")
    OUTPUT_TOOLTIPS = (
        "The incoming model with the trained LoRA applied (strength 1); wire it straight into KSampler.",
        "The LoRA weights (kohya layout): save them with Save Prism LoRA.",
        "Loss per optimizer step (the whole run, earlier steps included when resuming), for Prism Loss Graph.",
        PREVIEW_OUTPUT_TOOLTIP,
    )
    FUNCTION = "train"
    DESCRIPTION = ("Trains a LoRA on the attention layers with the learned tokens fixed, each image with its prompt "
                   "'<target> with <residual i>'. The incoming model is not changed.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the tokens were learned with (SD1.x, SD2.x incl. v-prediction, SDXL, FLUX.1 dev or schnell, Z-Image, FLUX.2 Klein). Left unchanged."}),
                "clip": ("CLIP", {"tooltip": "Encodes the training prompts once per run. Left unchanged."}),
                "vae": ("VAE", {"tooltip": "Encodes the reference images once per run."}),
                "concept_set": (CONCEPT_SET, {"tooltip": "The concept set the tokens were learned on (same images, same order)."}),
                "tokens": (PRISM_TOKENS, {"tooltip": "From Optimize Prism Tokens or Load Prism Tokens; kept fixed."}),
                "rank": ("INT", {"default": 4, "min": 1, "max": 128, "tooltip": _tip("rank")}),
                "alpha": ("FLOAT", {"default": 4.0, "min": 0.01, "max": 256.0, "step": 0.5, "tooltip": _tip("alpha")}),
                "learning_rate": ("FLOAT", {"default": 4e-4, "min": 1e-6, "max": 1e-1, "step": 1e-5, "round": False, "tooltip": _tip("learning_rate")}),
                "steps": ("INT", {"default": 120, "min": 1, "max": 10000, "tooltip": _tip("steps")}),
                "gradient_accumulation": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": _tip("gradient_accumulation")}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": _tip("seed")}),
            },
            "optional": {
                **memory_inputs("micro-steps", "The LoRA weights always stay float32 and apply on the float32 weight in float32 mode.", "slower"),
                "checkpoint_every": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": _tip("checkpoint_every")}),
                "checkpoint_prefix": ("STRING", {"default": "conceptprism/concept_lora", "tooltip": "Name (and optional subfolder) in models/loras for checkpoints; '_stepNNNN' and a counter are appended. < > : \" | ? * become '_'."}),
                "resume_from": ([NO_RESUME] + folder_paths.get_filename_list("loras"), {"default": NO_RESUME, "tooltip": "Continue a LoRA saved by Save Prism LoRA (or a checkpoint): its weights, rank, alpha and step count carry on; 'steps' more steps are trained. Refused if it was trained on other tokens or images; other seed or accumulation settings are warned about and recorded."}),
                **preview_inputs("the LoRA as it is at that step (as Load LoRA on that step's checkpoint + KSampler would)"),
                **family_inputs(", ".join(f"{k} {v:g}" for k, v in FLUX_LORA_DEFAULTS.items()), " (use the one the tokens were learned with; reference 3.5)"),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, checkpoint_every=None, checkpoint_prefix=None):
        """When the graph is validated, before any node runs (Stage 1 included): a checkpoint folder that cannot be
        written is refused now, not after step `checkpoint_every`; so is a ComfyUI whose internals Stage 2 needs
        changed (internals/contract.py). Values fed by a link arrive as None and are
        checked when the node runs. The host skips its own min/max check of an input this method takes, so the
        range of checkpoint_every is checked here."""
        refused = validation_answer(NODE, *training_uses(2, False))  # checkpointing's part: when the node runs
        if refused is not True or checkpoint_every is None or checkpoint_prefix is None:
            return refused
        low, high = (cls.INPUT_TYPES()["optional"]["checkpoint_every"][1][k] for k in ("min", "max"))
        if not low <= checkpoint_every <= high:
            return f"{NODE}: checkpoint_every is {checkpoint_every}; set it between {low} (off) and {high}."
        if checkpoint_every == 0:
            return True  # no checkpoints: this node writes nothing
        return validate_save_folder(NODE, "checkpoint_prefix", "loras", checkpoint_prefix)

    def train(self, model, clip, vae, concept_set, tokens, rank, alpha, learning_rate, steps, gradient_accumulation, seed,
              max_batch=4, gradient_checkpointing=False, training_dtype="auto", checkpoint_every=0,
              checkpoint_prefix="conceptprism/concept_lora", resume_from=NO_RESUME, preview_every=0,
              preview_prompts="a photo of [V]", preview_steps=12, preview_sampler="euler", preview_scheduler="normal",
              preview_cfg=7.0, preview_seed=0, preset="auto", guidance=3.5, unique_id=None):
        require(NODE, *training_uses(2, gradient_checkpointing))
        family = describe(model)  # the one decision of this run's model family (the run refuses a model or CLIP it cannot train)
        require(NODE, *family_uses(family.name, 2))
        config = LoraConfig(rank=rank, alpha=alpha, learning_rate=learning_rate, steps=steps,
                            gradient_accumulation=gradient_accumulation, seed=seed, checkpoint_every=checkpoint_every)
        config = family_preset(config, family.presets, preset)
        label = "Stage 2"
        if family.presets == "flux":  # FLUX.1, Z-Image, FLUX.2 Klein: say which values ran
            label = (f"Stage 2 {family.title} ({preset}: lr {config.learning_rate:g}, weight_decay {config.weight_decay:g}, steps "
                     f"{config.steps}, checkpoint_every {config.checkpoint_every}, accumulation {config.gradient_accumulation})")
        checkpoint_every = config.checkpoint_every
        options = RunOptions(max_batch=max_batch, training_dtype=training_dtype, gradient_checkpointing=gradient_checkpointing,
                             guidance=guidance)
        resume = None
        if resume_from and resume_from != NO_RESUME:
            resume = read_lora(Path(folder_paths.get_full_path_or_raise("loras", resume_from)), resume_from)
        if checkpoint_every:  # before step 1, not at the first checkpoint (VALIDATE_INPUTS checked widget values already)
            checkpoint_prefix = checked_prefix("checkpoint_prefix", checkpoint_prefix)
            refuse_unwritable_folder(NODE, "checkpoint_prefix", "loras", checkpoint_prefix)

        previews = training_previews("Prism LoRA Train", "Stage 2", clip, vae, concept_set.resolution,
                                     (resume.steps if resume is not None else 0) + config.steps, unique_id, preview_every,
                                     preview_prompts, preview_steps, preview_sampler, preview_scheduler, preview_cfg,
                                     preview_seed, family.guidance_input(guidance), preset, family.presets == "flux")

        def save_checkpoint(weights: LoraWeights) -> None:
            save_lora(weights, first_folder("loras"), f"{checkpoint_prefix}_step{weights.steps:04d}")

        run = train_concept_lora(model, clip, vae, concept_set, tokens, config, family, options, resume,
                                 on_step=step_reporter(config.steps, unique_id, label, ("loss",)),
                                 on_checkpoint=save_checkpoint if checkpoint_every else None, previews=previews,
                                 node_id=unique_id)
        return (apply_lora(model, run.weights), run.weights, {"loss": run.weights.loss}, previews.output())
