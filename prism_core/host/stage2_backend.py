"""`Stage2Backend` on ComfyUI's MODEL (ModelPatcher): a loaded training clone carrying the trainable LoRA adapters."""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from .diffusion import PredictingBackend, Predictor, compute_dtype as resolve_dtype, dtype_name
from .family import ModelFamily
from .internals import training_guard
from .lora_layers import weight_wrappers
from .lora_targets import LoraTarget


class ComfyStage2Backend(PredictingBackend):
    """`Stage2Backend` on a MODEL: a loaded clone carrying trainable host LoRA adapters.

    family: the run's (family.describe); targets: {target key: LoraTarget} the adapters patch (lora_targets, read
    once per run); adapters: {target key: the host's LoraDiff}. Use as a context manager inside
    ``torch.inference_mode(False)``; leaving restores every module.
    """

    def __init__(self, model: Any, adapters: dict[str, torch.nn.Module], family: ModelFamily,
                 targets: dict[str, LoraTarget], *, max_batch: int = 4, training_dtype: str = "float32",
                 checkpointing: bool = False) -> None:
        self.model, self.adapters, self.family, self.targets = model, adapters, family, targets
        self.max_batch, self.training_dtype, self.checkpointing = max_batch, training_dtype, checkpointing
        self.num_timesteps = family.schedule_levels
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "ComfyStage2Backend":
        wrappers = weight_wrappers(self.targets, self.adapters)
        compute_dtype = resolve_dtype(self.training_dtype, self.model)
        self.compute_dtype = dtype_name(compute_dtype)
        self.train_model, _ = self._stack.enter_context(training_guard.loaded_training_clones(
            self.model, None, wrappers, self.checkpointing, compute_dtype))
        self._predictor = Predictor(self.train_model, self.family.target, compute_dtype)
        self.loss_scaling = self._predictor.loss_scaling
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
