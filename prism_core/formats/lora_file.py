"""The Stage 2 LoRA as tensors and safetensors header metadata, in the kohya layout other tools read.

Per adapted layer with kohya name K (e.g. ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``):
``K.lora_down.weight`` [rank, in], ``K.lora_up.weight`` [out, rank] and ``K.alpha`` (scalar); the
layer's update is (alpha / rank) * up @ down. ComfyUI's LoraLoader, kohya's scripts and A1111-style
UIs read this layout. The header carries strings only: kohya's ``ss_*`` fields, the SAI model spec
architecture, and ``conceptprism.*`` fields with the family, the settings, the loss curve and the
token bank the LoRA was trained with (its target token in full, so the concept can be recovered
from the LoRA file alone).
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import load_safetensors, save_new_safetensors
from .token_bank import PrismTokens

FORMAT = "conceptprism.lora/1"
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LoraWeights(dict):
    """{kohya tensor name: tensor} (float32, CPU), usable wherever ComfyUI takes a LORA_MODEL, plus
    `metadata` (str -> str) for the file header and `source`, the file it was read from ('' if none)."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str = "") -> None:
        super().__init__(tensors)
        self.metadata = dict(metadata)
        self.source = source

    @property
    def steps(self) -> int:
        return int(self.metadata.get("conceptprism.steps", 0))

    @property
    def skipped_steps(self) -> int:
        """Steps (of all runs) whose update was skipped for float16 overflow; 0 for files without the field."""
        return int(self.metadata.get("conceptprism.skipped_steps", 0))

    @property
    def loss(self) -> list[float]:
        return [float(x) for x in json.loads(self.metadata.get("conceptprism.loss", "[]"))]

    def layer_names(self) -> list[str]:
        """Kohya names of the adapted layers, in file order."""
        return sorted({key.rsplit(".", 2)[0] for key in self if key.endswith(".lora_down.weight")})

    def layer(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(up [out, r], down [r, in], alpha) of one layer."""
        return self[f"{name}.lora_up.weight"], self[f"{name}.lora_down.weight"], float(self[f"{name}.alpha"])


def layer_tensors(name: str, up: torch.Tensor, down: torch.Tensor, alpha: float) -> dict[str, torch.Tensor]:
    """The three kohya tensors of one layer (detached float32 copies on CPU)."""
    return {
        f"{name}.lora_up.weight": up.detach().float().cpu().clone(),
        f"{name}.lora_down.weight": down.detach().float().cpu().clone(),
        f"{name}.alpha": torch.tensor(float(alpha)),
    }


@dataclass(frozen=True)
class BaseFamily:
    """What the header says about the model the LoRA belongs to."""

    name: str             # "sd15", "sd2", "sdxl"
    v_prediction: bool
    kohya_version: str    # ss_base_model_version
    modelspec: str        # modelspec.architecture

    @property
    def label(self) -> str:
        """'sd15', 'sd2', 'sd2-v', 'sdxl': the header's conceptprism.family."""
        return self.name + ("-v" if self.v_prediction else "")


def token_hash(tokens: PrismTokens) -> str:
    """sha256 of the target and residual vectors (float32), per text encoder in key order."""
    digest = hashlib.sha256()
    for key in tokens.encoder_keys:
        for tensor in (tokens.target[key], tokens.residuals[key]):
            digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def token_summary(tokens: PrismTokens) -> dict[str, Any]:
    """The token bank as header JSON: the target vectors in full (base64 float32 little-endian),
    the residuals by hash (they describe the training images, not the concept)."""
    return {
        "family": tokens.family,
        "target": {key: {"shape": list(value.shape),
                         "float32_base64": base64.b64encode(value.detach().float().contiguous().numpy().astype("<f4").tobytes()).decode()}
                   for key, value in tokens.target.items()},
        "residual_length": tokens.residual_length,
        "image_names": tokens.image_names,
        "captions": tokens.captions,
        "settings": tokens.settings,
        "sha256": token_hash(tokens),
    }


def target_from_summary(summary: dict[str, Any]) -> dict[str, torch.Tensor]:
    """{key: [n_t, D]} float32 back from `token_summary`'s JSON."""
    return {key: torch.from_numpy(np.frombuffer(base64.b64decode(item["float32_base64"]), dtype="<f4").copy()).view(item["shape"])
            for key, item in summary["target"].items()}


def lora_metadata(family: BaseFamily, rank: int, alpha: float, steps: int, settings: dict[str, Any],
                  tokens: PrismTokens, loss: list[float], images: dict[str, Any] | None = None,
                  runs: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Header strings for a LoRA trained `steps` steps in total, the last run with `settings`, on `tokens`
    and `images` (`resume.image_record`); `runs` lists every run's settings and steps (`resume.previous_runs`)."""
    if runs is None:
        runs = [{**settings, "first_step": 1, "last_step": steps}]
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": family.kohya_version,
        "ss_v2": str(family.name == "sd2"),
        "ss_v_parameterization": str(family.v_prediction),
        "ss_steps": str(steps),
        "modelspec.architecture": family.modelspec,
        "modelspec.title": "ConceptPrism concept LoRA",
        "conceptprism.format": FORMAT,
        "conceptprism.family": family.label,
        "conceptprism.rank": str(rank),
        "conceptprism.alpha": str(float(alpha)),
        "conceptprism.steps": str(steps),
        "conceptprism.settings": json.dumps(settings),
        "conceptprism.clip_layer": str(settings.get("clip_layer", "default")),
        "conceptprism.loss": json.dumps([float(x) for x in loss]),
        "conceptprism.tokens": json.dumps(token_summary(tokens)),
        **({"conceptprism.images": json.dumps(images)} if images is not None else {}),
        "conceptprism.runs": json.dumps(runs),
        # Steps whose update float16 overflow skipped, over every run (files and runs before this field count 0):
        # "steps" counts the plan's steps, this says how many of them changed the weights.
        "conceptprism.skipped_steps": str(sum(int(run.get("skipped_steps", 0)) for run in runs)),
    }


def save_lora(weights: LoraWeights, root: Path, prefix: str, dtype: str = "float32") -> Path:
    """Write a new `<root>/<prefix>_NNNNN_.safetensors` (atomic, never overwriting).

    The alpha tensors stay float32 whatever `dtype` the up/down matrices are stored in.
    """
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"save dtype '{dtype}' is not one of {sorted(SAVE_DTYPES)}.")
    tensors = {k: v if k.endswith(".alpha") else v.to(SAVE_DTYPES[dtype]) for k, v in weights.items()}
    return save_new_safetensors(root, prefix, tensors, {**weights.metadata, "conceptprism.save_dtype": dtype})


def read_lora(path: Path, label: str | None = None) -> LoraWeights:
    """A LoRA written by `save_lora` (tensors as float32), its `source` set to `label` (the name the user
    picked; default the file name). Raises with the fix for other files."""
    label = label or path.name
    tensors, metadata = load_safetensors(path)
    if metadata.get("conceptprism.format") != FORMAT:
        raise ValueError(f"'{label}' is not a ConceptPrism LoRA (no '{FORMAT}' header), so its step count and "
                         "settings are unknown. Resume only from LoRAs saved by Save Prism LoRA or its checkpoints.")
    return LoraWeights({k: v.float() for k, v in tensors.items()}, metadata, label)

