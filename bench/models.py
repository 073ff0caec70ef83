"""Host import and the benchmark's in-process ComfyUI models (random weights, explicit init).

`import_host()` makes ``import comfy`` work from COMFYUI_PATH (or the ComfyUI this pack is
installed in) on the CPU (run.py has already registered this repository as the package
``comfyui_conceptprism``, as tests/conftest.py does, without running its ``__init__``).

`build()` makes real ComfyUI objects of the SD1.5 family, like tests/host/tiny_models.py but
shaped like SD1.5 and big enough for model compute to dominate:
- UNet: SD1.5's block layout (channel_mult 1,2,4,4; attention at the first three levels and
  the middle; context 768; eps prediction) with `channels` model channels, one res block per
  level and 32-wide heads (see `unet_config`), run at 32x32 latents (256 px images);
- CLIP: ComfyUI's SD1ClipModel (clip_l) at the real width 768 with SD1.5's MLP width 3072 and
  `clip_layers` layers, and the real 49408-token vocabulary;
- VAE: a small KL autoencoder with 8x downsampling (only used to encode the concept set).
Weights are built under ``torch.inference_mode()`` when `inference=True`, which is what
ComfyUI's executor gives a node (inference tensors); `inference=False` gives ordinary frozen
tensors, which is what a plain PyTorch/diffusers trainer holds. The two builds of one seed hold
identical values.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def import_host(cpu: bool = True) -> Path:
    """The host from COMFYUI_PATH (or the ComfyUI the pack sits in), importable on the CPU (or, with
    cpu=False, on the GPU the host picks), with torch's SDPA as ComfyUI uses on current GPUs (its CPU
    default, sub-quadratic chunked attention, is several times slower here and would dilute everything
    else in model time). run.py has put tests/ on sys.path."""
    import hostenv
    host = hostenv.find_host()
    if host is None:
        raise SystemExit("bench: " + hostenv.missing_host_reason())
    return hostenv.import_host(host, pytorch_attention=True, cpu=cpu)


@dataclass
class BenchModels:
    model: Any  # comfy.model_patcher.ModelPatcher
    clip: Any   # comfy.sd.CLIP
    vae: Any    # comfy.sd.VAE
    inference: bool
    config: dict


def _init_(module: torch.nn.Module, seed: int) -> None:
    """Deterministic explicit init (comfy ops skip torch's own): scaled normal matrices, unit norms."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def unet_config(channels: int) -> dict:
    """SD1.5's layout (channel_mult 1,2,4,4, attention at levels 1-3 and the middle, context 768,
    conv proj_in) with one res block per level instead of two, and 32-channel heads: at 64
    channels SD1.5's fixed 8 heads would be 8 wide, making softmax, not matmuls, the cost."""
    return {"in_channels": 4, "out_channels": 4, "model_channels": channels, "num_res_blocks": [1, 1, 1, 1],
            "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 0],
            "transformer_depth_output": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
            "context_dim": 768, "image_size": 32, "use_spatial_transformer": True, "num_heads": -1,
            "num_head_channels": 32, "use_linear_in_transformer": False}


def clip_config(layers: int) -> dict:
    return {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
            "num_hidden_layers": layers, "projection_dim": 768}


def sd15_unet_config() -> dict:
    """SD1.5's own UNet config as the host defines it (model_channels 320, 8 heads, two res blocks per level)."""
    import comfy.supported_models
    return dict(comfy.supported_models.SD15.unet_config, **{
        "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
        "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False,
        "image_size": 32, "use_spatial_transformer": True})


def build(channels: int = 64, clip_layers: int = 1, seed: int = 0, inference: bool = True,
          unet_dtype: torch.dtype = torch.float32, full_sd15: bool = False) -> BenchModels:
    """unet_dtype: how the UNet's weights are stored (ComfyUI loads SD1.5 in float16 on most GPUs).
    full_sd15: SD1.5's real UNet shape (`sd15_unet_config`, ~860 M parameters) instead of `unet_config(channels)`."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base

    mode = torch.inference_mode() if inference else contextlib.nullcontext()
    with mode:
        shape = sd15_unet_config() if full_sd15 else {**comfy.supported_models.SD15.unet_config, **unet_config(channels)}
        config = comfy.supported_models.SD15(shape)
        config.set_inference_dtype(unet_dtype, None)
        unet = comfy.model_base.BaseModel(config)
        clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                             model_options={"clip_l_model_config": clip_config(clip_layers)})
        _init_(unet.diffusion_model, seed)
        _init_(clip.cond_stage_model, seed + 1)
        device = comfy.model_management.get_torch_device()
        model = comfy.model_patcher.ModelPatcher(unet, load_device=device, offload_device=device)
        vae = _vae(seed + 2)
    for module in (unet, clip.cond_stage_model, vae.first_stage_model):
        module.requires_grad_(False)  # frozen, as the reference freezes its UNet/VAE/encoder
    return BenchModels(model, clip, vae, inference, {"channels": 320 if full_sd15 else channels, "clip_layers": clip_layers,
                                                     "seed": seed, "unet_dtype": str(unet_dtype).replace("torch.", "")})


def _vae(seed: int):
    import comfy.sd
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the host warns about every key of the (deliberately) empty state dict
    try:
        vae = comfy.sd.VAE(sd={}, config={"params": {"ddconfig": ddconfig, "embed_dim": 4}}, dtype=torch.float32)
    finally:
        logger.setLevel(level)
    _init_(vae.first_stage_model, seed)
    return vae


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
