"""Which layers Stage 2 adapts and what they are called in LoRA files: `LoraTarget`s, read from the host's own
LoRA key maps (``comfy.lora.model_lora_keys_unet``, ``comfy.utils.flux_to_diffusers``) once per run, so every
name written is one LoraLoader maps.

Targets are keyed by a target key: SD: the module name ('diffusion_model.<...>.attn1.to_q'); FLUX.1: the
diffusers name of the projection ('transformer_blocks.0.attn.to_q'), because ComfyUI holds FLUX attention as
fused weights (img_attn.qkv = q, k, v rows; single blocks' linear1 = q, k, v + MLP-in rows) and q, k and v
each get their own adapter on their row slice, as the reference's separate to_q/to_k/to_v LoRAs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ..formats.lora_file import BaseFamily
from .family import describe
from .internals.lora_adapters import flux_diffusers_map, lora_key_map
from .internals.training_guard import uses_host_casts

# Paper Sec. 3.4 / reference: to_q, to_k, to_v, to_out.0 of every UNet self- and cross-attention.
ATTENTION_PROJECTION = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")

# FLUX.1, in diffusers names (the reference FLUX trainer's): double blocks' image-stream q, k, v, out and
# text-stream ("added") q, k, v, out; single blocks' q, k, v. Not the feed-forward layers (the reference adds
# them; the paper's Stage 2 is an attention LoRA) nor the single blocks' MLP-in rows and linear2 (MLP + out).
FLUX_ATTENTION_PROJECTION = re.compile(
    r"^(transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v))$")
FLUX_LAYERS = ("double blocks: attention q, k, v, out and added q, k, v, out; single blocks: q, k, v "
               "(row slices of the fused qkv / linear1 weights)")


@dataclass(frozen=True)
class LoraTarget:
    """One adapter's place: the host weight it patches ('diffusion_model.<module>.weight'), the row slice
    (offset, size) of a fused weight or None for the whole weight, the adapted [out, in] shape, and its name
    in LoRA files (kohya-style; LoraLoader maps it)."""

    weight_key: str
    rows: tuple[int, int] | None
    shape: tuple[int, int]
    file_name: str


def attention_projections(model: Any) -> list[str]:
    """Names (relative to the BaseModel, e.g. 'diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q')
    of the linear layers Stage 2 adapts: only attention projections, never convolutions, norms or
    feed-forward layers."""
    names = [name for name, module in model.model.named_modules()
             if ATTENTION_PROJECTION.search(name) and uses_host_casts(module)
             and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.ndim == 2]
    if not names:
        raise ValueError("This MODEL has no UNet attention layers (attn1/attn2 to_q, to_k, to_v, to_out.0) to put a LoRA on.")
    return names


def flux_targets(model: Any) -> dict[str, LoraTarget]:
    """{diffusers name: LoraTarget} for FLUX.1's attention projections (FLUX_ATTENTION_PROJECTION), from the
    host's own diffusers map (comfy.utils.flux_to_diffusers, which its LoRA loader uses), named as its loader's
    OneTrainer keys ('lora_transformer_transformer_blocks_0_attn_to_q')."""
    weights = dict(model.model.named_parameters())
    targets = {}
    for diffusers_key, to in flux_diffusers_map(model).items():
        name = diffusers_key[:-len(".weight")] if diffusers_key.endswith(".weight") else None
        if name is None or not FLUX_ATTENTION_PROJECTION.match(name):
            continue
        weight_key, rows = (to[0], (to[1][1], to[1][2])) if isinstance(to, tuple) else (to, None)
        out_features, in_features = weights[weight_key].shape
        targets[name] = LoraTarget(weight_key, rows, (rows[1] if rows else out_features, in_features),
                                   "lora_transformer_" + name.replace(".", "_"))
    if not targets:
        raise ValueError("This FLUX MODEL has no attention layers the host's LoRA map names; it is not a FLUX.1 layout.")
    return targets


def lora_targets(model: Any, family: BaseFamily) -> dict[str, LoraTarget]:
    """{target key: LoraTarget} of the layers Stage 2 adapts on this MODEL of `family` (see the module docstring);
    the host's LoRA key map is read here, once per call: a run calls it once and passes the result on."""
    if family.name.startswith("flux"):
        return flux_targets(model)
    layers = attention_projections(model)
    modules = dict(model.model.named_modules())
    names = kohya_names(model, family, layers)
    return {layer: LoraTarget(f"{layer}.weight", None, tuple(modules[layer].weight.shape), names[layer]) for layer in layers}


def kohya_names(model: Any, family: BaseFamily, layer_names: list[str]) -> dict[str, str]:
    """{layer name: kohya LoRA name}. kohya's scripts name SD1.x/SD2.x layers after diffusers modules
    (lora_unet_down_blocks_0_attentions_0_...) and SDXL layers after the original ones
    (lora_unet_input_blocks_4_1_...); ComfyUI's key map holds both, and we pick the family's."""
    candidates: dict[str, list[str]] = {}
    for lora_key, weight_key in lora_key_map(model).items():
        if lora_key.startswith("lora_unet_"):
            candidates.setdefault(weight_key, []).append(lora_key)
    names = {}
    for layer in layer_names:
        original = "lora_unet_" + layer[len("diffusion_model."):].replace(".", "_")
        options = candidates.get(f"{layer}.weight", [])
        if original not in options:
            raise ValueError(f"The host's LoRA key map has no name for {layer}; this model layout is not supported by Stage 2.")
        diffusers_style = [o for o in options if o != original]
        names[layer] = original if family.name == "sdxl" or not diffusers_style else diffusers_style[0]
    return names


def stage2_targets(model: Any) -> dict[str, LoraTarget]:
    """{target key: LoraTarget} of the layers Stage 2 adapts on `model`, for callers outside a run (tests,
    benchmarks); a run decides its family once and reads the key map once (lora_targets)."""
    return lora_targets(model, describe(model, stage2=True).lora)
