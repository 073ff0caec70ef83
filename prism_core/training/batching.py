"""Conditioning batches and model-call chunks, shared by both stages' loops."""
from __future__ import annotations

from typing import Sequence

import torch

Cond = dict[str, torch.Tensor]
"""Conditioning of one prompt: model input name -> tensor with batch dim 1 (c_crossattn [1, L, D]; SDXL also y [1, A])."""


def batch_conds(conds: Sequence[Cond]) -> Cond:
    """Concatenate one-prompt conditionings along the batch dimension."""
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


def chunk_ranges(count: int, size: int) -> list[range]:
    """Consecutive index ranges of at most `size` covering range(count) (samples per model call)."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]
