"""What a concept folder holds (listing, caption pairing) and what the errors about it say. Files are made in tmp_path."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_conceptprism.prism_core.concept_input import concept_folder, concept_set
from comfyui_conceptprism.prism_core.concept_input.images import ConceptSetError


def _image(path: pathlib.Path, size=(20, 16)) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 40, 200)).save(path, format="PNG")
    return path


def _captions(folder: pathlib.Path) -> dict[str, str]:
    concept = concept_set.from_folder(folder, 32, [], "captions widget")
    return dict(zip(concept.names, concept.captions))


# ---------------------------------------------------------------- listing


def test_list_image_files_order_and_skips(tmp_path):
    for name in ["img10.png", "b.jpg", "img2.png", "A.PNG", ".hidden.png", "A.txt", "img2.txt", "img10.TXT"]:
        if name.lower().endswith(".txt"):
            (tmp_path / name).write_text("caption")
        else:
            _image(tmp_path / name)
    _image(tmp_path / "sub" / "inner.png")
    names = [p.name for p in concept_folder.list_image_files(tmp_path)]
    assert names == ["A.PNG", "b.jpg", "img2.png", "img10.png"]
    assert names == [p.name for p in concept_folder.list_image_files(str(tmp_path))]  # deterministic, str accepted
    assert all(isinstance(p, pathlib.Path) for p in concept_folder.list_image_files(tmp_path))


def test_list_image_files_rejects_files_of_unknown_kind(tmp_path):
    """A file that is neither an image, a caption nor a known non-image file could be a photo under an odd name:
    refused, named, with the fix (known non-image files are skipped: test_concept_set_inputs.py)."""
    _image(tmp_path / "a.png")
    (tmp_path / "scan.xyz").write_bytes(b"%PDF-1.4")
    with pytest.raises(ConceptSetError) as ei:
        concept_folder.list_image_files(tmp_path, "conceptprism/mugs")
    message = str(ei.value)
    assert "'scan.xyz'" in message and "move it out" in message and "'conceptprism/mugs'" in message
    assert "save it as PNG or JPEG" in message


# ---------------------------------------------------------------- caption pairing (one rule)


def test_caption_with_upper_case_txt_is_read_for_its_image(tmp_path):
    """IMG_0001.JPG + IMG_0001.TXT: the listing already counted the .TXT as a caption, so reading must find it
    (before, reading looked only for IMG_0001.txt and the image trained without it on case-sensitive systems)."""
    _image(tmp_path / "IMG_0001.JPG")
    _image(tmp_path / "IMG_0002.jpg")
    (tmp_path / "IMG_0001.TXT").write_text("a red mug on a desk")
    (tmp_path / "IMG_0002.Txt").write_text("a red mug  in\nthe sink")
    assert _captions(tmp_path) == {"IMG_0001.JPG": "a red mug on a desk", "IMG_0002.jpg": "a red mug in the sink"}


def test_two_captions_for_one_image_are_refused_with_both_named(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "a.TXT").write_text("two")
    if len(os.listdir(tmp_path)) < 4:
        pytest.skip("this file system folds case: a.txt and a.TXT are one file")
    with pytest.raises(ConceptSetError) as ei:
        concept_set.from_folder(tmp_path, 32, [], "captions widget")
    message = str(ei.value)
    assert "'a.png'" in message and "'a.TXT'" in message and "'a.txt'" in message and "keep one" in message


def test_caption_whose_name_differs_in_case_is_refused_with_the_rename(tmp_path):
    _image(tmp_path / "IMG_0001.JPG")
    _image(tmp_path / "IMG_0002.JPG")
    (tmp_path / "img_0001.txt").write_text("a red mug")
    with pytest.raises(ConceptSetError) as ei:
        concept_set.from_folder(tmp_path, 32, [], "captions widget")
    assert "'img_0001.txt'" in str(ei.value) and "Rename it to 'IMG_0001.txt'" in str(ei.value)


def test_hidden_and_unpaired_captions_are_ignored(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    (tmp_path / "._a.txt").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork, not UTF-8
    (tmp_path / "notes.txt").write_text("shot on a phone")
    assert _captions(tmp_path) == {"a.png": "", "b.png": ""}


def test_caption_whitespace_bom_and_empty(tmp_path):
    _image(tmp_path / "mug.png")
    _image(tmp_path / "x.png")
    (tmp_path / "mug.txt").write_text("  a  red\n\tceramic   mug \n\n", encoding="utf-8-sig")
    (tmp_path / "x.txt").write_text(" \n\t \n", encoding="utf-8")
    assert (tmp_path / "mug.txt").read_bytes().startswith(b"\xef\xbb\xbf")
    assert _captions(tmp_path) == {"mug.png": "a red ceramic mug", "x.png": ""}
    (tmp_path / "x.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ConceptSetError, match="x.txt.*UTF-8"):
        _captions(tmp_path)


# ---------------------------------------------------------------- folder diagnostics


def test_parent_of_a_kohya_folder_names_the_subfolder_to_point_at(tmp_path):
    parent = tmp_path / "conceptprism"
    for i in range(3):
        _image(parent / "10_mymug" / f"{i}.png")
    with pytest.raises(ConceptSetError) as ei:
        concept_set.from_folder(parent, 32, [], "captions widget", typed="conceptprism")
    message = str(ei.value)
    assert "one level down" in message and "Set folder to 'conceptprism/10_mymug'" in message
    assert "Add more reference images" not in message
    # The fix it names works.
    assert len(concept_set.from_folder(parent / "10_mymug", 32, [], "captions widget")) == 3


def test_several_subfolders_are_listed_with_their_counts_in_the_separator_typed(tmp_path):
    parent = tmp_path / "train"
    _image(parent / "5_mug" / "a.png")
    for i in range(2):
        _image(parent / "10_mug" / f"{i}.png")
    _image(parent / "only.png")
    typed = "C:\\data\\train"
    with pytest.raises(ConceptSetError) as ei:
        concept_set.from_folder(parent, 32, [], "captions widget", typed=typed)
    message = str(ei.value)
    assert "Only 1 image directly in" in message and f"'{typed}' ({parent})" in message
    assert "'5_mug' (1 images), '10_mug' (2 images)" in message and "'C:\\data\\train\\5_mug'" in message


def test_empty_folder_says_to_put_images_in_it(tmp_path):
    (tmp_path / "mugs").mkdir()
    with pytest.raises(ConceptSetError) as ei:
        concept_set.from_folder(tmp_path / "mugs", 32, [], "captions widget", typed="mugs")
    message = str(ei.value)
    assert "Only 0 images in concept folder 'mugs'" in message and "at least 2" in message and ".png" in message


def test_missing_folder_names_what_was_typed_and_the_folders_beside_it(tmp_path):
    (tmp_path / "input" / "conceptprism" / "My_Mug").mkdir(parents=True)
    path = tmp_path / "input" / "conceptprism" / "my_mug"
    with pytest.raises(ConceptSetError) as ei:
        concept_set.from_folder(path, 32, [], "captions widget", typed="conceptprism/my_mug")
    message = str(ei.value)
    assert f"'conceptprism/my_mug' ({path}) does not exist" in message and "My_Mug" in message
    with pytest.raises(ConceptSetError, match="nor does its parent"):
        concept_set.from_folder(tmp_path / "a" / "b", 32, [], "captions widget")


def test_an_image_given_as_the_folder_names_its_folder(tmp_path):
    image = _image(tmp_path / "mugs" / "a.png")
    with pytest.raises(ConceptSetError) as ei:
        concept_set.from_folder(image, 32, [], "captions widget", typed="mugs/a.png")
    assert "is an image, not a folder" in str(ei.value) and "set folder to the folder that holds the images, 'mugs'" in str(ei.value)


def test_typed_folder_drops_the_quotes_of_copy_as_path():
    assert concept_folder.typed_folder('  "D:\\photos\\mug"  ') == "D:\\photos\\mug"
    assert concept_folder.typed_folder("'/data/mug'") == "/data/mug"
    assert concept_folder.typed_folder('conceptprism/"odd"name') == 'conceptprism/"odd"name'


# ---------------------------------------------------------------- captions and images from list inputs


def test_caption_lines_from_one_string_or_a_list():
    assert concept_set.caption_lines(["a red mug\n\nblue mug\n"]) == ["a red mug", "blue mug"]
    assert concept_set.caption_lines(["a red\nmug ", "", " blue  mug"]) == ["a red mug", "", "blue mug"]
    assert concept_set.caption_lines(["", ""]) == [] and concept_set.caption_lines([]) == []


def test_list_of_images_of_different_sizes_is_resized_like_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(40, 30), (24, 50), (33, 33)]]
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(tmp_path / f"{i}.png")
    items = [torch.from_numpy(array).float()[None] / 255 for array in arrays]  # [1, H, W, 3] each, as a list output
    from_list = concept_set.from_batch(items, 16, ["a", "b", "c"], "caption_text input")
    from_folder = concept_set.from_folder(tmp_path, 16, ["a", "b", "c"], "caption_text input")
    assert len(from_list) == 3 and torch.allclose(from_list.images, from_folder.images, atol=1e-6)
    assert from_list.captions == ("a", "b", "c")
