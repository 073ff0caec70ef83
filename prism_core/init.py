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
