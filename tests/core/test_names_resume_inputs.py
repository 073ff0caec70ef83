"""Names the save nodes use, the resume record of a LoRA file, and the once-per-run input checks (host-free parts)."""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from comfyui_conceptprism.prism_core.formats import names
from comfyui_conceptprism.prism_core.formats.files import save_new_safetensors
from comfyui_conceptprism.prism_core.concept_input.input_checks import NonFiniteInputError, check_latents, check_pixels
from comfyui_conceptprism.prism_core.formats.lora_file import BaseFamily, lora_metadata, token_hash
from comfyui_conceptprism.prism_core.formats.resume import (
    ResumeMismatchError, check_resume, image_record, previous_runs)
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens

HOSTILE = ["my dog", "rex (v2)", "a:b*c?d\"e<f>g|h", "sub dir/my dog", "tab\there\nnewline", "no\u00a0break",
           "con/dog", "((weighted:1.2))", "  ", "ünïcode dög"]
WINDOWS_FORBIDDEN = set('<>:"|?*') | {chr(c) for c in range(32)}


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("prefix", HOSTILE)
def test_prompt_word_prefix_is_one_word_without_brackets_and_a_portable_path(prefix):
    word = "embedding:" + names.prompt_word_prefix(prefix) + "_00001_"
    # What ComfyUI's tokenizer does with a prompt: brackets are weights, the name ends at whitespace.
    assert word.split() == [word] and "(" not in word and ")" not in word
    parts = names.prompt_word_prefix(prefix).split("/")
    assert all(part and not WINDOWS_FORBIDDEN & set(part) for part in parts)
    assert all(part.split(".")[0].casefold() not in {"con", "nul", "aux", "prn"} for part in parts[:-1])


def test_names_keep_what_is_safe_and_say_what_changed(caplog):
    assert names.prompt_word_prefix("conceptprism/concept") == "conceptprism/concept"
    assert names.prompt_word_prefix("my dog") == "my_dog" and names.prompt_word_prefix("rex (v2)") == "rex_v2"
    assert names.file_prefix("rex (v2)") == "rex (v2)"  # a LoRA name only has to be a file name
    assert names.file_prefix("dog: best") == "dog_ best" and names.file_prefix("a\\b") == "a/b"
    with caplog.at_level(logging.WARNING, logger="ConceptPrism"):
        assert names.checked_prefix("filename_prefix", "conceptprism/concept", for_prompt=True) == "conceptprism/concept"
        assert not caplog.records
        assert names.checked_prefix("filename_prefix", "rex (v2)", for_prompt=True) == "rex_v2"
    assert "filename_prefix 'rex (v2)' is saved as 'rex_v2'" in caplog.text


def test_saves_never_write_a_name_windows_refuses(tmp_path):
    path = save_new_safetensors(tmp_path, "runs/dog:v2?", {"x": torch.zeros(1)})
    assert path == (tmp_path / "runs" / "dog_v2_00001_.safetensors").resolve() and path.is_file()
    with pytest.raises(ValueError, match="outside"):
        save_new_safetensors(tmp_path / "inner", "../escape", {"x": torch.zeros(1)})


# ---------------------------------------------------------------- resume record


FAMILY = BaseFamily("sd15", False, "sd_v1", "stable-diffusion-v1/lora")


def _tokens(seed=0):
    g = torch.Generator().manual_seed(seed)
    return PrismTokens({"clip_l": torch.randn(1, 8, generator=g)}, {"clip_l": torch.randn(3, 2, 8, generator=g)},
                       ["", "", ""], ["a.png", "b.png", "c.png"], {}, LossHistory())


def _images(seed=0):
    return torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(seed))


SETTINGS = {"seed": 0, "gradient_accumulation": 4, "learning_rate": 4e-4, "weight_decay": 0.01, "max_grad_norm": 1.0,
            "training_dtype": "float32", "rank": 4}


def _header(tokens, images, settings=SETTINGS, steps=40):
    record = image_record(["a.png", "b.png", "c.png"], images, 8)
    return lora_metadata(FAMILY, 4, 4.0, steps, settings, tokens, [1.0] * steps, record)


def test_resume_continues_quietly_when_tokens_images_and_settings_match():
    tokens, images = _tokens(), _images()
    header = _header(tokens, images)
    same = image_record(["a.png", "b.png", "c.png"], images.clone(), 8)
    assert check_resume(header, "ck.safetensors", token_hash(tokens), same, dict(SETTINGS)) == []
    assert previous_runs(header) == [{**SETTINGS, "first_step": 1, "last_step": 40}]


def test_resume_with_other_tokens_is_refused_and_names_the_bank_to_load():
    tokens = _tokens()
    header = _header(tokens, _images())
    record = image_record(["a.png", "b.png", "c.png"], _images(), 8)
    with pytest.raises(ResumeMismatchError) as ei:
        check_resume(header, "ck.safetensors", token_hash(_tokens(seed=1)), record, SETTINGS,
                     lambda sha: ["dog_00003_.safetensors"] if sha == token_hash(tokens) else [])
    message = str(ei.value)
    assert "'ck.safetensors' was trained with other tokens" in message and "randomize" in message
    assert "'dog_00003_.safetensors'" in message and "Load Prism Tokens" in message


def test_resume_with_other_images_is_refused_and_names_them():
    tokens, images = _tokens(), _images()
    header = _header(tokens, images)
    changed = images.clone()
    changed[1, 0, 0, 0] = 1.0 - changed[1, 0, 0, 0]
    cases = [
        (image_record(["a.png", "b.png", "c.png"], changed, 8), "the pixels of ['b.png'] differ"),
        (image_record(["a.png", "b.png", "d.png"], images, 8), "this concept set has ['a.png', 'b.png', 'd.png']"),
        (image_record(["a.png", "b.png", "c.png"], images, 16), "trained at 8 px, this concept set is at 16 px"),
    ]
    for record, expected in cases:
        with pytest.raises(ResumeMismatchError) as ei:
            check_resume(header, "ck.safetensors", token_hash(tokens), record, SETTINGS)
        assert expected in str(ei.value) and "Load Concept Set" in str(ei.value)
    # A last-bit difference from resampling is not another image (8-bit pixels are compared).
    nudged = images + 1e-7
    assert check_resume(header, "x", token_hash(tokens), image_record(["a.png", "b.png", "c.png"], nudged, 8), SETTINGS) == []


def test_resume_with_other_seed_or_accumulation_warns_and_the_history_keeps_every_run():
    tokens, images = _tokens(), _images()
    header = _header(tokens, images)
    record = image_record(["a.png", "b.png", "c.png"], images, 8)
    warnings = check_resume(header, "ck.safetensors", token_hash(tokens), record,
                            {**SETTINGS, "seed": 7, "gradient_accumulation": 2})
    assert len(warnings) == 1 and "seed 7 (was 0)" in warnings[0] and "gradient_accumulation 2 (was 4)" in warnings[0]
    assert "steps 1-40" in warnings[0]
    runs = previous_runs(header) + [{**SETTINGS, "seed": 7, "first_step": 41, "last_step": 60}]
    resumed = lora_metadata(FAMILY, 4, 4.0, 60, {**SETTINGS, "seed": 7}, tokens, [1.0] * 60, record, runs)
    assert [(r["seed"], r["first_step"], r["last_step"]) for r in json.loads(resumed["conceptprism.runs"])] == [
        (0, 1, 40), (7, 41, 60)]
    again = check_resume(resumed, "x", token_hash(tokens), record, {**SETTINGS, "seed": 7})
    assert again == []  # compared with the last run


def test_files_from_before_the_record_resume_with_a_note():
    tokens = _tokens()
    header = {k: v for k, v in _header(tokens, _images()).items() if k not in ("conceptprism.images", "conceptprism.runs")}
    warnings = check_resume(header, "old.safetensors", token_hash(tokens), image_record(["x"], _images(), 8), SETTINGS)
    assert len(warnings) == 1 and "does not record its images" in warnings[0]
    assert previous_runs(header) == [{**SETTINGS, "first_step": 1, "last_step": 40}]


# ---------------------------------------------------------------- input checks


def test_non_finite_pixels_and_latents_name_the_image_and_the_fix():
    images = torch.rand(3, 4, 4, 3)
    check_pixels(images, ["a", "b", "c"], "images input")
    images[2, 1, 1, 0] = math.nan
    with pytest.raises(NonFiniteInputError) as ei:
        check_pixels(images, ["a", "b", "image_02"], "images input")
    assert "'image_02' (image 3 of 3) from images input" in str(ei.value) and "fix or replace that node" in str(ei.value)
    latents = torch.zeros(3, 4, 2, 2)
    latents[1, 0, 0, 0] = math.inf
    with pytest.raises(NonFiniteInputError) as ei:
        check_latents(latents, ["a.png", "b.png", "c.png"])
    message = str(ei.value)
    assert "'b.png' (image 2 of 3)" in message and "--fp32-vae" in message and "learning rate is not the cause" in message
