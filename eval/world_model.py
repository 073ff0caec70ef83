"""The tiny text-to-image model of the synthetic world, built from ComfyUI's own classes.

- Diffusion model: an SD1.x-family UNet (``comfy.supported_models.SD15`` config, ``comfy.model_base.BaseModel``,
  eps-prediction, the SD1 discrete schedule) with 32 base channels on 16x16x4 latents.
- Text encoder: ComfyUI's clip_l ``SDClipModel`` (``comfy.sd1_clip.SD1ClipModel``) with a small config
  (width 64, 3 layers) and the SD1 tokenizer that ships in the ComfyUI checkout (no download).
- VAE: a small patch autoencoder (16x16x4 latents) inside a real ``comfy.sd.VAE`` (see autoencoder.py).

File: one safetensors file in the SD1.x single-file layout (``model.diffusion_model.*``,
``cond_stage_model.*``, ``first_stage_model.*``) with the configs in its header. ComfyUI's
CheckpointLoaderSimple cannot load it: its model detection only knows the full-size SD1 config
(320 channels, context 768), and its VAE detection only ComfyUI's own architectures.
`load_world_model` rebuilds the objects with the configs below (checked against the header) instead,
giving the same kinds of MODEL / CLIP / VAE objects that loader would, ready for the pack's nodes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils

import autoencoder

TEXT_WIDTH = 64
CLIP_CONFIG: dict[str, Any] = {"hidden_size": TEXT_WIDTH, "intermediate_size": 4 * TEXT_WIDTH, "num_attention_heads": 4,
                               "num_hidden_layers": 3, "projection_dim": TEXT_WIDTH}
LATENT_SIZE = 16  # 64 px / 4
# Cross-attention only at 8x8, 4x4 and the middle: attention at 16x16 (256 tokens) tripled the
# CPU cost and the world's layout (left / center / right) is resolved at 8x8 already.
UNET_CONFIG: dict[str, Any] = {
    "in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2, 4], "num_res_blocks": [1, 1, 1],
    "transformer_depth": [0, 1, 1], "transformer_depth_output": [0, 0, 1, 1, 1, 1], "transformer_depth_middle": 1,
    "context_dim": TEXT_WIDTH, "image_size": LATENT_SIZE, "use_spatial_transformer": True, "num_heads": -1,
    "num_head_channels": 32, "use_linear_in_transformer": False, "adm_in_channels": None, "use_temporal_attention": False,
}
FORMAT = "conceptprism-world-sd1-tiny/1"


class WorldSDTokenizer(comfy.sd1_clip.SDTokenizer):
    """The SD1 CLIP tokenizer, declaring this encoder's width for `embedding:` files (the host checks it)."""

    def __init__(self, embedding_directory: str | None = None, tokenizer_data: dict = {}) -> None:
        super().__init__(embedding_directory=embedding_directory, embedding_size=TEXT_WIDTH, embedding_key="clip_l",
                         tokenizer_data=tokenizer_data)


class WorldTokenizer(comfy.sd1_clip.SD1Tokenizer):
    """SD1Tokenizer (key 'l', attribute clip_l) over `WorldSDTokenizer`."""

    def __init__(self, embedding_directory: str | None = None, tokenizer_data: dict = {}) -> None:
        super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, tokenizer=WorldSDTokenizer)


@dataclass
class WorldModel:
    """The three objects a checkpoint loader returns."""

    model: comfy.model_patcher.ModelPatcher
    clip: comfy.sd.CLIP
    vae: comfy.sd.VAE


def model_config() -> comfy.supported_models.SD15:
    """An SD15 model config with the tiny UNet config (so the pack sees an SD1.x model)."""
    config = comfy.supported_models.SD15(dict(UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    return config


def init_weights(module: torch.nn.Module, seed: int, zero_outputs: bool = False) -> None:
    """PyTorch's default initialisation (ComfyUI's ops skip it), embeddings N(0, 0.02) as CLIP's.

    zero_outputs: zero the UNet's residual-branch output layers (resblock out_layers.3, transformer
    proj_out, final out.2), as the original SD code's zero_module does, so training starts from identity blocks.
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.Linear.reset_parameters(m)
            elif isinstance(m, torch.nn.Conv2d):
                torch.nn.Conv2d.reset_parameters(m)
            elif isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if m.weight is not None:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
            elif isinstance(m, torch.nn.Embedding):
                m.weight.normal_(0.0, 0.02)
            if zero_outputs and (name.endswith("out_layers.3") or name.endswith("proj_out") or name == "out.2"):
                for p in m.parameters():
                    p.zero_()
        for name, p in module.named_parameters():
            if name.endswith("position_embedding.weight"):
                p.normal_(0.0, 0.01)
            elif name.endswith("logit_scale"):
                p.fill_(4.6055)


def new_unet(seed: int) -> comfy.model_base.BaseModel:
    base = comfy.model_base.BaseModel(model_config())
    init_weights(base.diffusion_model, seed, zero_outputs=True)
    return base


def new_clip(seed: int | None, embedding_directory: str | None = None) -> comfy.sd.CLIP:
    """A CLIP object (SD1 tokenizer, clip_l encoder with `CLIP_CONFIG`); initialised when seed is given."""
    target = comfy.supported_models_base.ClipTarget(WorldTokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory,
                         model_options={"clip_l_model_config": dict(CLIP_CONFIG), "dtype": torch.float32})
    if seed is not None:
        init_weights(clip.cond_stage_model, seed)
    return clip


def patcher(base: comfy.model_base.BaseModel) -> comfy.model_patcher.ModelPatcher:
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def save_world_model(path: Path, unet_sd: dict[str, torch.Tensor], clip_l_sd: dict[str, torch.Tensor],
                     vae_sd: dict[str, torch.Tensor], info: dict[str, Any], dtype: torch.dtype = torch.float16) -> None:
    """One SD1-layout safetensors file with the configs and `info` (training record) in the header.

    unet_sd: the UNet's (``diffusion_model``) state dict; clip_l_sd: the clip_l SDClipModel's;
    vae_sd: the autoencoder's. Keys are mapped by the SD15 config's own saving functions, as
    ComfyUI's checkpoint saving does. Weights are stored in `dtype` (float16 halves the artifact)."""
    config = model_config()
    sd = config.process_unet_state_dict_for_saving(dict(unet_sd))
    sd.update(config.process_clip_state_dict_for_saving({f"clip_l.{k}": v for k, v in clip_l_sd.items()}))
    sd.update(config.process_vae_state_dict_for_saving(dict(vae_sd)))
    sd = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous() for k, v in sd.items()}
    metadata = {"format": FORMAT, "unet_config": json.dumps(UNET_CONFIG), "clip_l_config": json.dumps(CLIP_CONFIG),
                "autoencoder": json.dumps(autoencoder.describe()), "info": json.dumps(info)}
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(sd, str(path), metadata=metadata)


def _check_configs(metadata: dict[str, str], path: Path) -> None:
    # The configs are code constants; the header records them so a stale file is caught, not misloaded.
    expected = {"unet_config": UNET_CONFIG, "clip_l_config": CLIP_CONFIG, "autoencoder": autoencoder.describe()}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format {metadata.get('format')!r}).")
    for key, value in expected.items():
        if json.loads(metadata[key]) != value:
            raise ValueError(f"{path}: {key} differs from eval/world_model.py; rebuild the artifact (eval/build_world.py).")


def load_world_model(path: Path, embedding_directory: str | None = None) -> WorldModel:
    """Rebuild MODEL / CLIP / VAE from a `save_world_model` file, float32, as a checkpoint loader does
    (under inference mode, so weights are inference tensors exactly as in a ComfyUI run)."""
    sd, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    _check_configs(metadata or {}, path)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    with torch.inference_mode():
        config = model_config()
        base = comfy.model_base.BaseModel(config)
        base.load_model_weights(sd, "model.diffusion_model.")
        clip = new_clip(None, embedding_directory)
        missing, _ = clip.load_sd(config.process_clip_state_dict(dict(sd)), full_model=True)
        # The host's SD1 saving drops these two (unused by SD1's conditioning); its loader leaves them too.
        missing = [k for k in missing if k not in ("clip_l.transformer.text_projection.weight", "clip_l.logit_scale")]
        if missing:
            raise ValueError(f"{path}: text encoder weights missing: {missing[:5]}")
        ae = autoencoder.PatchAutoencoder()
        ae.load_state_dict(comfy.utils.state_dict_prefix_replace(sd, {"first_stage_model.": ""}, filter_keys=True))
        vae = autoencoder.comfy_vae(ae)
    return WorldModel(patcher(base), clip, vae)


def world_info(path: Path) -> dict[str, Any]:
    """The training record stored in the file's header."""
    _, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    return json.loads(metadata["info"])
