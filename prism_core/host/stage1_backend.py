"""`Stage1Backend` on ComfyUI's MODEL (ModelPatcher) and CLIP."""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..training.batching import Cond
from ..training.prompts import Prompt, SlotVectors
from . import text
from .internals import training_guard
from .diffusion import TRAINING_DTYPES, PredictingBackend, Predictor, compute_dtype as resolve_dtype, dtype_name, encode_latents, model_inputs  # noqa: F401 (re-exported)
from .family import ModelFamily, describe


class ComfyStage1Backend(PredictingBackend):
    """Encodes prompts with learned slots and predicts noise with the host's own primitives.

    Use as a context manager inside ``torch.inference_mode(False)``: entering clones the MODEL's
    and CLIP's patchers (with weight copies where needed), loads them, and patches the CLIP
    layers (and, optionally, checkpointing); leaving restores every module.
    """

    def __init__(self, model: Any, clip: Any, slot_lengths: dict[str, dict[str, int]], resolution: int,
                 max_batch: int = 8, training_dtype: str = "float32", checkpointing: bool = False,
                 guidance: float | None = None, family: ModelFamily | None = None) -> None:
        self.model, self.clip, self.slot_lengths, self.guidance = model, clip, slot_lengths, guidance
        self.family = family or describe(model)  # a run passes the one it decided
        self.resolution, self.max_batch = resolution, max_batch
        self.training_dtype, self.checkpointing = training_dtype, checkpointing
        self.num_timesteps = self.family.schedule_levels
        self._tokens: dict[Prompt, dict[str, list]] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "ComfyStage1Backend":
        compute_dtype = resolve_dtype(self.training_dtype, self.model)
        self.compute_dtype = dtype_name(compute_dtype)
        self.train_model, self.train_clip = self._stack.enter_context(training_guard.loaded_training_clones(
            self.model, self.clip, checkpointing=self.checkpointing, compute_dtype=compute_dtype))
        self._predictor = Predictor(self.train_model, self.family.target, compute_dtype)
        self.loss_scaling = self._predictor.loss_scaling
        self.target_kind = self._predictor.kind
        self.device = self._predictor.device
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    # -- text ---------------------------------------------------------------------------------
    def _conditioning(self, cond: torch.Tensor, pooled: torch.Tensor | None) -> Cond:
        return model_inputs(self.train_model, cond, pooled, self.resolution, self.device, self.guidance)

    def encode(self, prompt: Prompt, vectors: SlotVectors) -> Cond:
        if prompt not in self._tokens:
            self._tokens[prompt] = text.tokenize_with_slots(
                self.train_clip, text.prompt_text(prompt, set(self.slot_lengths)), self.slot_lengths)
        tokens = text.fill_slots(self._tokens[prompt], vectors)
        return self._conditioning(*text.encode_tokens(self.train_clip, tokens))

    def encode_null(self) -> Cond:
        with torch.no_grad():
            return self._conditioning(*text.encode_tokens(self.train_clip, self.train_clip.tokenize("")))

    # -- initialisation ---------------------------------------------------------------------------
    def caption_embedding(self, caption: str) -> dict[str, torch.Tensor]:
        return text.caption_embedding(self.train_clip, caption)

    def vocabulary_statistics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return text.vocabulary_statistics(self.train_clip)
