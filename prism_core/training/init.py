"""Initial token vectors (paper Sec. 3.3 and the reference implementation)."""
from __future__ import annotations

import torch


def random_vectors(stats: dict[str, tuple[torch.Tensor, torch.Tensor]], rows: int,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """{key: [rows, D]} drawn per dimension from N(mean_d, std_d) of the vocabulary's input embeddings."""
    return {key: mean + std * torch.randn((rows, mean.shape[0]), generator=generator)
            for key, (mean, std) in sorted(stats.items())}


def repeated_vector(vector: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """{key: [D]} -> {key: [rows, D]}: a caption's mean embedding copied into every slot of a residual token."""
    return {key: value.float().expand(rows, -1).clone() for key, value in vector.items()}


def content_free_rows(residuals: dict[str, torch.Tensor], stats: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      fixed: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
    """{key: [N, n_r, D]} with every residual row of the `fixed` (not trained) encoders set to the vocabulary's
    mean input embedding (`stats[key][0]`, [D]); the other encoders' rows are returned as they are.

    A fixed row keeps its start for the whole run, so the start must carry no content: a caption's mean
    final-layer states (the trained rows' start, paper Sec. 3.3) are tens of times a word's norm and name the
    concept, and on FLUX.1 the frozen CLIP-L rows feed the pooled modulation vector, where the exclusion loss
    (which trains only the other rows) cannot remove what they say. The reference FLUX trainer's new CLIP rows
    are content-free; the vocabulary mean is the content-free row of the same statistics the target's random
    draw uses (`random_vectors`), the same for every image and caption. Keys of `fixed` that `residuals`
    does not hold are ignored."""
    return {key: stats[key][0].to(value.dtype).expand_as(value).clone() if key in fixed else value
            for key, value in residuals.items()}
