"""The prompts both stages train with, as words and learned-token slots (paper Sec. 3.2 and Eq. 4)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats.token_bank import TARGET_SLOT, residual_slot

SlotVectors = dict[str, dict[str, torch.Tensor]]
"""slot name -> {text-encoder key: [n, D]}."""


@dataclass(frozen=True)
class Prompt:
    """A prompt as words and token slots, e.g. ("prism_target", "with", "prism_residual_2")."""

    parts: tuple[str, ...]


def reconstruction_prompt(image: int, has_residual: bool) -> Prompt:
    """Paper Sec. 3.2: "<t_target> with <t_res(i)>" (just "<t_target>" without residual tokens)."""
    return Prompt((TARGET_SLOT, "with", residual_slot(image)) if has_residual else (TARGET_SLOT,))


def residual_prompt(image: int) -> Prompt:
    """Eq. (4)'s residual-only prompt "<t_res(i)>"."""
    return Prompt((residual_slot(image),))
