"""Stage 2's trainable adapters on the layers lora_targets names, and their weights as LoRA file tensors.

Adapters are the host's own (``comfy.weight_adapter.LoRAAdapter``: its ``LoraDiff`` modules are
what ComfyUI's TrainLoraNode trains), attached with ``add_weight_wrapper`` to a clone of the
model, so the incoming MODEL never carries them. Adapters are keyed by target key (lora_targets):
one per whole weight, or one per row slice of a fused FLUX weight (q, k and v of img_attn.qkv / linear1).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..lora_file import layer_tensors
from .internals.lora_adapters import adapter_from_file, move_trainable, new_adapter
from .lora_targets import LoraTarget

if TYPE_CHECKING:
    from .internals.lora_adapters import LoraDiff  # the host's trainable adapter


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
