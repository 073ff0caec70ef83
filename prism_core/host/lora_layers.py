"""Stage 2's trainable adapters on the layers lora_targets names, and their weights as LoRA file tensors.

Adapters are the host's own (``comfy.weight_adapter.LoRAAdapter``: its ``LoraDiff`` modules are
what ComfyUI's TrainLoraNode trains), attached with ``add_weight_wrapper`` to a clone of the
model, so the incoming MODEL never carries them. Adapters are keyed by target key (lora_targets):
one per whole weight, or one per row slice of a fused FLUX weight (q, k and v of img_attn.qkv / linear1).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..formats.lora_file import layer_tensors
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


def trainable_adapters(targets: dict[str, LoraTarget], rank: int, alpha: float, seed: int,
                       saved: dict[str, torch.Tensor] | None = None) -> dict[str, LoraDiff]:
    """{target key: trainable host LoRA adapter} for `targets`, float32 on the CPU.

    Without `saved`: fresh adapters (update 0: down starts at zero) of `rank` and `alpha`, seeded by `seed`
    independently of the global RNG and of the model's device. With `saved` (a LoRA file's tensors): adapters
    continuing it under each target's file name, with the file's rank and alpha; raises ValueError, naming the
    fix, unless every target is in the file and every file tensor is used."""
    adapters = {}
    if saved is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for key, target in targets.items():
                adapters[key] = new_adapter(target.shape, rank, float(alpha))
        return adapters
    used: set[str] = set()
    for key, target in targets.items():
        kohya = target.file_name
        if f"{kohya}.lora_up.weight" not in saved:
            raise ValueError(f"The LoRA to resume has no weights for {kohya}; it was trained on another model family or layer set. "
                             "Pick a LoRA trained by Prism LoRA Train on this model family, or set resume_from to none.")
        saved_alpha = float(saved[f"{kohya}.alpha"]) if f"{kohya}.alpha" in saved else float(saved[f"{kohya}.lora_down.weight"].shape[0])
        adapters[key] = adapter_from_file(kohya, saved, saved_alpha, used)
        used.add(f"{kohya}.alpha")
    unused = sorted(set(saved) - used)
    if unused:
        raise ValueError(f"The LoRA to resume has {len(unused)} tensors this model has no layer for (e.g. {unused[0]}). "
                         "Pick a LoRA trained by Prism LoRA Train on this model family, or set resume_from to none.")
    return adapters


def adapter_tensors(adapters: dict[str, LoraDiff], names: dict[str, str]) -> dict[str, torch.Tensor]:
    """The adapters' current weights as kohya tensors (`names`: {target key: file name}, LoraTarget.file_name)."""
    tensors: dict[str, torch.Tensor] = {}
    for layer, adapter in adapters.items():
        tensors.update(layer_tensors(names[layer], adapter.lora_up.weight, adapter.lora_down.weight, float(adapter.alpha)))
    return tensors
