"""The model family, decided once per run from the MODEL (and CLIP) and asked by every node, loop and check.

A family is what the pack needs to know to train a MODEL and to hand the result back: its native training
target and timestep sampling, whether it reads FLUX.1's guidance input, its text encoders and their widths,
which presets and frozen encoders apply, and (where Stage 2 supports it) the LoRA family its files are written
for. `describe` decides all of it in one place; the stages and nodes take the `ModelFamily` it returns instead of
asking the model again. Adding a family is one more case here (and in lora_layers' family table) plus its tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..lora_file import BaseFamily
from . import text
from .diffusion import check_text_encoders, prediction_target, schedule_levels
from .internals.model_facts import is_flux1, reads_guidance
from .lora_layers import LoraTarget, lora_family, lora_targets

# FLUX.1's CLIP-L rows stay fixed by default (as the reference FLUX trainer): T5 carries the concept.
FLUX_FROZEN_ENCODERS = ("clip_l",)


@dataclass(frozen=True)
class ModelFamily:
    """What one run knows about its MODEL (and CLIP), decided by `describe`.

    target: the native training target, "eps", "v" or "flow" (losses.native_coefficients); schedule_levels: how
    many timestep indices a plan draws from; reads_guidance: FLUX.1-dev's guidance embedding is present;
    encoder_widths: {embedding key: input-embedding width} of the CLIP's text encoders (empty without a CLIP);
    lora: the family LoRA files are written for, None where Stage 2 has no entry (lora_refusal says why)."""

    flux: bool
    target: str
    schedule_levels: int
    reads_guidance: bool
    encoder_widths: dict[str, int] = field(default_factory=dict)
    lora: BaseFamily | None = None
    lora_refusal: str = ""

    @property
    def presets(self) -> str:
        """The key of the family's reference values in config.family_preset: "flux" (FLUX.1) or "sd"."""
        return "flux" if self.flux else "sd"

    @property
    def frozen_encoders(self) -> tuple[str, ...]:
        """Text encoders whose learned rows stay fixed by default (FLUX.1: CLIP-L)."""
        return FLUX_FROZEN_ENCODERS if self.flux else ()

    def guidance_input(self, guidance: float) -> float | None:
        """The guidance value the model's inputs carry: FLUX.1's (schnell ignores it), None for SD."""
        return guidance if self.flux else None

    def stage2(self) -> BaseFamily:
        """The LoRA family, or ValueError naming the families Stage 2 supports."""
        if self.lora is None:
            raise ValueError(self.lora_refusal)
        return self.lora


def describe(model: Any, clip: Any | None = None) -> ModelFamily:
    """The family of `model` (a MODEL patcher) with `clip`'s text encoders, decided once.

    Raises ValueError before any work for a model the pack does not train (diffusion.prediction_target: EDM, x0,
    FLUX.2, SD3, ...) and for a CLIP whose text encoders are not the model's family's (check_text_encoders)."""
    sampling = model.get_model_object("model_sampling")
    target = prediction_target(sampling, model)
    flux = is_flux1(model)
    widths = text.encoder_widths(clip) if clip is not None else {}
    if clip is not None:
        check_text_encoders(flux, widths)
    guided = reads_guidance(model)
    lora, refusal = lora_family(model, flux, guided)
    return ModelFamily(flux, target, schedule_levels(sampling, target), guided, widths, lora, refusal)


def stage2_targets(model: Any) -> dict[str, LoraTarget]:
    """{target key: LoraTarget} of the layers Stage 2 adapts on `model`, for callers outside a run (tests,
    benchmarks); a run asks its ModelFamily once and reads the key map once (lora_layers.lora_targets)."""
    return lora_targets(model, describe(model).stage2())
