"""Which layers Stage 2 adapts and what they are called in LoRA files: `LoraTarget`s, read from the host's own
LoRA key maps (``comfy.lora.model_lora_keys_unet``, ``comfy.utils.flux_to_diffusers``) once per run, so every
name written is one LoraLoader maps.

Targets are keyed by a target key: SD: the module name ('diffusion_model.<...>.attn1.to_q'); FLUX.1 and
Z-Image: the diffusers name of the projection ('transformer_blocks.0.attn.to_q', 'layers.0.attention.to_q'),
because ComfyUI holds their attention as fused weights (FLUX: img_attn.qkv = q, k, v rows; single blocks'
linear1 = q, k, v + MLP-in rows; Z-Image: attention.qkv) and q, k and v each get their own adapter on their row
slice, as the reference's separate to_q/to_k/to_v LoRAs. Both read the host's map of diffusers names to those
slices (FUSED_FAMILIES).
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

# Z-Image, in the diffusers names the host's key map gives it (comfy.utils.z_image_to_diffusers): q, k, v and out
# of the attention of every block: the main (image + text) blocks and the text and image refiner blocks.
ZIMAGE_ATTENTION_PROJECTION = re.compile(r"^(layers|context_refiner|noise_refiner)\.\d+\.attention\.(to_q|to_k|to_v|to_out\.0)$")
ZIMAGE_LAYERS = "main, context-refiner and noise-refiner blocks: attention q, k, v (row slices of the fused qkv weight), out"
SD_LAYERS = "attention (to_q, to_k, to_v, to_out.0)"


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


def _flux_names(model: Any) -> dict[str, Any]:
    # comfy.utils.flux_to_diffusers, which the host's LoRA loader uses: "<name>.weight" -> weight key or slice
    return {k[:-len(".weight")]: to for k, to in flux_diffusers_map(model).items() if k.endswith(".weight")}


def _zimage_names(model: Any) -> dict[str, Any]:
    # the host's LoRA key map holds Z-Image's diffusers names as "diffusion_model.<name>" (comfy/lora.py)
    return {k[len("diffusion_model."):]: to for k, to in lora_key_map(model).items() if k.startswith("diffusion_model.")}


# Families whose attention weights the host fuses: (diffusers names -> weight key or (key, (dim, offset, size))
# read from the host's map, the names Stage 2 adapts, the name a layer gets in LoRA files (one the host's loader
# maps: FLUX.1 as its OneTrainer keys, 'lora_transformer_transformer_blocks_0_attn_to_q'; Z-Image as its
# diffusers keys, 'diffusion_model.layers.0.attention.to_q'), the layers as the LoRA header describes them).
FUSED_FAMILIES = {
    "flux1": (_flux_names, FLUX_ATTENTION_PROJECTION, lambda name: "lora_transformer_" + name.replace(".", "_")),
    "zimage": (_zimage_names, ZIMAGE_ATTENTION_PROJECTION, lambda name: "diffusion_model." + name),
}
# Which layers Stage 2 adapts, as LoRA headers record it, by LoRA family name (SD_LAYERS for the others). FLUX.2
# Klein reads FLUX.1's map and has its layer set.
ADAPTED_LAYERS = {"flux1": FLUX_LAYERS, "flux1-schnell": FLUX_LAYERS, "flux2-klein": FLUX_LAYERS, "zimage": ZIMAGE_LAYERS}


def _fused_family(family: BaseFamily) -> str | None:
    return "flux1" if family.name.startswith("flux") else family.name if family.name in FUSED_FAMILIES else None


def fused_targets(model: Any, fused: str) -> dict[str, LoraTarget]:
    """{diffusers name: LoraTarget} for the attention projections of a family in FUSED_FAMILIES, from the host's own
    map of diffusers names to weights and row slices (what its LoRA loader uses). Raises ValueError when the map
    names none (not that family's layout)."""
    read_names, adapted, file_name = FUSED_FAMILIES[fused]
    weights = dict(model.model.named_parameters())
    targets = {}
    for name, to in read_names(model).items():
        if not adapted.match(name):
            continue
        weight_key, rows = (to[0], (to[1][1], to[1][2])) if isinstance(to, tuple) else (to, None)
        out_features, in_features = weights[weight_key].shape
        targets[name] = LoraTarget(weight_key, rows, (rows[1] if rows else out_features, in_features), file_name(name))
    if not targets:
        raise ValueError(f"This MODEL has no attention layers the host's LoRA map names for {fused}; it is not that "
                         "family's layout.")
    return targets


def lora_targets(model: Any, family: BaseFamily) -> dict[str, LoraTarget]:
    """{target key: LoraTarget} of the layers Stage 2 adapts on this MODEL of `family` (see the module docstring);
    the host's LoRA key map is read here, once per call: a run calls it once and passes the result on."""
    fused = _fused_family(family)
    if fused:
        return fused_targets(model, fused)
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
