"""Stage 2 on ComfyUI objects: train the attention LoRA with the Stage 1 tokens fixed (Algorithm 2)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch


from ..concept_input.concept_set import ConceptSet
from ..training.config import LoraConfig
from ..concept_input.input_checks import check_training_inputs
from ..formats.lora_file import LoraWeights, lora_metadata
from ..training.stage2 import train_lora
from ..formats.token_bank import PrismTokens
from . import lora_layers, text
from .internals.lora_adapters import trainable_parameters
from .diffusion import compute_dtype as resolve_dtype, dtype_name, encode_latents, training_conditionings
from .family import ModelFamily
from .lora_targets import ADAPTED_LAYERS, SD_LAYERS, lora_targets
from .stage2_backend import ComfyStage2Backend
from .previews import TrainingPreviews
from .stock_nodes import apply_lora
from .resume_point import resume_point
from .runtime import RunOptions, report_skipped_steps

log = logging.getLogger("ConceptPrism")


def check_tokens_match(clip: Any, tokens: PrismTokens, concept: ConceptSet) -> None:
    """The tokens must come from this CLIP's family and from this concept set's images."""
    text.check_family(clip, tokens.encoder_keys, {k: v.shape[1] for k, v in tokens.target.items()}, "These ConceptPrism tokens",
                      tokens.settings.get("family"))
    if len(tokens.image_names) != len(concept):
        raise ValueError(
            f"The tokens were learned on {len(tokens.image_names)} images but the concept set has {len(concept)}: each image "
            "needs its own residual token. Connect the concept set the tokens were optimised on.")
    if list(tokens.image_names) != list(concept.names):
        log.warning("ConceptPrism: the concept set's images (%s) are not the ones the tokens were learned on (%s); "
                    "residual token i is used with image i.", list(concept.names), list(tokens.image_names))


@dataclass(frozen=True)
class LoraRun:
    """What one Stage 2 run returns: the weights (with header metadata) and the per-step loss of this run."""

    weights: LoraWeights
    loss: list[float]


def train_concept_lora(
    model: Any, clip: Any, vae: Any, concept: ConceptSet, tokens: PrismTokens, config: LoraConfig,
    family: ModelFamily, options: RunOptions = RunOptions(), resume: LoraWeights | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_checkpoint: Callable[[LoraWeights], None] | None = None,
    previews: TrainingPreviews | None = None,
    node_id: str | None = None,
) -> LoraRun:
    """Paper Algorithm 2 on a MODEL/CLIP/VAE. The incoming objects are left as they were; the LoRA
    lives on a training clone only. `family`: the run's, decided once (``family.describe``); a model Stage 2 has
    no LoRA layout for is refused first, then a CLIP whose text encoders are not the model's family's.
    `resume` continues a saved LoRA and its step count, if it was trained
    on these tokens and images (see resume_point). `previews`, if given, renders the incoming MODEL with the
    current adapters patched in as LoraLoader patches that step's file, every N steps (prism_core.host.previews).
    Updates skipped for float16 overflow are counted in the header (skipped_steps, per run and in total) and,
    when more than a few, warned about in the console and on node `node_id`; a run with every update skipped
    raises loss_scaling.NothingTrainedError. Guidance is recorded and compared only when the model reads it
    (model_facts.reads_guidance: FLUX.1-dev, not schnell)."""
    lora_family, guided = family.lora, family.reads_guidance
    if lora_family is None:
        raise ValueError(family.lora_refusal)
    text.check_text_encoders(family.name, clip, family.text_input)
    check_tokens_match(clip, tokens, concept)
    text.warn_on_other_clip_layer(clip, tokens, "Prism LoRA Train")
    learned_guidance = tokens.settings.get("guidance")
    if guided and learned_guidance is not None and learned_guidance != options.guidance:
        log.warning("ConceptPrism Prism LoRA Train: these tokens were learned with guidance %s, this run uses %s. Use the "
                    "same guidance as Stage 1 (and when sampling) unless you mean to change it.", learned_guidance, options.guidance)
    targets = lora_targets(model, lora_family)  # the host's key map, read once per run
    training_dtype = dtype_name(resolve_dtype(options.training_dtype, model))
    start = resume_point(resume, lora_family, tokens, concept, config, training_dtype,
                         {"guidance": options.guidance} if guided else None)
    start_step, earlier_loss = start.start_step, start.loss
    with torch.inference_mode(False):
        conds = training_conditionings(model, clip, tokens, concept.resolution, family.guidance_input(options.guidance))
        latents = encode_latents(model, vae, concept.images.clone())
        check_training_inputs(concept.images, latents, concept.names, concept.source)
        adapters = lora_layers.trainable_adapters(targets, config.rank, config.alpha, config.seed,
                                                  dict(resume) if resume is not None else None)
        parameters = trainable_parameters(adapters)
        names = {key: target.file_name for key, target in targets.items()}
        rank = next(iter(adapters.values())).rank
        alpha = float(next(iter(adapters.values())).alpha)
        if resume is not None and (rank, alpha) != (config.rank, config.alpha):
            log.info("ConceptPrism: resuming keeps the saved LoRA's rank %d and alpha %g (the rank/alpha inputs are not used).", rank, alpha)
        settings = {**config.to_dict(), "rank": rank, "alpha": alpha, "resolution": concept.resolution,
                    "training_dtype": training_dtype,
                    "layers": ADAPTED_LAYERS.get(lora_family.name, SD_LAYERS),
                    "clip_layer": text.clip_layer(clip), "prediction_target": family.target,
                    **({"guidance": options.guidance} if guided else {})}
        skipped: list[int] = []  # this run's steps whose update float16 overflow skipped

        def snapshot(steps_done: int, loss: list[float]) -> LoraWeights:
            ran = {**settings, "skipped_steps": len(skipped)}
            tensors = lora_layers.adapter_tensors(adapters, names)
            return LoraWeights(tensors, lora_metadata(lora_family, rank, alpha, steps_done, ran, tokens, earlier_loss + loss,
                                                      start.images, start.runs_until(ran, steps_done)))

        loss: list[float] = []

        def record(step: int, last: int, value: float) -> None:
            loss.append(value)
            if on_step is not None:
                on_step(step, last, value)

        checkpoint = (lambda step: on_checkpoint(snapshot(step, loss))) if on_checkpoint is not None else None
        with ComfyStage2Backend(model, adapters, family, targets, max_batch=options.max_batch,
                                training_dtype=options.training_dtype,
                                checkpointing=options.gradient_checkpointing) as backend:
            preview = None
            if previews is not None and previews.settings.every > 0:
                def preview(step: int) -> None:
                    if previews.due(step):
                        previews.render_step(step, lambda: apply_lora(model, snapshot(step, loss)), lambda: tokens,
                                             reload=[backend.train_model])
            train_lora(backend, latents, conds, parameters, config,
                       start_step, record, checkpoint, preview, skipped.append)
        report_skipped_steps("Stage 2", skipped, config.steps, "LoRA", node_id)
        return LoraRun(snapshot(start_step + config.steps, loss), loss)
