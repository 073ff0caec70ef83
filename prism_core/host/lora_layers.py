"""Which layers Stage 2 adapts, what they are called in LoRA files, and their trainable adapters.

Adapters are the host's own (``comfy.weight_adapter.LoRAAdapter``: its ``LoraDiff`` modules are
what ComfyUI's TrainLoraNode trains), attached with ``add_weight_wrapper`` to a clone of the
model, so the incoming MODEL never carries them. Names come from the host's own LoRA key map
(``comfy.lora.model_lora_keys_unet``), so every name we write is one LoraLoader maps.

Adapters are keyed by a target key: SD: the module name ('diffusion_model.<...>.attn1.to_q'); FLUX.1: the
diffusers name of the projection ('transformer_blocks.0.attn.to_q'), because ComfyUI holds FLUX attention as
fused weights (img_attn.qkv = q, k, v rows; single blocks' linear1 = q, k, v + MLP-in rows) and q, k and v
each get their own adapter on their row slice, as the reference's separate to_q/to_k/to_v LoRAs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

import comfy.model_base
import comfy.supported_models

from ..lora_file import BaseFamily, layer_tensors

if TYPE_CHECKING:
    from .internals.lora_adapters import LoraDiff  # the host's trainable adapter
from .internals.lora_adapters import adapter_from_file, flux_diffusers_map, lora_key_map, move_trainable, new_adapter
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

_FAMILIES = [  # checked in order: SDXL-derived configs first
    (comfy.supported_models.SDXL, "sdxl", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
    (comfy.supported_models.SD20, "sd2", "sd_v2", "stable-diffusion-v2-512/lora"),
    (comfy.supported_models.SD15, "sd15", "sd_v1", "stable-diffusion-v1/lora"),
]


def lora_family(model: Any, flux: bool, dev: bool) -> tuple[BaseFamily | None, str]:
    """(the LoRA-relevant family of a MODEL, "") or (None, why Stage 2 refuses it). `flux`: FLUX.1; `dev`: it reads
    guidance (FLUX.1-dev, not schnell). Asked once per run, by family.describe."""
    config = model.model.model_config
    v_prediction = model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    if flux:
        return BaseFamily("flux1" if dev else "flux1-schnell", False, "flux1",
                          "flux-1-dev/lora" if dev else "flux-1-schnell/lora"), ""
    for config_class, name, kohya, modelspec in _FAMILIES:
        if isinstance(config, config_class):
            if name == "sd2" and v_prediction:
                modelspec = "stable-diffusion-v2-768-v/lora"
            return BaseFamily(name, v_prediction, kohya, modelspec), ""
    return None, (
        f"ConceptPrism Stage 2 supports SD1.x, SD2.x, SDXL and FLUX.1 (dev, schnell); this MODEL is {type(config).__name__}. "
        "Load one of those, or use the Stage 1 tokens (Prism Conditioning, Save Prism Embedding) without a LoRA.")


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


class RowSliceLoras(torch.nn.Module):
    """A weight function adding separate LoRA updates to row slices of one fused weight (FLUX's qkv / linear1):
    rows [offset, offset + size) get adapter(w[rows]) (the host's LoraDiff arithmetic on the slice, which is
    what its LoRA loader does with a diffusers slice key), other rows pass unchanged; out of place."""

    def __init__(self, slices: list[tuple[tuple[int, int], LoraDiff]]) -> None:
        super().__init__()
        ordered = sorted(slices, key=lambda item: item[0][0])
        self.rows = [rows for rows, _ in ordered]
        self.adapters = torch.nn.ModuleList([adapter for _, adapter in ordered])

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        pieces, start = [], 0
        for (offset, size), adapter in zip(self.rows, self.adapters):
            if offset > start:
                pieces.append(w[start:offset])
            pieces.append(adapter(w[offset:offset + size]))
            start = offset + size
        if start < w.shape[0]:
            pieces.append(w[start:])
        return torch.cat(pieces)

    def move_to(self, device: torch.device) -> int:
        """Move the adapters to `device` with the weights they patch (see `move_trainable`)."""
        return move_trainable(self, device)


class WholeWeightLora(torch.nn.Module):
    """The weight function for a LoRA on a whole weight: the host's adapter (``LoraDiff``: W + alpha/rank *
    up @ down, out of place), moved with `move_trainable` rather than the adapter's own ``move_to``."""

    def __init__(self, adapter: LoraDiff) -> None:
        super().__init__()
        self.adapter = adapter

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return self.adapter(w)

    def move_to(self, device: torch.device) -> int:
        """Move the adapter to `device` with the weight it patches (see `move_trainable`)."""
        return move_trainable(self, device)


def weight_wrappers(targets: dict[str, LoraTarget], adapters: dict[str, LoraDiff]) -> dict[str, Any]:
    """{host weight key: weight function} putting `adapters` ({target key: adapter}) on a training clone:
    a WholeWeightLora for a whole weight, a RowSliceLoras for the slices of one fused weight."""
    whole: dict[str, Any] = {}
    sliced: dict[str, list] = {}
    for key, adapter in adapters.items():
        target = targets[key]
        if target.rows is None:
            whole[target.weight_key] = WholeWeightLora(adapter)
        else:
            sliced.setdefault(target.weight_key, []).append((target.rows, adapter))
    return {**whole, **{key: RowSliceLoras(slices) for key, slices in sliced.items()}}


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


def new_adapters(targets: dict[str, LoraTarget], layer_names: list[str], rank: int, alpha: float, seed: int
                 ) -> dict[str, LoraDiff]:
    """Fresh host LoRA adapters (update 0: down starts at zero), float32 on CPU, seeded independently
    of the global RNG and of the model's device; keyed by target key (`layer_names`, keys of `targets`)."""
    adapters = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in layer_names:
            adapters[name] = new_adapter(targets[name].shape, rank, float(alpha))
    return adapters


def adapters_from_file(layer_to_kohya: dict[str, str], tensors: dict[str, torch.Tensor]) -> dict[str, LoraDiff]:
    """Trainable adapters continuing a saved LoRA; every layer must be in the file and every file layer used."""
    adapters, used = {}, set()
    for layer, kohya in layer_to_kohya.items():
        if f"{kohya}.lora_up.weight" not in tensors:
            raise ValueError(f"The LoRA to resume has no weights for {kohya}; it was trained on another model family or layer set. "
                             "Pick a LoRA trained by Prism LoRA Train on this model family, or set resume_from to none.")
        alpha = float(tensors[f"{kohya}.alpha"]) if f"{kohya}.alpha" in tensors else float(tensors[f"{kohya}.lora_down.weight"].shape[0])
        adapters[layer] = adapter_from_file(kohya, tensors, alpha, used)
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
