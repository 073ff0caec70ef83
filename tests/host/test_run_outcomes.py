"""Runs that must not end in a surprise (issue 23, items 2-4), through the host's executor:

- a folder a run will write is checked before any work: the save nodes' folders and Prism LoRA Train's checkpoint
  folder when the graph is validated (VALIDATE_INPUTS), the checkpoint folder again before step 1;
- float16 training whose updates overflow says so (a console warning and the node's text, the count in the file
  header), and a run where every update overflowed is refused instead of returning its untrained start;
- FLUX.1-schnell, which has no guidance embedding, records no guidance and is never warned about a guidance change;
  FLUX.1-dev still records and compares it.

Unwritable folders for a test that runs as root: chmod does not stop root, so the folders here really fail for
anyone: a models folder whose parent is a regular file (every create below it fails with ENOTDIR), and, on Linux,
a folder inside /sys (sysfs lets no one create a file, root included).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import types
import uuid

import pytest
import torch

from host_setup import require_host

require_host()

import execution  # noqa: E402
import nodes as host_nodes  # noqa: E402

from graph_helpers import register_test_nodes, run_graph, stage1_graph, write_images  # noqa: E402
from comfyui_conceptprism.nodes.lora_train import PrismLoRATrain  # noqa: E402
from comfyui_conceptprism.nodes.optimize_tokens import OptimizePrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.formats.lora_file import read_lora  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import PrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.host import diffusion  # noqa: E402
from comfyui_conceptprism.prism_core.host.folders import save_folder_problem  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals.model_facts import reads_guidance  # noqa: E402


def _defaults(node_class, **overrides):
    widgets = node_class.INPUT_TYPES()
    args = {k: v[1]["default"] for section in ("required", "optional") for k, v in widgets[section].items()
            if "default" in v[1]}
    return {**args, **overrides}


def _validate(graph):
    """The host's own check of a prompt, as Run makes it before any node runs: (valid, {node id: [details]})."""
    valid = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), graph, None))
    errors = {node: [e.get("details", "") for e in info["errors"]] for node, info in valid[3].items()}
    return valid[0], errors


def _point(monkeypatch, kind, path):
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, kind, ([str(path)], {".safetensors"}))


@pytest.fixture
def blocked(tmp_path):
    """A models folder that cannot be created by anyone, root included: its parent is a regular file."""
    parent = tmp_path / "models_is_a_file"
    parent.write_text("not a folder")
    return parent / "loras"


def _both_stages(folder, lora_inputs):
    graph = stage1_graph(folder, steps=1)
    graph["9"] = {"class_type": "ConceptPrismPrismLoRATrain", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0], "tokens": ["3", 0],
        **_defaults(PrismLoRATrain, steps=2, gradient_accumulation=1, **lora_inputs)}}
    graph["7"]["inputs"]["model"] = ["9", 0]  # the host validates (and runs) only what leads to an output node
    return graph


# -- item 2: every place a run writes is checked before any work ----------------------------------------------------

def test_unwritable_checkpoint_folder_refuses_the_graph_before_stage_1(tiny, tmp_path, blocked, monkeypatch):
    """checkpoint_every set and a loras folder that cannot be written: Run is refused when the graph is validated
    (before Stage 1), naming the folder and the fix; checkpoint_every 0 writes nothing and is not refused."""
    register_test_nodes(tiny)
    _point(monkeypatch, "loras", blocked)
    folder = write_images(tmp_path / "concept", 3)
    valid, errors = _validate(_both_stages(folder, {"checkpoint_every": 1, "checkpoint_prefix": "ck/run"}))
    assert not valid and list(errors) == ["9"], errors
    message = " ".join(errors["9"])
    assert "Prism LoRA Train: checkpoint_prefix 'ck/run'" in message
    assert f"{blocked.parent} is a file, not a folder" in message and "extra_model_paths.yaml" in message
    assert _validate(_both_stages(folder, {"checkpoint_every": 0, "checkpoint_prefix": "ck/run"}))[0]
    # The host skips its own range check of an input VALIDATE_INPUTS takes: the node makes it.
    valid, errors = _validate(_both_stages(folder, {"checkpoint_every": -1}))
    assert not valid and "checkpoint_every is -1" in " ".join(errors["9"])


def test_unwritable_checkpoint_folder_is_refused_before_step_1_when_the_node_runs(tiny, blocked, monkeypatch):
    """A prefix fed by a link is not known at validation: the node refuses before training starts."""
    import comfyui_conceptprism.nodes.lora_train as node_module
    from host_checks import random_concept
    from test_stage2 import _tokens
    _point(monkeypatch, "loras", blocked)
    models = tiny("sd15")
    started = []
    monkeypatch.setattr(node_module, "train_concept_lora", lambda *a, **k: started.append(1))
    with torch.inference_mode(), pytest.raises(ValueError, match="is a file, not a folder"):
        PrismLoRATrain().train(models.model, models.clip, models.vae, random_concept(), _tokens(models),
                               **_defaults(PrismLoRATrain, checkpoint_every=40))
    assert not started


def test_save_nodes_with_unwritable_folders_refuse_the_graph_before_any_node_runs(tiny, tmp_path, blocked, monkeypatch):
    """Save Prism LoRA, Save Prism Tokens and Save Prism Embedding are checked at validation, each naming its
    folder; with every output refused the prompt is refused whole, so nothing is trained."""
    register_test_nodes(tiny)
    for kind in ("loras", "prism_tokens", "embeddings"):
        _point(monkeypatch, kind, blocked.parent / kind)
    folder = write_images(tmp_path / "concept", 3)
    graph = _both_stages(folder, {})
    graph["10"] = {"class_type": "ConceptPrismSavePrismLoRA", "inputs": {
        "lora": ["9", 1], "filename_prefix": "conceptprism/lora", "save_dtype": "float32"}}
    graph["11"] = {"class_type": "ConceptPrismSavePrismTokens", "inputs": {"tokens": ["3", 0], "filename_prefix": "c/t"}}
    graph["12"] = {"class_type": "ConceptPrismSavePrismEmbedding", "inputs": {"tokens": ["3", 0], "filename_prefix": "c/e"}}
    # The host runs every output that validates and drops the others (naming them), so the sampler and its capture
    # go: the saves are this graph's outputs, as in a train-and-save graph without previews.
    for node in ("4", "5", "6", "7", "8"):
        del graph[node]
    valid, errors = _validate(graph)
    assert not valid and sorted(errors) == ["10", "11", "12"], errors
    for node, name, kind in (("10", "Save Prism LoRA", "loras"), ("11", "Save Prism Tokens", "prism_tokens"),
                             ("12", "Save Prism Embedding", "embeddings")):
        message = " ".join(errors[node])
        assert message.startswith("filename_prefix - " + name) and str(blocked.parent / kind) in message, message
        assert f"{blocked.parent} is a file, not a folder" in message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/sys is Linux's")
def test_a_folder_no_one_may_write_is_found_by_trying_not_by_permission_bits(monkeypatch, tmp_path):
    """A folder that exists but refuses new files (root included: sysfs) is named with the OS's reason; a writable
    root with a subfolder still to create passes, and the check leaves nothing behind."""
    import os
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys/kernel")
    _point(monkeypatch, "loras", "/sys/kernel")
    problem = save_folder_problem("Save Prism LoRA", "filename_prefix", "loras", "conceptprism/lora")
    assert problem is not None and "/sys/kernel cannot be written to (" in problem, problem
    _point(monkeypatch, "loras", tmp_path / "loras")
    assert save_folder_problem("Save Prism LoRA", "filename_prefix", "loras", "new/sub/lora") is None
    assert list(tmp_path.iterdir()) == []  # no folder created, no probe file left


# -- item 3: a run whose float16 updates overflow says so, and one that trained nothing is refused -----------------

def _overflow_at(monkeypatch, calls_to_break):
    """Every training call numbered in `calls_to_break` (1-based, gradient-carrying model calls) gets an infinite
    gradient in its backward pass, as a float16 activation gradient overflows; None breaks every call."""
    original = diffusion.PredictingBackend.predict
    count = {"n": 0}

    def predict(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if torch.is_grad_enabled() and out.requires_grad:
            count["n"] += 1
            if calls_to_break is None or count["n"] in calls_to_break:
                out.register_hook(lambda g: g * math.inf)
        return out
    monkeypatch.setattr(diffusion.PredictingBackend, "predict", predict)


@pytest.fixture
def node_texts(monkeypatch):
    """What the pack shows on nodes (PromptServer.send_progress_text), as (node id, text)."""
    shown = []
    server = types.ModuleType("server")
    server.PromptServer = type("PromptServer", (), {})
    server.PromptServer.instance = types.SimpleNamespace(send_progress_text=lambda text, node: shown.append((node, text)))
    monkeypatch.setitem(sys.modules, "server", server)
    return shown


def _failure(server):
    return next(data for event, data in server.messages if event == "execution_error")


def test_stage_1_where_every_float16_update_overflowed_is_refused(tiny, tmp_path, monkeypatch):
    register_test_nodes(tiny)
    _overflow_at(monkeypatch, None)
    graph = stage1_graph(write_images(tmp_path / "concept", 3), steps=2)
    graph["3"]["inputs"]["training_dtype"] = "float16"
    executor, server = run_graph(graph)
    assert not executor.success
    error = _failure(server)
    assert error["node_id"] == "3" and "NothingTrainedError" in error["exception_type"]
    assert "overflowed at every one of the 2 steps" in error["exception_message"]
    assert "training_dtype to bfloat16" in error["exception_message"]


def test_stage_1_skipped_updates_are_warned_about_and_counted_in_the_token_bank(tiny, tmp_path, monkeypatch, folders,
                                                                               node_texts, caplog):
    register_test_nodes(tiny)
    _overflow_at(monkeypatch, {2})  # one reconstruction call per step (gradient_accumulation 1, max_batch 4)
    graph = stage1_graph(write_images(tmp_path / "concept", 3), steps=3)
    graph["3"]["inputs"]["training_dtype"] = "float16"
    graph["9"] = {"class_type": "ConceptPrismSavePrismTokens", "inputs": {"tokens": ["3", 0], "filename_prefix": "c/t"}}
    with caplog.at_level(logging.WARNING, logger="ConceptPrism"):
        executor, server = run_graph(graph)
    assert executor.success, server.messages
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "overflowed" in r.getMessage()]
    assert len(warnings) == 1 and "at 1 of 3 steps (2)" in warnings[0] and "2 of the 3 updates" in warnings[0]
    assert [text for node, text in node_texts if node == "3"][-1] == warnings[0]  # the node's last text
    bank = PrismTokens.load(next((tmp_path / "prism_tokens" / "c").iterdir()))
    assert bank.settings["skipped_steps"] == 1 and bank.history.skipped == [2]


def test_stage_2_skipped_updates_in_the_header_and_nothing_trained_refused(tiny, tmp_path, monkeypatch, lora_dir,
                                                                          node_texts, caplog):
    register_test_nodes(tiny)
    graph = {
        "1": {"class_type": "PrismTestTinyModels", "inputs": {"family": "sd15"}},
        "2": {"class_type": "ConceptPrismLoadConceptSet", "inputs": {
            "folder": str(write_images(tmp_path / "concept", 2)), "resolution": 64, "captions": ""}},
        "3": {"class_type": "PrismTestTokens", "inputs": {"clip": ["1", 1], "seed": 0}},
        "4": {"class_type": "ConceptPrismPrismLoRATrain", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0], "tokens": ["3", 0],
            **_defaults(PrismLoRATrain, steps=3, gradient_accumulation=1, training_dtype="float16")}},
        "5": {"class_type": "ConceptPrismSavePrismLoRA", "inputs": {
            "lora": ["4", 1], "filename_prefix": "c/lora", "save_dtype": "float32"}},
    }
    _overflow_at(monkeypatch, {1, 3})
    with caplog.at_level(logging.WARNING, logger="ConceptPrism"):
        executor, server = run_graph(graph)
    assert executor.success, server.messages
    header = read_lora(next((lora_dir / "c").iterdir())).metadata
    assert header["conceptprism.skipped_steps"] == "2" and header["conceptprism.steps"] == "3"
    assert json.loads(header["conceptprism.runs"])[-1]["skipped_steps"] == 2
    assert "at 2 of 3 steps (1, 3)" in caplog.text and "1 of the 3 updates" in caplog.text
    assert "at 2 of 3 steps (1, 3)" in [text for node, text in node_texts if node == "4"][-1]

    _overflow_at(monkeypatch, None)
    executor, server = run_graph(graph)
    assert not executor.success
    error = _failure(server)
    assert error["node_id"] == "4" and "Stage 2: the float16 gradients overflowed at every one of the 3 steps" in \
        error["exception_message"] and "no LoRA weights were output" in error["exception_message"]
    assert len(list((lora_dir / "c").iterdir())) == 1  # nothing saved by the refused run


# -- item 4: guidance is recorded and compared only where the model reads it ------------------------------------

def _flux_loader(tiny):
    class PrismTestTinyFlux:
        RETURN_TYPES = ("MODEL", "CLIP", "VAE")
        FUNCTION = "load"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"family": (["flux", "flux-schnell"],)}}

        def load(self, family):
            models = tiny(family)
            return (models.model, models.clip, models.vae)
    host_nodes.NODE_CLASS_MAPPINGS.update(PrismTestTinyFlux=PrismTestTinyFlux)


@pytest.mark.parametrize("family", ["flux-schnell", "flux"])
def test_guidance_recorded_and_compared_only_when_the_model_reads_it(family, tiny, tmp_path, lora_dir, folders, caplog):
    """Stage 1 at guidance 3.5, Stage 2 at 2.0 with a checkpoint, then a resume at 1.0: on FLUX.1-schnell (no
    guidance embedding) no header holds a guidance and nothing warns; on FLUX.1-dev both headers hold it and
    Stage 2 and the resume warn about the change."""
    register_test_nodes(tiny)
    _flux_loader(tiny)
    dev = family == "flux"
    assert reads_guidance(tiny(family).model) is dev and not reads_guidance(tiny("sd15").model)
    graph = {
        "1": {"class_type": "PrismTestTinyFlux", "inputs": {"family": family}},
        "2": {"class_type": "ConceptPrismLoadConceptSet", "inputs": {
            "folder": str(write_images(tmp_path / "concept", 2)), "resolution": 64, "captions": ""}},
        "3": {"class_type": "ConceptPrismOptimizePrismTokens", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0],
            **_defaults(OptimizePrismTokens, steps=1, guidance=3.5)}},
        "4": {"class_type": "ConceptPrismSavePrismTokens", "inputs": {"tokens": ["3", 0], "filename_prefix": "c/t"}},
        "5": {"class_type": "ConceptPrismPrismLoRATrain", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0], "tokens": ["3", 0],
            **_defaults(PrismLoRATrain, steps=2, checkpoint_every=1, checkpoint_prefix="ck/g", guidance=2.0)}},
        "6": {"class_type": "ConceptPrismSavePrismLoRA", "inputs": {"lora": ["5", 1], "filename_prefix": "c/l",
                                                                      "save_dtype": "float32"}},
    }
    with caplog.at_level(logging.WARNING, logger="ConceptPrism"):
        executor, server = run_graph(graph)
        assert executor.success, server.messages
        stage2_warned = "learned with guidance 3.5, this run uses 2.0" in caplog.text
        caplog.clear()
        graph["5"]["inputs"].update(steps=1, checkpoint_every=0, guidance=1.0, resume_from="ck/" + next(
            p.name for p in (lora_dir / "ck").iterdir()))
        executor, server = run_graph(graph)
        assert executor.success, server.messages
        resume_warned = "guidance 1.0 (was 2.0)" in caplog.text
    bank = PrismTokens.load(next((tmp_path / "prism_tokens" / "c").iterdir()))
    checkpoint = read_lora(next((lora_dir / "ck").iterdir())).metadata
    settings = json.loads(checkpoint["conceptprism.settings"])
    recorded = ["guidance" in bank.settings, "guidance" in settings,
                any("guidance" in run for run in json.loads(checkpoint["conceptprism.runs"])),
                "guidance" in json.loads(checkpoint["conceptprism.tokens"])["settings"]]
    assert recorded == [dev] * 4 and (stage2_warned, resume_warned) == (dev, dev)
    if dev:
        assert bank.settings["guidance"] == 3.5 and settings["guidance"] == 2.0
