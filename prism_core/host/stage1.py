"""Stage 1 on ComfyUI objects: initialise the tokens, run Algorithm 1, return a PrismTokens."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import torch

from ..concept_input.concept_set import ConceptSet
from ..training.config import TokenConfig, family_preset
from ..training.init import content_free_rows, random_vectors, repeated_vector
from ..concept_input.input_checks import check_training_inputs
from ..training.stage1 import optimize_tokens
from ..formats.token_bank import PrismTokens
from . import text
from .runtime import RunOptions, report_skipped_steps
from .diffusion import encode_latents
from .family import ModelFamily, describe
from .previews import TrainingPreviews
from .stage1_backend import ComfyStage1Backend

log = logging.getLogger("ConceptPrism")


def family_config(family: ModelFamily, config: TokenConfig, preset: str, flux_clip_l: str = "fixed"
                  ) -> tuple[TokenConfig, str]:
    """(config that runs, a line saying which values ran) for the node's preset (config.family_preset) and, on
    FLUX.1, whether CLIP-L rows are "fixed" (default, as the reference) or "learned"."""
    config = family_preset(config, family.presets, preset)
    if family.presets != "flux":
        return config, "Stage 1"
    values = (f"{preset}: residual_length {config.residual_length}, beta {config.beta:g}, lr {config.learning_rate:g}, "
              f"weight_decay {config.weight_decay:g}, accumulation {config.gradient_accumulation}")
    if not family.flux:  # Z-Image, FLUX.2 Klein: one text encoder, nothing kept fixed
        return config, f"Stage 1 {family.title} ({values})"
    if flux_clip_l not in ("fixed", "learned"):
        raise ValueError(f"flux_clip_l must be 'fixed' or 'learned', got {flux_clip_l!r}.")
    config = dataclasses.replace(config, frozen_encoders=family.frozen_encoders if flux_clip_l == "fixed" else ())
    return config, f"Stage 1 FLUX.1 ({values}, clip_l {flux_clip_l})"


def initial_vectors(backend: ComfyStage1Backend, captions: tuple[str, ...], config: TokenConfig
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """(target {key: [n_t, D]}, residuals {key: [N, n_r, D]}, how each residual started)."""
    generator = torch.Generator().manual_seed(config.seed)
    stats = backend.vocabulary_statistics()
    target = random_vectors(stats, config.target_length, generator)
    rows, starts = [], []
    for i, caption in enumerate(captions):
        if config.caption_init and caption:
            rows.append(repeated_vector(backend.caption_embedding(caption), config.residual_length))
            starts.append("caption")
        else:
            rows.append(random_vectors(stats, config.residual_length, generator))
            starts.append("random")
    missing = [i for i, c in enumerate(captions) if not c]
    if config.caption_init and config.residual_length > 0 and missing:
        log.warning("ConceptPrism: no caption for image(s) %s; their residual tokens start from random vectors. "
                    "Give captions (sidecar .txt files or the captions widget) for the paper's initialisation.", missing)
    residuals = {key: torch.stack([r[key] for r in rows]) for key in target}
    residuals = content_free_rows(residuals, stats, config.frozen_encoders or ())
    return target, residuals, starts


def learn_tokens(model: Any, clip: Any, vae: Any, concept: ConceptSet, config: TokenConfig,
                 options: RunOptions = RunOptions(),
                 on_step: Callable[[int, int, float, float], None] | None = None,
                 previews: TrainingPreviews | None = None, node_id: str | None = None,
                 family: ModelFamily | None = None) -> PrismTokens:
    """Paper Algorithm 1 on a MODEL/CLIP/VAE. The incoming objects are left as they were. `previews`, if
    given, renders the current tokens on the incoming MODEL every N steps (prism_core.host.previews). Raises
    ValueError before any work for a model family the pack does not train (family.describe) and
    for a FLUX.1 model without FLUX's text encoders; loss_scaling.NothingTrainedError when float16 overflow
    skipped every update. Skipped updates are counted in the settings (skipped_steps) and, when they are more
    than a few, warned about in the console and on node `node_id`. `family`: the node's, decided once
    (family.describe; decided here when not given)."""
    family = family or describe(model, clip)
    widths = family.encoder_widths
    lengths = text.slot_lengths_for(
        {k: torch.empty(config.target_length, w) for k, w in widths.items()},
        {k: torch.empty(len(concept), config.residual_length, w) for k, w in widths.items()})
    if config.frozen_encoders is None:
        config = dataclasses.replace(config, frozen_encoders=family.frozen_encoders)
    with torch.inference_mode(False):
        latents = encode_latents(model, vae, concept.images.clone())
        check_training_inputs(concept.images, latents, concept.names, concept.source)
        backend = ComfyStage1Backend(model, clip, lengths, concept.resolution, options.max_batch,
                                     options.training_dtype, options.gradient_checkpointing,
                                     family.guidance_input(options.guidance), family)
        with backend:
            target, residuals, starts = initial_vectors(backend, concept.captions, config)
            target, residuals, history = optimize_tokens(backend, latents, target, residuals, config, on_step,
                                                         _preview_hook(previews, model, concept, backend))
    settings = {**config.to_dict(), "resolution": concept.resolution, "residual_init": starts,
                "training_dtype": backend.compute_dtype, "clip_layer": text.clip_layer(clip),
                "prediction_target": backend.target_kind, "skipped_steps": len(history.skipped), "family": family.name,
                **({"guidance": options.guidance} if family.reads_guidance else {})}
    report_skipped_steps("Stage 1", history.skipped, config.steps, "tokens", node_id)
    return PrismTokens(target, residuals, list(concept.captions), list(concept.names), settings, history)


def _preview_hook(previews: TrainingPreviews | None, model: Any, concept: ConceptSet, backend: ComfyStage1Backend
                  ) -> Callable[[int, Callable], None] | None:
    """optimize_tokens' on_preview: at due steps, the current vectors as a token bank on the incoming MODEL."""
    if previews is None or previews.settings.every <= 0:
        return None

    def on_preview(step: int, snapshot: Callable) -> None:
        if previews.due(step):
            bank = lambda: PrismTokens(*snapshot(), list(concept.captions), list(concept.names), {})
            previews.render_step(step, lambda: model, bank, reload=[backend.train_model, backend.train_clip.patcher])
    return on_preview
