"""Conditioning batches and model-call chunks, shared by both stages' loops."""
from __future__ import annotations

from typing import Sequence

import torch

Cond = dict[str, torch.Tensor]
"""Conditioning of one prompt: model input name -> tensor with batch dim 1 (c_crossattn [1, L, D]; SDXL also y [1, A])."""


def batch_conds(conds: Sequence[Cond]) -> Cond:
    """Concatenate one-prompt conditionings along the batch dimension; a value that is not a tensor (a constant
    input such as Z-Image's num_tokens, the prompt's token count) is the batch's when every prompt has it.
    Raises ValueError for prompts that cannot share a batch (see `batchable`)."""
    if not batchable(conds):
        raise ValueError("These prompts' conditionings cannot share a model call (different token counts).")
    return {key: torch.cat([c[key] for c in conds]) if isinstance(conds[0][key], torch.Tensor) else conds[0][key]
            for key in conds[0]}


def batchable(conds: Sequence[Cond]) -> bool:
    """Whether the conditionings can go in one model call: the same inputs, tensors of the same shape past the
    batch dimension, equal constants (SD's and FLUX's prompts are padded to a fixed length; Z-Image's are not)."""
    first = conds[0]

    def same(a: object, b: object) -> bool:
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return a.shape[1:] == b.shape[1:]
        return not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a == b
    return all(c.keys() == first.keys() and all(same(first[k], c[k]) for k in first) for c in conds[1:])


def batch_ranges(conds: Sequence[Cond], size: int) -> list[range]:
    """Consecutive index ranges of at most `size` covering range(len(conds)), each of conditionings that can share
    a model call (`batchable`): `chunk_ranges` where all prompts batch together."""
    ranges: list[range] = []
    for index in range(len(conds)):
        last = ranges[-1] if ranges else None
        if last is not None and len(last) < size and batchable([conds[last.start], conds[index]]):
            ranges[-1] = range(last.start, index + 1)
        else:
            ranges.append(range(index, index + 1))
    return ranges


def chunk_ranges(count: int, size: int) -> list[range]:
    """Consecutive index ranges of at most `size` covering range(count) (samples per model call)."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]
