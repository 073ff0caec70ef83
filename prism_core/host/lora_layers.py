"""Which layers Stage 2 adapts, what they are called in LoRA files, and their trainable adapters.

Adapters are the host's own (``comfy.weight_adapter.LoRAAdapter``: its ``LoraDiff`` modules are
what ComfyUI's TrainLoraNode trains), attached with ``add_weight_wrapper`` to a clone of the
model, so the incoming MODEL never carries them. Names come from the host's own LoRA key map
(``comfy.lora.model_lora_keys_unet``), so every name we write is one LoraLoader maps.
"""
from __future__ import annotations

import re
from typing import Any

import torch

import comfy.lora
import comfy.model_base
import comfy.supported_models
from comfy.weight_adapter import LoRAAdapter
from comfy.weight_adapter.lora import LoraDiff

from ..lora_file import BaseFamily, layer_tensors

# Paper Sec. 3.4 / reference: to_q, to_k, to_v, to_out.0 of every UNet self- and cross-attention.
ATTENTION_PROJECTION = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")

_FAMILIES = [  # checked in order: SDXL-derived configs first
    (comfy.supported_models.SDXL, "sdxl", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
    (comfy.supported_models.SD20, "sd2", "sd_v2", "stable-diffusion-v2-512/lora"),
    (comfy.supported_models.SD15, "sd15", "sd_v1", "stable-diffusion-v1/lora"),
]


def base_family(model: Any) -> BaseFamily:
    """The LoRA-relevant family of a MODEL, or a ValueError naming what is supported."""
    config = model.model.model_config
    v_prediction = model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    for config_class, name, kohya, modelspec in _FAMILIES:
        if isinstance(config, config_class):
            if name == "sd2" and v_prediction:
                modelspec = "stable-diffusion-v2-768-v/lora"
            return BaseFamily(name, v_prediction, kohya, modelspec)
    raise ValueError(
        f"ConceptPrism Stage 2 supports SD1.x, SD2.x and SDXL checkpoints; this MODEL is {type(config).__name__}. "
        "Load one of those, or use the Stage 1 tokens (Prism Conditioning, Save Prism Embedding) without a LoRA "
        "(on FLUX.1, Stage 1 is supported and Stage 2 is not yet).")


def attention_projections(model: Any) -> list[str]:
    """Names (relative to the BaseModel, e.g. 'diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q')
    of the linear layers Stage 2 adapts: only attention projections, never convolutions, norms or
    feed-forward layers."""
    names = [name for name, module in model.model.named_modules()
             if ATTENTION_PROJECTION.search(name) and hasattr(module, "weight_function")
             and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.ndim == 2]
    if not names:
        raise ValueError("This MODEL has no UNet attention layers (attn1/attn2 to_q, to_k, to_v, to_out.0) to put a LoRA on.")
    return names


def kohya_names(model: Any, family: BaseFamily, layer_names: list[str]) -> dict[str, str]:
    """{layer name: kohya LoRA name}. kohya's scripts name SD1.x/SD2.x layers after diffusers modules
    (lora_unet_down_blocks_0_attentions_0_...) and SDXL layers after the original ones
    (lora_unet_input_blocks_4_1_...); ComfyUI's key map holds both, and we pick the family's."""
    candidates: dict[str, list[str]] = {}
    for lora_key, weight_key in comfy.lora.model_lora_keys_unet(model.model, {}).items():
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


def new_adapters(model: Any, layer_names: list[str], rank: int, alpha: float, seed: int) -> dict[str, LoraDiff]:
    """Fresh host LoRA adapters (update 0: down starts at zero), float32 on CPU, seeded independently
    of the global RNG and of the model's device."""
    modules = dict(model.model.named_modules())
    adapters = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in layer_names:
            stand_in = torch.empty(modules[name].weight.shape)  # create_train only reads shape and device
            adapters[name] = LoRAAdapter.create_train(stand_in, rank=rank, alpha=float(alpha))
    return adapters


def adapters_from_file(layer_to_kohya: dict[str, str], tensors: dict[str, torch.Tensor]) -> dict[str, LoraDiff]:
    """Trainable adapters continuing a saved LoRA; every layer must be in the file and every file layer used."""
    adapters, used = {}, set()
    for layer, kohya in layer_to_kohya.items():
        if f"{kohya}.lora_up.weight" not in tensors:
            raise ValueError(f"The LoRA to resume has no weights for {kohya}; it was trained on another model family or layer set. "
                             "Pick a LoRA trained by Prism LoRA Train on this model family, or set resume_from to none.")
        alpha = float(tensors[f"{kohya}.alpha"]) if f"{kohya}.alpha" in tensors else float(tensors[f"{kohya}.lora_down.weight"].shape[0])
        adapter = LoRAAdapter.load(kohya, tensors, alpha, None, used)
        adapters[layer] = adapter.to_train().float()
        used.add(f"{kohya}.alpha")
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"The LoRA to resume has {len(unused)} tensors this model has no layer for (e.g. {unused[0]}). "
                         "Pick a LoRA trained by Prism LoRA Train on this model family, or set resume_from to none.")
    return adapters


def adapter_parameters(adapters: dict[str, LoraDiff]) -> list[torch.nn.Parameter]:
    """The trainable up/down matrices (alpha is a frozen parameter of LoraDiff)."""
    return [p for adapter in adapters.values() for p in (adapter.lora_up.weight, adapter.lora_down.weight)]


def adapter_tensors(adapters: dict[str, LoraDiff], names: dict[str, str]) -> dict[str, torch.Tensor]:
    """The adapters' current weights as kohya tensors ({layer name: kohya name} from `kohya_names`)."""
    tensors: dict[str, torch.Tensor] = {}
    for layer, adapter in adapters.items():
        tensors.update(layer_tensors(names[layer], adapter.lora_up.weight, adapter.lora_down.weight, float(adapter.alpha)))
    return tensors
