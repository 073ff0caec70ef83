"""A first Run: what is missing is reported before anything runs, together, with where to put it.

Graphs go through the host's own `execution.validate_prompt` (what POST /prompt calls), so the oracle
is the host's verdict: which nodes failed validation and with which message.
"""
from __future__ import annotations

import asyncio
import uuid

import pytest

from host_setup import PACK_ROOT, require_host

require_host()

import execution  # noqa: E402
import folder_paths  # noqa: E402
import nodes as host_nodes  # noqa: E402

from comfyui_conceptprism.nodes import NODE_CLASS_MAPPINGS  # noqa: E402
from comfyui_conceptprism.nodes.concept_set import LoadConceptSet  # noqa: E402
from graph_helpers import write_images  # noqa: E402


class PrismTestListConceptSet(LoadConceptSet):
    """The same node with INPUT_IS_LIST: the host then passes VALIDATE_INPUTS one-element lists."""
    INPUT_IS_LIST = True


@pytest.fixture
def host(tmp_path, monkeypatch):
    """The pack's nodes registered in the host, and ComfyUI's input folder in a fresh temp dir."""
    for name, cls in {**NODE_CLASS_MAPPINGS, "PrismTestListConceptSet": PrismTestListConceptSet}.items():
        monkeypatch.setitem(host_nodes.NODE_CLASS_MAPPINGS, name, cls)
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    monkeypatch.setattr(folder_paths, "input_directory", str(input_dir))
    return input_dir


def validate(prompt: dict) -> dict[str, list[str]]:
    """{node id: ["message: details", ...]} for every node the host's validation refused."""
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    return {node_id: [f"{e['message']}: {e['details']}" for e in entry["errors"]] for node_id, entry in node_errors.items()}


def first_run_graph(folder: str, concept_class: str = "ConceptPrismLoadConceptSet", images=None) -> dict:
    """The training workflows' first nodes: checkpoint -> Load Concept Set -> Stage 1 -> Save Prism Embedding,
    and the preview of what training sees (an output that needs no checkpoint)."""
    concept_inputs = {"folder": folder, "resolution": 64, "captions": ""}
    if images is not None:
        concept_inputs["images"] = images
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "2": {"class_type": concept_class, "inputs": concept_inputs},
        "3": {"class_type": "ConceptPrismOptimizePrismTokens", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0], "target_length": 1,
            "residual_length": 8, "beta": 0.05, "exclusion_set_size": 3, "learning_rate": 4e-4, "steps": 2,
            "gradient_accumulation": 1, "caption_init": True, "seed": 0}},
        "4": {"class_type": "ConceptPrismSavePrismEmbedding", "inputs": {"tokens": ["3", 0], "filename_prefix": "x/concept"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
        "6": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": 0}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


@pytest.mark.parametrize("concept_class", ["ConceptPrismLoadConceptSet", "PrismTestListConceptSet"])
def test_no_checkpoint_and_no_images_are_reported_together(host, concept_class):
    errors = validate(first_run_graph("conceptprism/my_concept", concept_class))
    print(errors)
    assert "1" in errors and any("ckpt_name" in line for line in errors["1"])  # the host's own check
    expected = host / "conceptprism" / "my_concept"
    assert "2" in errors and all(str(expected) in line and "does not exist" in line for line in errors["2"]), errors["2"]
    assert "2-6 images" in errors["2"][0] and "'images'" in errors["2"][0]
    assert not expected.exists(), "validation must not create the folder"


@pytest.mark.parametrize("concept_class", ["ConceptPrismLoadConceptSet", "PrismTestListConceptSet"])
def test_too_few_images_say_where_and_how_many(host, concept_class):
    write_images(host / "conceptprism" / "my_concept", 1)
    errors = validate(first_run_graph("conceptprism/my_concept", concept_class))
    line = errors["2"][0]
    assert str(host / "conceptprism" / "my_concept") in line and "holds 1 image;" in line and "add 1 or more" in line, line

    write_images(host / "conceptprism" / "my_concept", 2)
    assert "2" not in validate(first_run_graph("conceptprism/my_concept", concept_class))


def test_an_absolute_folder_and_an_empty_one(host, tmp_path):
    folder = write_images(tmp_path / "elsewhere", 3)
    assert "2" not in validate(first_run_graph(str(folder)))
    empty = validate(first_run_graph("  "))["2"][0]
    assert "'folder' is empty" in empty and str(host) in empty and "conceptprism/my_concept" in empty, empty


def test_a_file_the_loader_would_refuse_is_named(host):
    folder = write_images(host / "mixed", 3)
    (folder / "IMG_0004.HEIC").write_bytes(b"\x00" * 16)
    line = validate(first_run_graph("mixed"))["2"][0]
    assert "'IMG_0004.HEIC' is HEIC/HEIF" in line and "Most Compatible" in line, line


def test_notes_metadata_and_trainer_caches_beside_the_images_pass_the_check(host):
    """kohya, ai-toolkit and ComfyUI's dataset loaders skip these; before, Run was refused naming notes.md."""
    folder = write_images(host / "kohya", 3)
    for name in ["notes.md", "metadata.json", "00_0064x0064_sd.npz", "00.caption", "desktop.ini", "Thumbs.db"]:
        (folder / name).write_text("x")
    assert "2" not in validate(first_run_graph("kohya"))


@pytest.mark.parametrize("concept_class", ["ConceptPrismLoadConceptSet", "PrismTestListConceptSet"])
def test_linked_images_pass_whatever_the_folder_says(host, concept_class):
    # Linked inputs are not given to VALIDATE_INPUTS: the folder (missing here) must not fail the node.
    errors = validate(first_run_graph("conceptprism/does_not_exist", concept_class, images=["6", 0]))
    assert "2" not in errors, errors["2"]


def test_a_wrongly_typed_link_is_still_refused(host):
    # Asking for input_types turns off the host's own link type check for the node; ours stands in for it.
    errors = validate(first_run_graph("conceptprism/does_not_exist", images=["7", 0]))
    line = errors["2"][0]
    assert "'images' is connected to a LATENT output but takes IMAGE" in line, line


def test_loading_the_pack_creates_no_folder(host, tmp_path, monkeypatch):
    for kind in ("output_directory", "temp_directory"):
        monkeypatch.setattr(folder_paths, kind, str(tmp_path / kind))
    assert asyncio.run(host_nodes.load_custom_node(str(PACK_ROOT), module_parent="custom_nodes"))
    assert list(host.iterdir()) == [] and not (tmp_path / "output_directory").exists()
