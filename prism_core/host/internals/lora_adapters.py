"""The host's trainable LoRA adapters and LoRA key maps, as Stage 2 uses them.

``comfy.weight_adapter.LoRAAdapter`` (``create_train``, ``load``, ``to_train``) gives ``LoraDiff`` modules, what
ComfyUI's own Train LoRA node trains; ``comfy.lora.model_lora_keys_unet`` and ``comfy.utils.flux_to_diffusers``
are the maps LoraLoader names file keys with; the loader moves weight functions that have ``move_to``
(``comfy.model_patcher.move_weight_functions``). contract.py detects each by feature; tests/host/
test_host_contract.py guards them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

import comfy.lora
import comfy.utils

if TYPE_CHECKING:  # imported where used, so a host without them still loads the pack (contract.require refuses)
    from comfy.weight_adapter.lora import LoraDiff

__all__ = ["adapter_from_file", "flux_diffusers_map", "lora_key_map", "move_trainable", "new_adapter", "trainable_parameters"]


def new_adapter(shape: tuple[int, int], rank: int, alpha: float) -> LoraDiff:
    """A fresh trainable adapter for an [out, in] weight (update 0: the host starts down at zero), float32 on
    the CPU, drawn from the global generator (the caller seeds it)."""
    from comfy.weight_adapter import LoRAAdapter
    stand_in = torch.empty(shape)  # create_train only reads shape and device
    return LoRAAdapter.create_train(stand_in, rank=rank, alpha=alpha)


def adapter_from_file(kohya: str, tensors: dict[str, torch.Tensor], alpha: float, used: set[str]) -> LoraDiff:
    """A trainable float32 adapter holding the saved `kohya`.lora_up/lora_down weights of `tensors`; the host's
    loader adds the keys it read to `used`."""
    from comfy.weight_adapter import LoRAAdapter
    return LoRAAdapter.load(kohya, tensors, alpha, None, used).to_train().float()


def trainable_parameters(adapters: dict[str, LoraDiff]) -> list[torch.nn.Parameter]:
    """The trainable up/down matrices of the host's adapters, up then down per adapter (``LoraDiff`` holds them
    as ``lora_up`` / ``lora_down`` Linear weights; its alpha is a frozen parameter)."""
    return [p for adapter in adapters.values() for p in (adapter.lora_up.weight, adapter.lora_down.weight)]


def lora_key_map(model: Any) -> dict[str, str]:
    """{LoRA file key: host weight key} as LoraLoader maps the keys of a file for this MODEL's diffusion model."""
    return comfy.lora.model_lora_keys_unet(model.model, {})


def flux_diffusers_map(model: Any) -> dict[str, Any]:
    """{diffusers weight name: host weight key, or (host key, (dim, offset, size)) for a row slice of a fused
    weight}: FLUX's map for this MODEL's config, as the host's LoRA loader reads diffusers files with it."""
    return comfy.utils.flux_to_diffusers(model.model.model_config.unet_config, output_prefix="diffusion_model.")


def move_trainable(module: torch.nn.Module, device: torch.device) -> int:
    """Move a trainable weight function's parameters to `device`; returns the bytes they hold there.

    The host's loader moves the weight functions it finds on a module with their ``move_to`` (the feature
    ``comfy.model_patcher.move_weight_functions`` looks for, as the host's own trainable adapters,
    ``WeightAdapterTrainBase``, have it) whenever it moves the weights: to the GPU on load, to the offload
    device on unload. Without it the adapters would stay on the CPU while the weight they patch is on the GPU,
    and the first forward fails with tensors on two devices. The host loads and unloads in inference mode (the
    executor's, and the pack's `training_guard.load_as_executor`), where a move would give the parameters
    inference tensors that autograd cannot train; so the move runs with inference mode off. ``Module.to`` swaps
    each Parameter's data and keeps the Parameter objects between CPU and CUDA, so an optimizer holding them
    keeps training them. Dtype: the adapters stay float32 and return the dtype of the weight they are given
    (the host's compute dtype), so a compute-dtype change needs no move."""
    with torch.inference_mode(False):
        module.to(device=device)
    return sum(p.numel() * p.element_size() for p in module.parameters())
