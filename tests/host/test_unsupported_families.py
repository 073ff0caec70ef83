"""Families ComfyUI loads but the pack does not train are refused by both training nodes before any work, with a
message that names the model and what to load instead (Lumina Image 2.0, Z-Image's parent, here; FLUX.2 in
test_flux_stage1.py)."""
from __future__ import annotations

import pytest
import torch

from host_setup import require_host

require_host()

import comfy.model_patcher  # noqa: E402

import tiny_models  # noqa: E402
from host_checks import random_concept, widget_defaults  # noqa: E402
from comfyui_conceptprism.nodes.lora_train import PrismLoRATrain  # noqa: E402
from comfyui_conceptprism.nodes.optimize_tokens import OptimizePrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens  # noqa: E402


@pytest.fixture
def lumina2():
    with torch.inference_mode():
        model = tiny_models.lumina2_shaped()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def test_a_lumina_2_model_is_refused_by_both_training_nodes_before_any_work(lumina2, tiny):
    """Lumina Image 2.0 is Z-Image's parent (the same NextDiT and model class, another config and a Gemma encoder):
    only the Z-Image config is trained, the parent is named and refused."""
    flux = tiny("flux")  # a CLIP and VAE the checks after the model's would otherwise refuse for other reasons
    state = {k: v.clone() for k, v in lumina2.model.state_dict().items()}
    with torch.inference_mode(), pytest.raises(ValueError) as stage1:
        OptimizePrismTokens().optimize(lumina2, flux.clip, flux.vae, random_concept(2), **{**widget_defaults(OptimizePrismTokens), "steps": 1})
    tokens = PrismTokens({"clip_l": torch.zeros(1, 768)}, {"clip_l": torch.zeros(2, 1, 768)}, ["", ""], ["0.png", "1.png"],
                         {}, LossHistory([1.0], [0.1]))
    with torch.inference_mode(), pytest.raises(ValueError) as stage2:
        PrismLoRATrain().train(lumina2, flux.clip, flux.vae, random_concept(2), tokens, **{**widget_defaults(PrismLoRATrain), "steps": 1})
    for refused in (stage1, stage2):
        message = str(refused.value)
        assert "Lumina2" in message and "does not train yet" in message and "FLUX.2 Klein diffusion model" in message, message
    assert all(torch.equal(v, state[k]) for k, v in lumina2.model.state_dict().items())  # nothing ran on it
