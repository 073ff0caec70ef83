"""The world's latent space: a small patch autoencoder (64x64x3 <-> 16x16x4) inside a ``comfy.sd.VAE``.

Why not ComfyUI's AutoencoderKL: its first and last stages convolve at full resolution with at least
32 channels (GroupNorm(32)), which made one training step ~5 s on one CPU thread, too slow for the
build budget. This autoencoder works entirely at 16x16: pixel-unshuffle (4x4 patches -> 48 channels),
a few convolutions, 4 latent channels; the decoder mirrors it and pixel-shuffles back. It is wrapped in
a real ``comfy.sd.VAE`` (its ModelPatcher, memory management, batching, [0, 1] <-> [-1, 1] conversion),
so ``vae.encode`` / ``vae.decode`` behave as with any checkpoint's VAE.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

import comfy.model_management
import comfy.model_patcher
import comfy.sd

PATCH = 4
LATENT_CHANNELS = 4
ENCODER_WIDTH = 32
DECODER_WIDTH = 64


class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
                                   nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class PatchAutoencoder(nn.Module):
    """encode: [B, 3, 64, 64] in [-1, 1] -> [B, 4, 16, 16]; decode: the inverse (unclamped).

    `shift` / `scale` (buffers) standardise the latent: encode returns (raw - shift) * scale, set after
    training so that SD1's latent scaling (x 0.18215) gives unit variance, as SD1's own VAE does.
    """

    def __init__(self) -> None:
        super().__init__()
        c_in = 3 * PATCH * PATCH
        self.encoder = nn.Sequential(nn.PixelUnshuffle(PATCH), nn.Conv2d(c_in, ENCODER_WIDTH, 3, padding=1),
                                     ResBlock(ENCODER_WIDTH), ResBlock(ENCODER_WIDTH), nn.GroupNorm(8, ENCODER_WIDTH), nn.SiLU(),
                                     nn.Conv2d(ENCODER_WIDTH, LATENT_CHANNELS, 1))
        self.decoder = nn.Sequential(nn.Conv2d(LATENT_CHANNELS, DECODER_WIDTH, 3, padding=1), ResBlock(DECODER_WIDTH),
                                     ResBlock(DECODER_WIDTH), ResBlock(DECODER_WIDTH), nn.GroupNorm(8, DECODER_WIDTH), nn.SiLU(),
                                     nn.Conv2d(DECODER_WIDTH, c_in, 3, padding=1), nn.PixelShuffle(PATCH))
        self.register_buffer("shift", torch.zeros(1, LATENT_CHANNELS, 1, 1))
        self.register_buffer("scale", torch.ones(1, LATENT_CHANNELS, 1, 1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (self.encoder(x) - self.shift) * self.scale

    def decode(self, z: torch.Tensor, **_: object) -> torch.Tensor:
        return self.decoder(z / self.scale + self.shift)


def describe() -> dict[str, int]:
    """The architecture constants, recorded in the world-model file's header."""
    return {"patch": PATCH, "latent_channels": LATENT_CHANNELS, "encoder_width": ENCODER_WIDTH, "decoder_width": DECODER_WIDTH}


def comfy_vae(autoencoder: PatchAutoencoder) -> comfy.sd.VAE:
    """A ``comfy.sd.VAE`` whose model is `autoencoder`.

    The host's VAE class only builds its own architectures, so it is constructed empty (the
    ``no weights`` branch, which sets every attribute) and then given this model and a ModelPatcher
    for it, as its constructor would have done.
    """
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the empty construction warns "No VAE weights detected"
    try:
        vae = comfy.sd.VAE(sd={})
    finally:
        logger.setLevel(level)
    vae.first_stage_model = autoencoder.eval()
    vae.downscale_ratio = vae.upscale_ratio = PATCH
    vae.latent_channels = LATENT_CHANNELS
    vae.device = comfy.model_management.vae_device()
    vae.vae_dtype = torch.float32
    vae.output_device = comfy.model_management.intermediate_device()
    autoencoder.to(vae.vae_dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(autoencoder, load_device=vae.device,
                                                   offload_device=comfy.model_management.vae_offload_device())
    return vae
