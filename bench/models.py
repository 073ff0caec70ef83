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


def _vae(seed: int, channels: int = 4):
    import comfy.sd
    ddconfig = {"double_z": True, "z_channels": channels, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the host warns about every key of the (deliberately) empty state dict
    try:
        vae = comfy.sd.VAE(sd={}, config={"params": {"ddconfig": ddconfig, "embed_dim": channels}}, dtype=torch.float32)
    finally:
        logger.setLevel(level)
    _init_(vae.first_stage_model, seed)
    return vae


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Z-Image's transformer as the host's model detection describes a Z-Image checkpoint (comfy/model_detection.py:
# dim 3840, 30 heads, rope axes 32 + 48 + 48) with its 30 main blocks and 2 refiner blocks per stream, and
# Qwen3-4B as the host's Qwen3_4BConfig has it (36 layers of 2560, the real vocabulary). `small`: the same
# classes at test sizes, for --cpu-smoke.
ZIMAGE_FULL = {"dim": 3840, "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "cap_feat_dim": 2560,
               "axes_dims": [32, 48, 48]}
ZIMAGE_SMALL = {"dim": 256, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 8, "n_kv_heads": 8, "cap_feat_dim": 64,
                "axes_dims": [8, 12, 12]}
QWEN3_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2,
               "num_key_value_heads": 1}


def build_zimage(small: bool = False, unet_dtype: torch.dtype = torch.bfloat16, clip_dtype: torch.dtype = torch.bfloat16,
                 seed: int = 0, device: Any = None) -> BenchModels:
    """A Z-Image MODEL / Qwen3-4B CLIP / 16-channel VAE of random weights, stored as ComfyUI stores them on a GPU
    (unet_dtype bfloat16, or float8_e4m3fn with bfloat16 manual cast as Load Diffusion Model's fp8 option; the
    encoder in clip_dtype). Weights are drawn on `device` (the GPU for the full sizes: 10 B values)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.supported_models_base
    import comfy.text_encoders.z_image

    device = device or comfy.model_management.get_torch_device()
    shape = ZIMAGE_SMALL if small else ZIMAGE_FULL
    with torch.inference_mode():
        config = comfy.supported_models.ZImage({
            **comfy.supported_models.ZImage.unet_config, "patch_size": 2, "in_channels": 16, "qk_norm": True,
            "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True,
            "time_scale": 1000.0, "pad_tokens_multiple": 32, **shape})
        config.set_inference_dtype(unet_dtype, torch.bfloat16 if unet_dtype.itemsize == 1 else None)
        unet = config.get_model({}, device=device)
        options = {"dtype": clip_dtype, **({"qwen3_4b_model_config": QWEN3_SMALL} if small else {})}
        clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.text_encoders.z_image.ZImageTokenizer,
                                                                    comfy.text_encoders.z_image.te()), model_options=options)
        for module, offset in ((unet.diffusion_model, 0), (clip.cond_stage_model, 1)):
            generator = torch.Generator(device=device).manual_seed(seed + offset)
            with torch.no_grad():
                for name, p in module.named_parameters():
                    if p.ndim >= 2:
                        value = torch.randn(p.shape, generator=generator, device=device) / p[0].numel() ** 0.5
                    else:
                        value = torch.ones(p.shape, device=device) if name.endswith("weight") else torch.zeros(p.shape, device=device)
                    p.copy_(value.to(p.device))
        model = comfy.model_patcher.ModelPatcher(unet, load_device=comfy.model_management.get_torch_device(),
                                                 offload_device=comfy.model_management.unet_offload_device())
        vae = _vae(seed + 2, channels=16)
    for module in (unet, clip.cond_stage_model, vae.first_stage_model):
        module.requires_grad_(False)
    return BenchModels(model, clip, vae, True, {"family": "zimage", "small": small, "seed": seed,
                                                "unet_dtype": str(unet_dtype).replace("torch.", "")})
