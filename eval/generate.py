"""Text-to-image through ComfyUI's own sampling path (comfy.sample.sample, as the KSampler node calls
it) and VAE decoding, batched: one conditioning tensor per image, one shared negative."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.sample

from world_model import LATENT_SIZE, WorldModel


@dataclass(frozen=True)
class SamplerSettings:
    """Defaults used for every number the eval reports (fixed before any Table-2 run)."""

    steps: int = 25
    cfg: float = 4.0
    sampler: str = "euler"
    scheduler: str = "normal"


def encode_text(world: WorldModel, prompts: list[str]) -> torch.Tensor:
    """[B, 77, D] conditioning for plain prompts, as CLIPTextEncode computes it (one per prompt)."""
    conds = [world.clip.encode_from_tokens(world.clip.tokenize(p), return_pooled=True)[0] for p in prompts]
    return torch.cat(conds)


def conditioning_tensor(conditioning: list) -> torch.Tensor:
    """The [1, 77, D] tensor of a CONDITIONING (e.g. Prism Conditioning's output) with one entry."""
    if len(conditioning) != 1:
        raise ValueError(f"expected a single-entry CONDITIONING, got {len(conditioning)} entries")
    return conditioning[0][0]


@torch.inference_mode()  # as ComfyUI's executor runs KSampler and VAE Decode
def generate(world: WorldModel, cond: torch.Tensor, seed: int, settings: SamplerSettings = SamplerSettings(),
             batch: int = 64) -> torch.Tensor:
    """IMAGE [B, 64, 64, 3] in [0, 1] for conditioning rows `cond` [B, 77, D]; image k's noise is a
    function of (seed, k // batch, k % batch) through comfy's own prepare_noise."""
    negative = encode_text(world, [""])
    images = []
    for chunk_index, start in enumerate(range(0, cond.shape[0], batch)):
        rows = cond[start:start + batch]
        latent = torch.zeros(rows.shape[0], 4, LATENT_SIZE, LATENT_SIZE)
        noise = comfy.sample.prepare_noise(latent, seed + chunk_index)
        samples = comfy.sample.sample(world.model, noise, settings.steps, settings.cfg, settings.sampler, settings.scheduler,
                                      [[rows, {}]], [[negative, {}]], latent, disable_pbar=True, seed=seed + chunk_index)
        images.append(world.vae.decode(samples))
    return torch.cat(images)
