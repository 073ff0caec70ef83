"""Where a Stage 2 run starts: from scratch, or from a saved LoRA that was checked to be this training."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..concept_input.concept_set import ConceptSet
from ..training.config import LoraConfig
from ..formats.lora_file import BaseFamily, LoraWeights, token_hash
from ..formats.resume import check_resume, image_record, previous_runs
from ..formats.token_bank import PrismTokens
from .folders import token_banks_with_hash

log = logging.getLogger("ConceptPrism")


@dataclass(frozen=True)
class ResumePoint:
    """start_step: steps already trained; loss: their per-step loss; runs: their runs' settings (header);
    images: this run's image record (header)."""

    images: dict[str, Any]
    start_step: int = 0
    loss: list[float] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def runs_until(self, settings: dict[str, Any], steps_done: int) -> list[dict[str, Any]]:
        """Every run's settings and steps, this one's ending at `steps_done`."""
        return [*self.runs, {**settings, "first_step": self.start_step + 1, "last_step": steps_done}]


def resume_point(resume: LoraWeights | None, family: BaseFamily, tokens: PrismTokens, concept: ConceptSet,
                 config: LoraConfig, training_dtype: str, extra_settings: dict[str, Any] | None = None) -> ResumePoint:
    """Refuses a LoRA of another family, or trained on other tokens or images (with what to connect instead);
    logs a warning for settings that differ from its last run's (`extra_settings`: this run's settings beyond
    the config, e.g. FLUX.1's guidance)."""
    images = image_record(concept.names, concept.images, concept.resolution)
    if resume is None:
        return ResumePoint(images)
    label = resume.source or "the LoRA to resume"
    trained_on = resume.metadata.get("conceptprism.family")
    if trained_on != family.label:
        raise ValueError(f"resume_from '{label}' was trained on {trained_on}, this MODEL is {family.label}. Pick a LoRA "
                         "trained on this family, or set resume_from to none.")
    settings = {**config.to_dict(), "training_dtype": training_dtype, **(extra_settings or {})}
    for warning in check_resume(resume.metadata, label, token_hash(tokens), images, settings, token_banks_with_hash):
        log.warning("ConceptPrism: %s", warning)
    return ResumePoint(images, resume.steps, resume.loss, previous_runs(resume.metadata))
