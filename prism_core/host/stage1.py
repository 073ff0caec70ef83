"""Stage 1 on ComfyUI objects: initialise the tokens, run Algorithm 1, return a PrismTokens."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..concept_set import ConceptSet
from ..config import TokenConfig
from ..init import random_vectors, repeated_vector
from ..input_checks import check_training_inputs
from ..optimize import optimize_tokens
from ..token_bank import PrismTokens
from . import text
from .diffusion import encode_latents
from .previews import TrainingPreviews
from .stage1_backend import ComfyStage1Backend

log = logging.getLogger("ConceptPrism")


@dataclass(frozen=True)
class RunOptions:
    """How to run, not what to learn: memory and precision controls."""

    max_batch: int = 8
    training_dtype: str = "auto"
    gradient_checkpointing: bool = False


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
    return target, residuals, starts


def learn_tokens(model: Any, clip: Any, vae: Any, concept: ConceptSet, config: TokenConfig,
                 options: RunOptions = RunOptions(),
                 on_step: Callable[[int, int, float, float], None] | None = None,
                 previews: TrainingPreviews | None = None) -> PrismTokens:
    """Paper Algorithm 1 on a MODEL/CLIP/VAE. The incoming objects are left as they were. `previews`, if
    given, renders the current tokens on the incoming MODEL every N steps (prism_core.host.previews)."""
    widths = text.encoder_widths(clip)
    lengths = text.slot_lengths_for(
        {k: torch.empty(config.target_length, w) for k, w in widths.items()},
        {k: torch.empty(len(concept), config.residual_length, w) for k, w in widths.items()})
    with torch.inference_mode(False):
        latents = encode_latents(model, vae, concept.images.clone())
        check_training_inputs(concept.images, latents, concept.names, concept.source)
        backend = ComfyStage1Backend(model, clip, lengths, concept.resolution, options.max_batch,
                                     options.training_dtype, options.gradient_checkpointing)
        with backend:
            target, residuals, starts = initial_vectors(backend, concept.captions, config)
            target, residuals, history = optimize_tokens(backend, latents, target, residuals, config, on_step,
                                                         _preview_hook(previews, model, concept, backend))
    settings = {**config.to_dict(), "resolution": concept.resolution, "residual_init": starts,
                "training_dtype": backend.compute_dtype, "clip_layer": text.clip_layer(clip),
                "prediction_target": backend.target_kind}
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
