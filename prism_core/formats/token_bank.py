"""PRISM_TOKENS: the learned target and residual vectors, per text encoder, with their provenance.

Keyed by the host's embedding keys (clip_l, clip_g, clip_h, t5xxl) so that SD1.x (clip_l), SD2.x
(clip_h), SDXL (clip_l + clip_g) and, later, FLUX and SD3 share one layout.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .files import load_safetensors, save_new_safetensors

FORMAT = "conceptprism.tokens/1"
TARGET_SLOT = "prism_target"


def residual_slot(index: int) -> str:
    """Name of image `index`'s residual token in prompts."""
    return f"prism_residual_{index}"


def is_slot(word: str) -> bool:
    """Whether a prompt part names a learned token (the target or a residual) rather than a word."""
    return word == TARGET_SLOT or (word.startswith("prism_residual_") and word.rsplit("_", 1)[1].isdigit())


@dataclass
class LossHistory:
    """Per optimizer step: reconstruction and exclusion losses kept apart (NaN where not computed); `skipped`: the
    steps whose update was skipped because float16 gradients overflowed (their losses are still recorded)."""

    rec: list[float] = field(default_factory=list)
    excl: list[float] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def append(self, rec: float, excl: float) -> None:
        self.rec.append(float(rec))
        self.excl.append(float(excl))

    def to_json(self) -> str:
        return json.dumps({"rec": self.rec, "excl": [None if math.isnan(x) else x for x in self.excl],
                           "skipped": self.skipped})

    @classmethod
    def from_json(cls, text: str) -> "LossHistory":
        data = json.loads(text)
        # Banks written before skipped steps were recorded hold no "skipped" entry.
        return cls(list(data["rec"]), [math.nan if x is None else float(x) for x in data["excl"]],
                   [int(x) for x in data.get("skipped", [])])


@dataclass
class PrismTokens:
    """target[key]: [n_t, D_key] float32; residuals[key]: [N, n_r, D_key] float32 (n_r may be 0)."""

    target: dict[str, torch.Tensor]
    residuals: dict[str, torch.Tensor]
    captions: list[str]
    image_names: list[str]
    settings: dict[str, Any]
    history: LossHistory = field(default_factory=LossHistory)

    def __post_init__(self) -> None:
        if set(self.target) != set(self.residuals):
            raise ValueError("PrismTokens: target and residuals must cover the same text encoders.")
        for key, residual in self.residuals.items():
            if residual.ndim != 3 or residual.shape[0] != len(self.image_names):
                raise ValueError(f"PrismTokens: residuals[{key}] must be [N images, n_r, D], got {tuple(residual.shape)}.")
            if residual.shape[2] != self.target[key].shape[1]:
                raise ValueError(f"PrismTokens: width mismatch for {key}.")

    @property
    def encoder_keys(self) -> tuple[str, ...]:
        return tuple(sorted(self.target))

    @property
    def family(self) -> str:
        """Human-readable text-encoder family, e.g. 'clip_g+clip_l' for SDXL."""
        return "+".join(self.encoder_keys)

    @property
    def residual_length(self) -> int:
        return next(iter(self.residuals.values())).shape[1]

    def slot_vectors(self, slot: str) -> dict[str, torch.Tensor]:
        """{key: [n, D]} for the target slot or a residual slot."""
        if slot == TARGET_SLOT:
            return dict(self.target)
        index = int(slot.rsplit("_", 1)[1])
        if not 0 <= index < len(self.image_names):
            raise ValueError(f"Residual token {index} does not exist: these tokens have {len(self.image_names)} images (0-{len(self.image_names) - 1}).")
        return {key: value[index] for key, value in self.residuals.items()}

    def embedding_tensors(self) -> dict[str, torch.Tensor]:
        """The target token in ComfyUI's keyed embedding layout ({'clip_l': [n_t, 768], ...})."""
        return {key: value.detach().float().contiguous() for key, value in self.target.items()}

    def save(self, root: Path, prefix: str) -> Path:
        tensors = {}
        for key in self.encoder_keys:
            tensors[f"target.{key}"] = self.target[key]
            tensors[f"residual.{key}"] = self.residuals[key]
        metadata = {
            "format": FORMAT,
            "captions": json.dumps(self.captions),
            "image_names": json.dumps(self.image_names),
            "settings": json.dumps(self.settings),
            "loss_history": self.history.to_json(),
        }
        return save_new_safetensors(root, prefix, tensors, metadata)

    @classmethod
    def load(cls, path: Path, label: str | None = None) -> "PrismTokens":
        """The bank saved at `path`; errors name it as `label` (the name the user picked; default the file name)."""
        tensors, metadata = load_safetensors(path)
        if metadata.get("format") != FORMAT:
            raise ValueError(
                f"'{label or path.name}' is not a ConceptPrism token bank (format '{metadata.get('format')}'). "
                "Token banks are written by 'Save Prism Tokens'; for a plain embedding use embedding:<name> in a prompt."
            )
        keys = sorted(k.split(".", 1)[1] for k in tensors if k.startswith("target."))
        return cls(
            target={k: tensors[f"target.{k}"].float() for k in keys},
            residuals={k: tensors[f"residual.{k}"].float() for k in keys},
            captions=json.loads(metadata["captions"]),
            image_names=json.loads(metadata["image_names"]),
            settings=json.loads(metadata["settings"]),
            history=LossHistory.from_json(metadata["loss_history"]),
        )
