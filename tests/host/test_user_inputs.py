"""What users feed the pack, through the host's executor: prompt words from odd names, list outputs of other
nodes, resuming the wrong LoRA, non-finite pixels or latents, and concept folders and batches as users have them
(copies, huge photos, notes and trainer caches beside the images)."""
from __future__ import annotations

import json
import logging
import shutil
import sys
import types

import pytest
import safetensors
import torch
from PIL import Image

from host_setup import require_host

require_host()


from conftest import FAMILIES  # noqa: E402
from graph_helpers import CAPTURED, CAPTURED_BY, list_pixels, overflowing_vae, register_test_nodes, run_graph, write_images  # noqa: E402
from host_checks import RES  # noqa: E402
from comfyui_conceptprism.nodes.lora_train import PrismLoRATrain  # noqa: E402
from comfyui_conceptprism.prism_core.concept_input.concept_set import ConceptSet  # noqa: E402
from comfyui_conceptprism.prism_core.host import text  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens  # noqa: E402

ODD_PREFIXES = ["my dog", "rex (v2)", "sub dir/good (boy)", "a:b|c?", "conceptprism/concept"]


def _error(server) -> str:
    errors = [data for event, data in server.messages if event == "execution_error"]
    assert errors, "the graph was expected to fail"
    return f"{errors[0]['node_type']}: {errors[0]['exception_message']}"


# ---------------------------------------------------------------- 1. every printed word loads its file


@pytest.mark.parametrize("family", FAMILIES)
def test_every_word_save_prism_embedding_prints_loads_in_a_stock_clip_text_encode(family, tiny, folders, caplog):
    """Each printed word, pasted into CLIPTextEncode's prompt, gives the conditioning of the saved vectors (compared
    with Prism Conditioning, which fills the vectors in without any file) and the host logs no missing embedding."""
    register_test_nodes(tiny)
    prompt = "a photo of {} on the beach"
    graph = {
        "1": {"class_type": "PrismTestTinyModels", "inputs": {"family": family}},
        "2": {"class_type": "PrismTestTokens", "inputs": {"clip": ["1", 1], "seed": 3}},
        "3": {"class_type": "ConceptPrismPrismConditioning", "inputs": {
            "clip": ["1", 1], "tokens": ["2", 0], "text": prompt.format("[V]"), "placeholder": "[V]", "mode": "target",
            "residual_index": 0}},
        "4": {"class_type": "PrismTestCapture", "inputs": {"conditioning": ["3", 0]}},
    }
    for i, prefix in enumerate(ODD_PREFIXES):
        save, fmt, encode, capture = (str(10 + 4 * i + k) for k in range(4))
        graph[save] = {"class_type": "ConceptPrismSavePrismEmbedding", "inputs": {"tokens": ["2", 0], "filename_prefix": prefix}}
        graph[fmt] = {"class_type": "PrismTestFormat", "inputs": {"word": [save, 0], "template": prompt}}
        graph[encode] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": [fmt, 0]}}
        graph[capture] = {"class_type": "PrismTestCapture", "inputs": {"conditioning": [encode, 0]}}
    CAPTURED_BY.clear()
    with caplog.at_level(logging.WARNING):
        executor, server = run_graph(graph)
    assert executor.success, server.messages
    assert not [r for r in caplog.records if "does not exist" in r.getMessage()], caplog.text
    words = [executor.history_result["outputs"][str(10 + 4 * i)]["text"][0] for i in range(len(ODD_PREFIXES))]
    assert words[-1].startswith("embedding:conceptprism/concept_0") and len(set(words)) == len(words)
    assert "filename_prefix 'my dog' is saved as 'my_dog'" in caplog.text
    prism = CAPTURED_BY["4"]
    for i, word in enumerate(words):
        plain = CAPTURED_BY[str(10 + 4 * i + 3)]
        assert torch.equal(plain[0][0], prism[0][0]), word
        assert torch.equal(plain[0][1]["pooled_output"], prism[0][1]["pooled_output"]), word
    for word in words:
        name = word[len("embedding:"):]
        assert (folders / f"{name}.safetensors").is_file() and word.split() == [word] and "(" not in word


# ---------------------------------------------------------------- 2. list outputs of other nodes


def test_list_outputs_of_other_nodes_feed_load_concept_set(tiny, tmp_path):
    """A list-based image loader (3 images of different sizes) and a captioner's list output (one caption per
    image) wired into Load Concept Set give one concept set of 3 images, each resized as a folder image is."""
    register_test_nodes(tiny)
    folder = tmp_path / "same"
    folder.mkdir()
    for i, pixels in enumerate(list_pixels(3)):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    graph = {
        "1": {"class_type": "PrismTestImageList", "inputs": {"count": 3, "nan_index": -1}},
        "2": {"class_type": "PrismTestStringList", "inputs": {"text": "a red mug on a desk|a red mug  in\nthe sink|"}},
        "3": {"class_type": "ConceptPrismLoadConceptSet", "inputs": {
            "folder": "", "resolution": RES, "captions": "", "images": ["1", 0], "caption_text": ["2", 0]}},
        "4": {"class_type": "ConceptPrismLoadConceptSet", "inputs": {
            "folder": str(folder), "resolution": RES, "captions": ["2", 0]}},  # the widget linked to the list
        "5": {"class_type": "PrismTestCapture", "inputs": {"concept_set": ["3", 0]}},
        "6": {"class_type": "PrismTestCapture", "inputs": {"concept_set": ["4", 0]}},
        "7": {"class_type": "PrismTestCapture", "inputs": {"image": ["3", 1]}},
    }
    CAPTURED.clear()
    executor, server = run_graph(graph)
    assert executor.success, server.messages
    from_list = next(c for c in CAPTURED if isinstance(c, ConceptSet) and c.source == "images input")
    from_folder = next(c for c in CAPTURED if isinstance(c, ConceptSet) and c.source != "images input")
    preview = next(c for c in CAPTURED if isinstance(c, torch.Tensor))
    assert len(from_list) == 3 and preview.shape == (3, RES, RES, 3)
    assert from_list.captions == ("a red mug on a desk", "a red mug in the sink", "") == from_folder.captions
    torch.testing.assert_close(from_list.images, from_folder.images, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- 3. resume checks what it continues


def _resume_graph(folder, stage1_seed, lora_seed=0, accumulation=2, resume="none", checkpoint_every=0):
    return {
        "1": {"class_type": "PrismTestTinyModels", "inputs": {"family": "sd15"}},
        "2": {"class_type": "ConceptPrismLoadConceptSet", "inputs": {"folder": str(folder), "resolution": RES, "captions": ""}},
        "3": {"class_type": "ConceptPrismOptimizePrismTokens", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0], "target_length": 1,
            "residual_length": 2, "beta": 0.05, "exclusion_set_size": 3, "learning_rate": 4e-4, "steps": 1,
            "gradient_accumulation": 1, "caption_init": False, "seed": stage1_seed}},
        "4": {"class_type": "ConceptPrismPrismLoRATrain", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0], "tokens": ["3", 0],
            "rank": 2, "alpha": 2.0, "learning_rate": 1e-3, "steps": 2, "gradient_accumulation": accumulation,
            "seed": lora_seed, "checkpoint_every": checkpoint_every, "checkpoint_prefix": "ck/run: v1",
            "resume_from": resume}},
        "5": {"class_type": "ConceptPrismSavePrismLoRA", "inputs": {"lora": ["4", 1], "filename_prefix": "out/lora",
                                                                     "save_dtype": "float32"}},
    }


def test_resume_refuses_other_tokens_or_images_warns_on_settings_and_keeps_the_history(tiny, tmp_path, lora_dir, folders,
                                                                                      caplog):
    register_test_nodes(tiny)
    folder = write_images(tmp_path / "concept", 3)
    graph = _resume_graph(folder, stage1_seed=0, checkpoint_every=1)
    graph["6"] = {"class_type": "ConceptPrismSavePrismTokens", "inputs": {"tokens": ["3", 0], "filename_prefix": "bank/mug"}}
    executor, server = run_graph(graph)
    assert executor.success, server.messages
    # checkpoint_prefix "ck/run: v1" has a ':' (an alternate data stream on Windows): saved with '_' instead.
    checkpoint = "ck/run_ v1_step0001_00001_.safetensors"
    assert (lora_dir / checkpoint).is_file()

    # Stage 1 ran again with another seed ("randomize"): other tokens, so resuming is refused with what to connect.
    executor, server = run_graph(_resume_graph(folder, stage1_seed=1, resume=checkpoint))
    message = _error(server)
    assert not executor.success and "other tokens" in message and checkpoint in message
    assert "the token bank 'bank/mug_00001_.safetensors' in models/prism_tokens holds them" in message

    # The fix it names (the saved bank) with other images (one retouched under the same name): refused, naming it.
    other = write_images(tmp_path / "other", 3)
    Image.new("RGB", (80, 80), (0, 255, 0)).save(other / "01.png")
    graph = _resume_graph(other, stage1_seed=0, resume=checkpoint)
    graph["3"] = {"class_type": "ConceptPrismLoadPrismTokens", "inputs": {"token_file": "bank/mug_00001_.safetensors"}}
    executor, server = run_graph(graph)
    message = _error(server)
    assert "was trained on other images: the pixels of ['01.png'] differ" in message and "Load Concept Set" in message

    # Same tokens and images, other seed and accumulation: trains, warns, and the header keeps both runs.
    with caplog.at_level(logging.WARNING):
        executor, server = run_graph(_resume_graph(folder, stage1_seed=0, lora_seed=5, accumulation=1, resume=checkpoint))
    assert executor.success, server.messages
    assert "seed 5 (was 0)" in caplog.text and "gradient_accumulation 1 (was 2)" in caplog.text
    saved = sorted((lora_dir / "out").iterdir())[-1]
    with safetensors.safe_open(str(saved), framework="pt") as handle:
        header = handle.metadata()
    runs = json.loads(header["conceptprism.runs"])
    assert [(r["seed"], r["gradient_accumulation"], r["first_step"], r["last_step"]) for r in runs] == [
        (0, 2, 1, 1), (5, 1, 2, 3)]
    assert json.loads(header["conceptprism.images"])["names"] == ["00.png", "01.png", "02.png"]


def test_resume_on_other_pixels_with_the_same_tokens_is_refused_naming_the_image(tiny, tmp_path, lora_dir):
    models = tiny("sd15")
    g = torch.Generator().manual_seed(0)
    widths = text.encoder_widths(models.clip)
    tokens = PrismTokens({k: torch.randn(1, w, generator=g) * 0.05 for k, w in widths.items()},
                         {k: torch.randn(3, 2, w, generator=g) * 0.05 for k, w in widths.items()},
                         [""] * 3, ["a.png", "b.png", "c.png"], {}, LossHistory())
    images = torch.rand(3, RES, RES, 3, generator=g)
    concept = ConceptSet(images, ("a.png", "b.png", "c.png"), ("",) * 3, RES, "test")
    args = {k: v[1]["default"] for s in ("required", "optional") for k, v in PrismLoRATrain.INPUT_TYPES()[s].items()
            if "default" in v[1]}
    args.update(steps=1, gradient_accumulation=1, checkpoint_every=0)
    with torch.inference_mode():
        lora = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens, **args)[1]
    from comfyui_conceptprism.prism_core.formats.lora_file import save_lora
    name = save_lora(lora, lora_dir, "first").name
    edited = images.clone()
    edited[2, :8, :8] = 0.0  # a retouched image under the same name
    with pytest.raises(ValueError) as ei, torch.inference_mode():
        PrismLoRATrain().train(models.model, models.clip, models.vae,
                               ConceptSet(edited, concept.names, concept.captions, RES, "test"), tokens,
                               **{**args, "resume_from": name})
    assert "the pixels of ['c.png'] differ" in str(ei.value) and "Load Concept Set" in str(ei.value)


# ---------------------------------------------------------------- 4. non-finite inputs caught before any step


def test_overflowing_vae_and_nan_pixels_are_named_before_training(tiny, tmp_path, lora_dir):
    register_test_nodes(tiny)
    folder = write_images(tmp_path / "concept", 3)
    graph = _resume_graph(folder, stage1_seed=0)
    graph["6"] = {"class_type": "PrismTestOverflowVAE", "inputs": {"vae": ["1", 2], "index": 1}}
    graph["3"]["inputs"]["vae"] = ["6", 0]
    executor, server = run_graph(graph)
    message = _error(server)
    assert "OptimizePrismTokens" in message and "'01.png' (image 2 of 3)" in message and "--fp32-vae" in message
    assert "Lower learning_rate" not in message

    graph = {
        "1": {"class_type": "PrismTestImageList", "inputs": {"count": 3, "nan_index": 2}},
        "2": {"class_type": "ConceptPrismLoadConceptSet", "inputs": {
            "folder": "", "resolution": RES, "captions": "", "images": ["1", 0]}},
        "3": {"class_type": "PrismTestCapture", "inputs": {"image": ["2", 1]}},
    }
    executor, server = run_graph(graph)
    message = _error(server)
    assert "'image_02' (image 3 of 3) from images input has NaN or infinite pixels" in message


def test_stage2_names_the_image_whose_latents_overflowed(tiny):
    models = tiny("sd2v")
    g = torch.Generator().manual_seed(1)
    widths = text.encoder_widths(models.clip)
    tokens = PrismTokens({k: torch.randn(1, w, generator=g) * 0.05 for k, w in widths.items()},
                         {k: torch.randn(3, 2, w, generator=g) * 0.05 for k, w in widths.items()},
                         [""] * 3, ["a.png", "b.png", "c.png"], {}, LossHistory())
    concept = ConceptSet(torch.rand(3, RES, RES, 3, generator=g), ("a.png", "b.png", "c.png"), ("",) * 3, RES, "test")
    args = {k: v[1]["default"] for s in ("required", "optional") for k, v in PrismLoRATrain.INPUT_TYPES()[s].items()
            if "default" in v[1]}
    with pytest.raises(ValueError) as ei, torch.inference_mode():
        PrismLoRATrain().train(models.model, models.clip, overflowing_vae(models.vae, 2), concept, tokens,
                               **{**args, "steps": 1})
    assert "'c.png' (image 3 of 3)" in str(ei.value) and "--fp32-vae" in str(ei.value)
    assert "Lower learning_rate" not in str(ei.value)


# ---------------------------------------------------------------- 5. concept-set inputs as users have them


class _NodeText:
    """Stands in for PromptServer.instance: records the text the pack shows on nodes."""
    def __init__(self):
        self.texts = []

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((str(node_id), text))


@pytest.fixture
def node_text(monkeypatch):
    """The host's `server` module as the pack's on-node text sees it (`from server import PromptServer`), with an
    instance that records. A stand-in module: importing ComfyUI's server needs main.py's import path set-up."""
    recorder = _NodeText()
    module = types.ModuleType("server")
    module.PromptServer = type("PromptServer", (), {"instance": recorder})
    monkeypatch.setitem(sys.modules, "server", module)
    return recorder


def test_a_kohya_style_folder_with_a_copy_and_a_huge_photo_trains_and_names_the_copy_first(tiny, tmp_path, caplog,
                                                                                          monkeypatch, node_text):
    """Notes, metadata and kohya caches beside the images are skipped with a console line (OS debris silently),
    kohya's .caption is read, a photo past Pillow's size limit loads downscaled (the limit stays), and the
    byte-identical copy is named in a warning, in the console and on the node, before Stage 1's first step."""
    register_test_nodes(tiny)
    folder = write_images(tmp_path / "concept", 3)
    shutil.copyfile(folder / "00.png", folder / "03.png")
    (folder / "01.caption").write_text("a red block on a table")
    for name in ["notes.md", "metadata.json", "00_0064x0064_sd.npz", "desktop.ini", "Thumbs.db"]:
        (folder / name).write_text("x")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12000)  # Image.open refuses over 24,000 px, as over 179 MP by default
    Image.new("RGB", (200, 150), (10, 200, 30)).save(folder / "04.png")
    graph = _resume_graph(folder, stage1_seed=0)
    del graph["4"], graph["5"]
    graph["6"] = {"class_type": "PrismTestCapture", "inputs": {"tokens": ["3", 0]}}
    graph["7"] = {"class_type": "PrismTestCapture", "inputs": {"concept_set": ["2", 0]}}
    CAPTURED.clear()
    with caplog.at_level(logging.INFO):
        executor, server = run_graph(graph)
    assert executor.success, server.messages
    concept = CAPTURED_BY["7"]
    assert concept.names == ("00.png", "01.png", "02.png", "03.png", "04.png") and Image.MAX_IMAGE_PIXELS == 12000
    assert concept.captions[1] == "a red block on a table"
    records = [r.getMessage() for r in caplog.records]
    warning = next(i for i, m in enumerate(records) if "same picture" in m)
    assert "'00.png' (image 1 of 5), '03.png' (image 4 of 5)" in records[warning] and "Remove the copy" in records[warning]
    first_step = next(i for i, m in enumerate(records) if "step 1/" in m)
    assert warning < first_step, records
    skipped = next(m for m in records if "skipped" in m)
    assert "00_0064x0064_sd.npz, metadata.json, notes.md" in skipped and "desktop.ini" not in skipped
    assert "Thumbs.db" not in caplog.text
    shown = [text for node, text in node_text.texts if node == "2"]
    assert len(shown) == 1 and "'03.png' (image 4 of 5)" in shown[0] and "same picture" in shown[0]


def test_one_image_twice_in_a_batch_is_named_by_index_on_the_node(tiny, caplog, node_text):
    register_test_nodes(tiny)
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 80, "height": 72, "batch_size": 1, "color": 0xC81E28}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 80, "height": 72, "batch_size": 1, "color": 0x1E28C8}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["1", 0]}},
        "5": {"class_type": "ConceptPrismLoadConceptSet", "inputs": {
            "folder": "", "resolution": RES, "captions": "", "images": ["4", 0]}},
        "6": {"class_type": "PrismTestCapture", "inputs": {"concept_set": ["5", 0]}},
    }
    with caplog.at_level(logging.WARNING):
        executor, server = run_graph(graph)
    assert executor.success, server.messages
    expected = "'image_00' (image 1 of 3), 'image_02' (image 3 of 3) from images input are the same picture"
    assert expected in caplog.text and "'image_01'" not in caplog.text
    assert [node for node, text in node_text.texts if expected in text] == ["5"]
