"""Token bank and embedding files: round trip, ComfyUI naming, never overwriting, never half-written."""
import math

import pytest
import safetensors.torch
import torch

from comfyui_conceptprism.prism_core.formats import files
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens


def _tokens():
    return PrismTokens(
        target={"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)},
        residuals={"clip_l": torch.randn(3, 8, 768), "clip_g": torch.randn(3, 8, 1280)},
        captions=["a dog on grass", "", "a dog indoors"], image_names=["a.png", "b.png", "c.png"],
        settings={"beta": 0.05, "steps": 3}, history=LossHistory([0.5, 0.4], [0.1, math.nan]))


def test_bank_round_trip_keeps_everything(tmp_path):
    tokens = _tokens()
    path = tokens.save(tmp_path, "sub/dog")
    assert path == tmp_path / "sub" / "dog_00001_.safetensors"
    loaded = PrismTokens.load(path)
    for key in ("clip_l", "clip_g"):
        assert torch.equal(loaded.target[key], tokens.target[key])
        assert torch.equal(loaded.residuals[key], tokens.residuals[key])
    assert loaded.captions == tokens.captions and loaded.image_names == tokens.image_names
    assert loaded.settings == tokens.settings and loaded.history.rec == [0.5, 0.4]
    assert loaded.history.excl[0] == 0.1 and math.isnan(loaded.history.excl[1])
    assert loaded.family == "clip_g+clip_l"


def test_embedding_layout_is_keyed_per_encoder(tmp_path):
    path = files.save_new_safetensors(tmp_path, "emb", _tokens().embedding_tensors())
    stored = safetensors.torch.load_file(path)
    assert set(stored) == {"clip_l", "clip_g"} and stored["clip_g"].shape == (1, 1280)


def test_counter_never_overwrites_and_leaves_no_temporary_files(tmp_path):
    first = files.save_new_safetensors(tmp_path, "x", {"a": torch.zeros(1)})
    (tmp_path / "x_00007_.safetensors").write_bytes(b"user file")
    second = files.save_new_safetensors(tmp_path, "x", {"a": torch.ones(1)})
    assert first.name == "x_00001_.safetensors" and second.name == "x_00008_.safetensors"
    assert (tmp_path / "x_00007_.safetensors").read_bytes() == b"user file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_00001_.safetensors", "x_00007_.safetensors", "x_00008_.safetensors"]


def test_folders_without_hard_links_save_without_overwriting(tmp_path, monkeypatch):
    """FAT32/exFAT drives and some network folders refuse os.link (EPERM / ENOTSUP): the save reserves the
    name exclusively and renames over it, still never overwriting and leaving no temporary file."""
    def no_hard_links(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(files.os, "link", no_hard_links)
    (tmp_path / "x_00001_.safetensors").write_bytes(b"user file")
    (tmp_path / "x_00003_.safetensors").write_bytes(b"another user file")
    first = files.save_new_safetensors(tmp_path, "x", {"a": torch.ones(2)})
    second = files.save_new_safetensors(tmp_path, "x", {"a": torch.zeros(2)})
    assert (first.name, second.name) == ("x_00004_.safetensors", "x_00005_.safetensors")
    assert torch.equal(safetensors.torch.load_file(first)["a"], torch.ones(2))
    assert (tmp_path / "x_00001_.safetensors").read_bytes() == b"user file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"x_0000{i}_.safetensors" for i in (1, 3, 4, 5)]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # like a Cancel arriving mid-write
    monkeypatch.setattr(files.safetensors.torch, "save_file", explode)
    with pytest.raises(KeyboardInterrupt):
        files.save_new_safetensors(tmp_path, "x", {"a": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []


def test_prefix_cannot_escape_the_folder(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        files.save_new_safetensors(tmp_path, "../evil", {"a": torch.zeros(1)})


def test_loading_a_non_bank_file_says_what_it_is(tmp_path):
    path = files.save_new_safetensors(tmp_path, "emb", {"clip_l": torch.zeros(1, 768)})
    with pytest.raises(ValueError, match="not a ConceptPrism token bank"):
        PrismTokens.load(path)
    with pytest.raises(ValueError, match="'banks/emb_00001_.safetensors' is not a ConceptPrism token bank"):
        PrismTokens.load(path, "banks/emb_00001_.safetensors")
