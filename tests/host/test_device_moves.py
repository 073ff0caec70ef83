"""Whatever the pack attaches to a host model follows the host's device moves (issue 23 item 1).

ComfyUI moves a model's weights onto its load device in ``load_models_gpu`` and moves the weight functions it
finds on each module with their ``move_to`` (``comfy.model_patcher.move_weight_functions``); a function that
holds tensors and has no ``move_to`` stays behind, and the first forward on a GPU fails with tensors on two
devices (FLUX's RowSliceLoras did). The CPU stands in for the host here and ``meta`` for the GPU: each family's
tiny model is given ``meta`` as its load device, both stages' backends load their training clones through the
host's own path (load_models_gpu, in inference mode as the executor), and every weight and bias function on
every module of the loaded clones must hold its tensors on ``meta`` and give a ``meta`` weight of the compute
dtype it was handed. Each test builds its own models: loading them moves the shared weights to ``meta`` for good.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch

from host_setup import require_host

require_host()

import comfy.model_management  # noqa: E402

import tiny_models  # noqa: E402
from host_checks import stage2_run  # noqa: E402
from comfyui_conceptprism.prism_core.host import lora_layers, text  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals.lora_adapters import trainable_parameters  # noqa: E402
from comfyui_conceptprism.prism_core.host.lora_targets import stage2_targets  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1_backend import ComfyStage1Backend  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage2 import ComfyStage2Backend  # noqa: E402

STAND_IN = torch.device("meta")
FAMILIES = ["sd15", "sd2v", "sdxl", "flux"]


@pytest.fixture
def stand_in_device(monkeypatch) -> torch.device:
    """The host's memory query answers for the stand-in device as for a large GPU (it has no real query for
    ``meta``); every other device is asked as before."""
    real = comfy.model_management.get_free_memory

    def free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
        if getattr(dev, "type", None) == STAND_IN.type:
            return (2 ** 40, 2 ** 40) if torch_free_too else 2 ** 40
        return real(dev, torch_free_too)
    monkeypatch.setattr(comfy.model_management, "get_free_memory", free_memory)
    yield STAND_IN
    # The stand-in loads stay in the host's list of loaded models; drop them so no later load tries to move
    # meta weights back to the CPU.
    comfy.model_management.current_loaded_models[:] = [
        m for m in comfy.model_management.current_loaded_models if getattr(m, "device", None) != STAND_IN]


def _on_stand_in(family: str) -> tiny_models.TinyModels:
    models = tiny_models.build(family)
    for patcher in (models.model, models.clip.patcher):
        patcher.load_device = STAND_IN
        patcher.offload_device = STAND_IN  # an unload keeps them there: meta tensors cannot be copied back
    return models


def _functions(root: torch.nn.Module) -> Iterator[tuple[str, str, Any, torch.Tensor]]:
    """(module name, "weight"/"bias", function, the tensor it is applied to) for every weight and bias function."""
    for name, module in root.named_modules():
        for kind in ("weight", "bias"):
            for function in getattr(module, f"{kind}_function", []) or []:
                yield name, kind, function, getattr(module, kind)


def _check_on_stand_in(root: torch.nn.Module) -> dict[str, int]:
    """Assert every weight/bias function on `root` holds its tensors on the stand-in device and maps a stand-in
    tensor of each compute dtype to one of the same device, dtype and shape. Returns {function class: count}."""
    counts: dict[str, int] = {}
    for name, kind, function, tensor in _functions(root):
        label = f"{name}.{kind}: {type(function).__name__}"
        assert tensor.device == STAND_IN, f"{label}: the host did not load the weight onto the stand-in device"
        if isinstance(function, torch.nn.Module):
            held = list(function.parameters()) + list(function.buffers())
            assert held and all(t.device == STAND_IN for t in held), (
                f"{label} holds tensors on {sorted({str(t.device) for t in held})}, not on the weight's device")
        for dtype in (torch.float32, torch.bfloat16, torch.float16):  # the training_dtype choices
            out = function(tensor.to(dtype))
            assert (out.device, out.dtype, out.shape) == (STAND_IN, dtype, tensor.shape), label
        counts[type(function).__name__] = counts.get(type(function).__name__, 0) + 1
    return counts


@pytest.mark.parametrize("family", FAMILIES)
def test_stage1_weight_copies_follow_the_hosts_load(family, stand_in_device):
    models = _on_stand_in(family)
    widths = text.encoder_widths(models.clip)
    lengths = text.slot_lengths_for({k: torch.empty(1, w) for k, w in widths.items()},
                                    {k: torch.empty(2, 1, w) for k, w in widths.items()})
    with torch.inference_mode(False):
        with ComfyStage1Backend(models.model, models.clip, lengths, 32, training_dtype="float32",
                                guidance=3.5 if family == "flux" else None) as backend:
            counts = {**_check_on_stand_in(backend.train_model.model),
                      **{f"clip {k}": v for k, v in _check_on_stand_in(backend.train_clip.cond_stage_model).items()}}
    # The tiny models are built under inference mode, so every weight gets the host-copy wrapper: the check ran.
    assert counts.get("function", 0) > 0 and counts.get("clip function", 0) > 0, counts


@pytest.mark.parametrize("family", FAMILIES)
def test_stage2_lora_adapters_follow_the_hosts_load(family, stand_in_device):
    models = _on_stand_in(family)
    model = models.model
    adapters = lora_layers.trainable_adapters(stage2_targets(model), rank=2, alpha=2.0, seed=0)
    assert {p.device.type for p in trainable_parameters(adapters)} == {"cpu"}
    with torch.inference_mode(False):
        with ComfyStage2Backend(model, adapters, *stage2_run(model), training_dtype="float32") as backend:
            counts = _check_on_stand_in(backend.train_model.model)
            # What the training loop hands the optimizer, read after the load as train_concept_lora reads it.
            # (Not the Parameter objects from before: Module.to keeps them between CPU and CUDA, but a move to
            # meta has to make new ones, torch._has_compatible_shallow_copy_type being False there.)
            assert {p.device for p in trainable_parameters(adapters)} == {STAND_IN}
            # ... and stay trainable: the host loads in inference mode, where a move gives inference tensors
            assert not any(p.is_inference() for p in trainable_parameters(adapters))
            # ... and stay trainable: moved in the executor's inference mode they would hold inference tensors
            assert not any(p.is_inference() for p in trainable_parameters(adapters))
    wrapped = counts.get("RowSliceLoras", 0) if family == "flux" else counts.get("WholeWeightLora", 0)
    expected_sliced = {"flux": 3}.get(family, 0)  # double block img/txt qkv, single block linear1
    assert wrapped == (expected_sliced if family == "flux" else len(adapters)), counts


@pytest.mark.parametrize("family,want", [("sd15", "float16"), ("flux", "bfloat16")])
def test_auto_precision_of_both_backends_on_a_stand_in_gpu(family, want, stand_in_device, monkeypatch):
    """training_dtype auto on a card where the host runs float16 and bfloat16 (its should_use_fp16/bf16 say yes
    for the stand-in device only): both stages' backends train SD in float16 and FLUX.1 in bfloat16, the first
    of the dtypes the host allows for the model (issue 23 item 8), loaded through the host's own path."""
    monkeypatch.setattr(comfy.model_management, "should_use_fp16", lambda device=None, *a, **k: device == STAND_IN)
    monkeypatch.setattr(comfy.model_management, "should_use_bf16", lambda device=None, *a, **k: device == STAND_IN)
    models = _on_stand_in(family)
    widths = text.encoder_widths(models.clip)
    lengths = text.slot_lengths_for({k: torch.empty(1, w) for k, w in widths.items()},
                                    {k: torch.empty(2, 1, w) for k, w in widths.items()})
    adapters = lora_layers.trainable_adapters(stage2_targets(models.model), rank=2, alpha=2.0, seed=0)
    with torch.inference_mode(False):
        with ComfyStage1Backend(models.model, models.clip, lengths, 32, training_dtype="auto") as stage1:
            assert (stage1.compute_dtype, stage1.loss_scaling) == (want, want == "float16")
        with ComfyStage2Backend(models.model, adapters, *stage2_run(models.model), training_dtype="auto") as stage2:
            assert (stage2.compute_dtype, stage2.loss_scaling) == (want, want == "float16")
