"""The model family is decided once per run (prism_core/host/family.py) and the LoRA key map read once.

Every decision about the family goes through `family.describe`, which asks the model's sampling for its target
exactly once; so counting those calls while a node runs (previews and checkpoints on) counts the decisions. The
families the pack trains keep their results: the other host tests run unchanged on top of it.
"""
from __future__ import annotations

import collections

import pytest
import torch

from host_setup import require_host

require_host()

from host_checks import random_concept, widget_defaults  # noqa: E402
from comfyui_conceptprism.nodes.lora_train import PrismLoRATrain  # noqa: E402
from comfyui_conceptprism.nodes.optimize_tokens import OptimizePrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.host import family as family_module, lora_targets, text  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens  # noqa: E402


@pytest.fixture
def decisions(monkeypatch):
    """Counts of the family decision (describe's one question to the model's sampling) and of LoRA key map reads."""
    counts = collections.Counter()

    def counted(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(family_module, "sampling_target", counted("family", family_module.sampling_target))
    monkeypatch.setattr(lora_targets, "lora_key_map", counted("key map", lora_targets.lora_key_map))
    monkeypatch.setattr(lora_targets, "flux_diffusers_map", counted("key map", lora_targets.flux_diffusers_map))
    return counts


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_one_family_decision_per_stage1_run(family, tiny, decisions):
    models = tiny(family)
    args = {**widget_defaults(OptimizePrismTokens), "steps": 2, "preview_every": 1, "preview_steps": 1,
            "preview_prompts": "a photo of [V]"}
    with torch.inference_mode():
        OptimizePrismTokens().optimize(models.model, models.clip, models.vae, random_concept(2), **args)
    assert decisions == {"family": 1}


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_one_family_decision_and_one_key_map_read_per_stage2_run(family, tiny, decisions, lora_dir):
    models = tiny(family)
    g = torch.Generator().manual_seed(7)
    widths = text.encoder_widths(models.clip)
    tokens = PrismTokens({k: torch.randn(1, w, generator=g) * 0.05 for k, w in widths.items()},
                         {k: torch.randn(2, 1, w, generator=g) * 0.05 for k, w in widths.items()},
                         ["", ""], ["0.png", "1.png"], {"beta": 0.5}, LossHistory([1.0], [0.1]))
    args = {**widget_defaults(PrismLoRATrain), "steps": 2, "checkpoint_every": 1, "checkpoint_prefix": "family/ck",
            "preview_every": 1, "preview_steps": 1, "preview_prompts": "a photo of [V]"}
    with torch.inference_mode():
        PrismLoRATrain().train(models.model, models.clip, models.vae, random_concept(2), tokens, **args)
    assert decisions == {"family": 1, "key map": 1}
    assert len(list(lora_dir.rglob("*.safetensors"))) == 1  # the step-1 checkpoint ran too (the last step is the output)
