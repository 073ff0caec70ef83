"""Deterministic sampling plan for Stage 1: which image, anchors, timesteps and noise per micro-step.

Everything random in a run is drawn here from one seeded generator, so the same seed gives the
same plan (and, on CPU, the same tokens) whatever the host does with its own RNG state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MicroStep:
    """One micro-step of Algorithm 1.

    image: index i of the reconstructed image; anchors: the set J (indices != i);
    timesteps: [1 + |J|] indices into the model's discrete schedule (flow models: into the grid of
    `flow_sigmas`), reconstruction first, then one per anchor (the reference draws each anchor's own t);
    noise_seed: seeds the [1 + |J|] noise draws.
    """

    image: int
    anchors: tuple[int, ...]
    timesteps: tuple[int, ...]
    noise_seed: int


def plan_micro_steps(
    n_images: int, n_anchors: int, steps: int, accumulation: int, num_timesteps: int, seed: int
) -> list[list[MicroStep]]:
    """[steps][accumulation] micro-steps.

    Images are visited in a fresh random permutation per epoch, so every image gets the same share
    of updates; anchors are drawn without replacement among the other images; timesteps uniformly
    over the discrete schedule (paper Sec. 4.1: t ~ U{0..T-1}).
    """
    if n_images < 2 and n_anchors > 0:
        raise ValueError("The exclusion loss needs at least 2 images.")
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    plan = []
    for _ in range(steps):
        group = []
        for _ in range(accumulation):
            if not order:
                order = torch.randperm(n_images, generator=generator).tolist()
            image = order.pop()
            others = [j for j in range(n_images) if j != image]
            picks = torch.randperm(len(others), generator=generator)[:n_anchors].tolist()
            anchors = tuple(others[p] for p in picks)
            timesteps = tuple(torch.randint(0, num_timesteps, (1 + n_anchors,), generator=generator).tolist())
            noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            group.append(MicroStep(image, anchors, timesteps, noise_seed))
        plan.append(group)
    return plan


FLOW_SIGMA_LEVELS = 2 ** 24
"""Flow models draw sigma uniformly on (0, 1] (the reference FLUX trainer: torch.rand, no shift). The plan draws
an index k uniformly from range(FLOW_SIGMA_LEVELS) and sigma = (k + 1) / FLOW_SIGMA_LEVELS: float32's resolution
on (0, 1], so the draws are uniform to 6e-8 and the plan's integer form (and every SD plan) is unchanged."""


def flow_sigmas(indices: torch.Tensor) -> torch.Tensor:
    """sigma = (k + 1) / FLOW_SIGMA_LEVELS in (0, 1] for plan indices k [B] (int). Returns [B] float32."""
    return (indices.to(torch.float64) + 1).div(FLOW_SIGMA_LEVELS).to(torch.float32)


def draw_noise(micro_step: MicroStep, sample_shape: torch.Size) -> torch.Tensor:
    """The micro-step's noise: [1 + |J|, *sample_shape] float32 on CPU (move it after drawing, so the
    values do not depend on the device's RNG)."""
    generator = torch.Generator().manual_seed(micro_step.noise_seed)
    return torch.randn((len(micro_step.timesteps), *sample_shape), generator=generator, dtype=torch.float32)
