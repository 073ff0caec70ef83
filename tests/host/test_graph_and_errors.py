"""The pack inside ComfyUI: loaded by the host's own loader, run by its executor, and its errors."""
from __future__ import annotations

import asyncio

import pytest
import torch

from host_setup import PACK_ROOT, require_host

require_host()

import comfy.model_management  # noqa: E402
import comfy.utils  # noqa: E402
import nodes as host_nodes  # noqa: E402

from comfyui_conceptprism.nodes import NODE_CLASS_MAPPINGS  # noqa: E402
from graph_helpers import CAPTURED, register_test_nodes, run_graph, stage1_graph, write_images  # noqa: E402
from comfyui_conceptprism.nodes.concept_set import LoadConceptSet  # noqa: E402
from comfyui_conceptprism.nodes.conditioning import PrismConditioning  # noqa: E402
from comfyui_conceptprism.prism_core.concept_input.images import ConceptSetError  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens  # noqa: E402

def test_host_loader_registers_every_node_with_tooltips():
    ok = asyncio.run(host_nodes.load_custom_node(str(PACK_ROOT), module_parent="custom_nodes"))
    assert ok
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert name in host_nodes.NODE_CLASS_MAPPINGS and cls.CATEGORY == "ConceptPrism"
        inputs = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, spec in inputs.get(section, {}).items():
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_graph_runs_through_the_executor_and_cancel_stops_within_one_step(tiny, tmp_path):
    register_test_nodes(tiny)
    folder = write_images(tmp_path / "concept", 3)
    (folder / "00.txt").write_text("a red square on a plain background")
    CAPTURED.clear()
    executor, server = run_graph(stage1_graph(folder, steps=2))
    assert executor.success, server.messages
    assert len(CAPTURED) == 1 and CAPTURED[0].shape == (1, 4, 8, 8) and torch.isfinite(CAPTURED[0]).all()

    progress = []

    def hook(value, total, preview, node_id=None):
        progress.append((node_id, value))
        if node_id == "3" and value == 2:
            comfy.model_management.interrupt_current_processing(True)
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        executor, server = run_graph(stage1_graph(folder, steps=50))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)
    events = [event for event, _ in server.messages]
    assert "execution_interrupted" in events and not executor.success
    assert max(v for n, v in progress if n == "3") == 2  # no third update after Cancel
    assert len(CAPTURED) == 1  # the sampler never ran


def test_concept_set_errors_name_the_problem(tmp_path):
    node = LoadConceptSet()
    one = write_images(tmp_path / "one", 1)
    with pytest.raises(ConceptSetError, match="at least 2"):
        node.load(str(one), 64, "")
    folder = write_images(tmp_path / "three", 3)
    with pytest.raises(ConceptSetError, match="2 captions.*3 images"):
        node.load(str(folder), 64, "first caption\nsecond caption")
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConceptSetError, match="broken.png"):
        node.load(str(folder), 64, "")
    with pytest.raises(ConceptSetError, match="folder"):
        node.load("", 64, "")
    batch = torch.rand(3, 50, 70, 4)
    concept, preview = node.load("", 64, "", images=batch, caption_text="a\nb\nc")
    assert preview.shape == (3, 64, 64, 3) and concept.captions == ("a", "b", "c")


def test_tokens_of_another_family_are_refused_with_the_reason(tiny):
    sd15 = tiny("sd15")
    xl = tiny("sdxl")
    tokens = PrismTokens({"clip_l": torch.zeros(1, 768)}, {"clip_l": torch.zeros(2, 1, 768)}, ["", ""], ["a", "b"], {}, LossHistory())
    with pytest.raises(ValueError, match=r"SD1\.x.*SDXL"):
        PrismConditioning().encode(xl.clip, tokens, "a [V]", "[V]", "target", 0)
    with pytest.raises(ValueError, match="placeholder"):
        PrismConditioning().encode(sd15.clip, tokens, "a photo", "[V]", "target", 0)


def test_token_bank_saved_and_loaded_through_the_nodes(folders):
    from comfyui_conceptprism.nodes.token_files import LoadPrismTokens, SavePrismTokens
    tokens = PrismTokens({"clip_l": torch.randn(1, 768)}, {"clip_l": torch.randn(2, 3, 768)}, ["x", ""], ["a", "b"],
                         {"beta": 0.05}, LossHistory([1.0], [0.5]))
    first = SavePrismTokens().save(tokens, "bank/dog")["ui"]["text"][0]
    second = SavePrismTokens().save(tokens, "bank/dog")["ui"]["text"][0]
    assert (first, second) == ("bank/dog_00001_.safetensors", "bank/dog_00002_.safetensors")
    assert first in LoadPrismTokens.INPUT_TYPES()["required"]["token_file"][0]
    loaded = LoadPrismTokens().load(first)[0]
    assert torch.equal(loaded.residuals["clip_l"], tokens.residuals["clip_l"]) and loaded.captions == ["x", ""]
