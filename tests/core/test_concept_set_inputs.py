"""Concept-set inputs that real users' folders and batches hold (issue 23, items 5-7), host-free: duplicate and
scaled-up images named in warnings, photos past Pillow's size limit, and folders with notes, metadata and trainer
caches beside the images. Files are made in tmp_path."""
from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_conceptprism.prism_core.concept_input import concept_folder, concept_set, images
from comfyui_conceptprism.prism_core.concept_input.images import ConceptSetError


def _image(path: pathlib.Path, seed: int, size: tuple[int, int] = (40, 32)) -> pathlib.Path:
    """A PNG of random pixels (distinct per seed), size (w, h)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def _load(folder: pathlib.Path, resolution: int = 32) -> concept_set.ConceptSet:
    return concept_set.from_folder(folder, resolution, [], "captions widget", typed="mugs")


# ---------------------------------------------------------------- item 5: inputs that will train badly are named


def test_a_byte_identical_copy_in_a_folder_is_named_in_a_warning(tmp_path):
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        _image(tmp_path / name, i)
    assert _load(tmp_path).warnings == ()  # three different photos: nothing to say
    shutil.copyfile(tmp_path / "a.png", tmp_path / "d.png")
    concept = _load(tmp_path)
    assert len(concept) == 4 and len(concept.warnings) == 1
    warning = concept.warnings[0]
    assert "'a.png' (image 1 of 4), 'd.png' (image 4 of 4)" in warning and "folder 'mugs'" in warning
    assert "same picture" in warning and "Remove the copy" in warning
    assert "'b.png'" not in warning and "'c.png'" not in warning


def test_one_image_twice_in_a_batch_is_named_by_index():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(48, 40, 3, generator=g), torch.rand(48, 40, 3, generator=g)
    concept = concept_set.from_batch(torch.stack([a, b, a, a]), 32, [], "captions widget")
    assert len(concept.warnings) == 1
    warning = concept.warnings[0]
    assert "'image_00' (image 1 of 4), 'image_02' (image 3 of 4), 'image_03' (image 4 of 4)" in warning
    assert "'image_01'" not in warning and "images input" in warning and "Remove the 2 copies" in warning
    # A list output (one image per item) holding the same image twice: the same warning.
    listed = concept_set.from_batch([a[None], b[None], a[None]], 32, [], "captions widget")
    assert len(listed.warnings) == 1 and "'image_02' (image 3 of 3)" in listed.warnings[0]


def test_duplicates_are_decided_by_pixels_at_the_training_resolution(tmp_path):
    """A lossless re-save under another name and format (PNG -> BMP) is the same picture; an edit is not."""
    _image(tmp_path / "a.png", 0)
    _image(tmp_path / "b.png", 1)
    Image.open(tmp_path / "a.png").save(tmp_path / "a_again.bmp")
    assert len(_load(tmp_path).warnings) == 1
    (tmp_path / "a_again.bmp").unlink()
    edited = np.asarray(Image.open(tmp_path / "a.png")).copy()
    edited[:16, :16] = 255 - edited[:16, :16]
    Image.fromarray(edited).save(tmp_path / "a_edited.png")
    assert _load(tmp_path).warnings == ()


def test_an_image_scaled_up_a_lot_is_named_with_its_size(tmp_path):
    _image(tmp_path / "big.png", 0, (80, 70))
    _image(tmp_path / "thumb.png", 1, (30, 24))
    warnings = _load(tmp_path, resolution=64).warnings
    assert len(warnings) == 1 and "'thumb.png' is 30x24" in warnings[0] and "'big.png'" not in warnings[0]
    assert "larger original" in warnings[0] and "lower resolution" in warnings[0]


def test_an_empty_image_in_a_batch_is_refused_naming_it():
    items = [torch.rand(1, 40, 40, 3), torch.rand(1, 0, 40, 3), torch.rand(1, 40, 40, 3)]
    with pytest.raises(ConceptSetError) as ei:
        concept_set.from_batch(items, 32, [], "captions widget")
    assert "'image_01' (image 2 of 3) from images input is empty" in str(ei.value)


# ---------------------------------------------------------------- item 6: large photos


def test_a_180_megapixel_jpeg_loads_downscaled_without_raising_pillows_limit(tmp_path):
    """Before: Pillow's decompression-bomb check refused it and the message said "re-save it as PNG or JPEG"."""
    limit = Image.MAX_IMAGE_PIXELS
    picture = Image.new("L", (15000, 12000), 40)
    picture.paste(220, (0, 0, 7500, 6000))  # top-left quarter bright
    path = tmp_path / "huge.jpg"
    picture.save(path, quality=85)
    del picture
    assert 15000 * 12000 > 2 * limit  # past the size Image.open refuses
    loaded = images.load_image_file(path)
    assert Image.MAX_IMAGE_PIXELS == limit  # the process-wide guard is untouched
    h, w = loaded.shape[:2]
    assert w / h == pytest.approx(15000 / 12000, rel=1e-3)
    assert h * w <= images.LARGE_IMAGE_MEGAPIXELS * 1_000_000 and min(h, w) >= images.MIN_SHORT_SIDE
    assert loaded[h // 4, w // 4].mean() == pytest.approx(220 / 255, abs=0.03)
    assert loaded[3 * h // 4, 3 * w // 4].mean() == pytest.approx(40 / 255, abs=0.03)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)  # other nodes are still guarded


def test_large_images_are_reduced_before_conversion_to_float(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "LARGE_IMAGE_MEGAPIXELS", 0.002)  # 2,000 pixels
    monkeypatch.setattr(images, "MIN_SHORT_SIDE", 20)
    seen = []
    to_float = images._to_rgb_float
    monkeypatch.setattr(images, "_to_rgb_float", lambda im: seen.append(im.size) or to_float(im))
    pixels = np.random.default_rng(3).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    loaded = images.load_image_file(tmp_path / "a.png")
    assert seen == [(40, 30)] and loaded.shape == (30, 40, 3)  # reduced by 3 (10,800 px -> 1,200), as 8-bit
    # A box-filter reduction: each pixel is the mean of its 3x3 block.
    expected = pixels.reshape(30, 3, 40, 3, 3).astype(np.float64).mean(axis=(1, 3)) / 255
    assert np.abs(loaded.numpy() - expected).max() < 1 / 255 + 1e-6
    # A long panorama keeps its short side: 2 rows of 1000 px are not reduced below MIN_SHORT_SIDE.
    assert images.reduction_factor((1000, 30)) == 1 and images.reduction_factor((120, 90)) == 3


@pytest.mark.parametrize("mode", ["P", "I;16", "1", "RGBA"])
def test_reduction_averages_colours_in_every_mode(tmp_path, monkeypatch, mode):
    """Palette images are reduced as colours (never by averaging palette indices), 16-bit keeps its range."""
    monkeypatch.setattr(images, "LARGE_IMAGE_MEGAPIXELS", 0.001)
    monkeypatch.setattr(images, "MIN_SHORT_SIDE", 4)
    if mode == "P":
        im = Image.new("P", (40, 40), 0)
        im.putpalette([255, 0, 0] + [0, 0, 255] + [0, 0, 0] * 254)
        im.paste(1, (0, 0, 40, 20))  # top half index 1 (blue), bottom index 0 (red)
        top, bottom = [0, 0, 1], [1, 0, 0]
    elif mode == "I;16":
        im = Image.fromarray(np.full((40, 40), 60000, dtype=np.uint16))
        top = bottom = [60000 / 65535] * 3
    elif mode == "1":
        im = Image.new("1", (40, 40), 1)
        top = bottom = [1, 1, 1]
    else:
        im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
        top = bottom = [1, 1, 1]  # transparent -> white, as unreduced
    im.save(tmp_path / "a.png")
    loaded = images.load_image_file(tmp_path / "a.png")
    assert loaded.shape[0] < 40
    assert loaded[1].mean(0).tolist() == pytest.approx(top, abs=1e-3)
    assert loaded[-2].mean(0).tolist() == pytest.approx(bottom, abs=1e-3)


def test_exif_orientation_is_applied_to_a_reduced_jpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "LARGE_IMAGE_MEGAPIXELS", 0.001)
    monkeypatch.setattr(images, "MIN_SHORT_SIDE", 8)
    im = Image.new("RGB", (160, 80), (0, 0, 0))
    im.paste((255, 0, 0), (0, 0, 40, 40))  # marker at raw top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: the marker goes to the top-right
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    loaded = images.load_image_file(tmp_path / "rot.jpg")
    h, w = loaded.shape[:2]
    assert h > w and h < 160  # upright and reduced
    assert loaded[2, -3, 0] > 0.8 and loaded[2, 2, 0] < 0.2


def test_a_png_past_pillows_limit_loads_and_the_limit_stays(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # stands in for a 179-MP photo against the default
    pixels = np.random.default_rng(1).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "wide.png")
    loaded = images.load_image_file(tmp_path / "wide.png")
    assert torch.equal(loaded, torch.from_numpy(pixels).float() / 255) and Image.MAX_IMAGE_PIXELS == 500


def test_images_too_large_to_decode_are_refused_with_their_size(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "DECODE_LIMIT_MEGAPIXELS", 0.001)  # 1,000 pixels
    Image.new("RGB", (50, 40), (1, 2, 3)).save(tmp_path / "pano.png")
    with pytest.raises(ConceptSetError) as ei:
        images.load_image_file(tmp_path / "pano.png")
    message = str(ei.value)
    assert "'pano.png'" in message and "50x40" in message and "Downscale it below 0.001 MP" in message
    assert "Re-save it as PNG or JPEG" not in message
    # A TIFF past Pillow's own limit: its size and the fix, not "re-save it".
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    Image.new("RGB", (50, 40), (1, 2, 3)).save(tmp_path / "scan.tif")
    with pytest.raises(ConceptSetError) as ei:
        images.load_image_file(tmp_path / "scan.tif")
    message = str(ei.value)
    assert "'scan.tif'" in message and "Downscale it below" in message and "MP" in message
    assert "Re-save it as PNG or JPEG" not in message and Image.MAX_IMAGE_PIXELS == 500


# ---------------------------------------------------------------- item 7: what else a folder holds


def test_known_non_image_files_are_skipped_and_listed_os_debris_silently(tmp_path):
    _image(tmp_path / "mug1.png", 0)
    _image(tmp_path / "mug2.png", 1)
    (tmp_path / "mug1.txt").write_text("a mug on a desk")
    for name in ["notes.md", "metadata.json", "mug1_0512x0512_sd.npz", "mug1_te_outputs.npz", "readme.txt"]:
        (tmp_path / name).write_bytes(b"x")
    for name in ["desktop.ini", "Thumbs.db", ".DS_Store", "._mug1.png"]:
        (tmp_path / name).write_bytes(b"\x00")
    concept = _load(tmp_path)
    assert concept.names == ("mug1.png", "mug2.png") and concept.captions == ("a mug on a desk", "")
    assert concept.skipped == ("metadata.json", "mug1_0512x0512_sd.npz", "mug1_te_outputs.npz", "notes.md",
                               "readme.txt")
    line = concept_folder.skipped_message(concept.skipped, "mugs")
    assert line.startswith("ConceptPrism: skipped 5 files in concept folder 'mugs' that are not images: ")
    assert "notes.md" in line and "desktop.ini" not in line and "Thumbs.db" not in line
    assert concept_folder.skipped_message((), "mugs") == ""


def test_kohya_caption_sidecars_are_read(tmp_path):
    _image(tmp_path / "a.png", 0)
    _image(tmp_path / "b.png", 1)
    (tmp_path / "a.caption").write_text("a mug  on a desk\n")
    (tmp_path / "b.CAPTION").write_text("a mug in the sink")
    assert _load(tmp_path).captions == ("a mug on a desk", "a mug in the sink")


def test_a_txt_and_a_caption_for_one_image_are_refused(tmp_path):
    _image(tmp_path / "a.png", 0)
    _image(tmp_path / "b.png", 1)
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "a.caption").write_text("two")
    with pytest.raises(ConceptSetError) as ei:
        _load(tmp_path)
    message = str(ei.value)
    assert "'a.png'" in message and "'a.caption' and 'a.txt'" in message and "keep one" in message


def test_a_caption_for_no_image_is_refused_with_the_rename(tmp_path):
    _image(tmp_path / "IMG_0001.png", 0)
    _image(tmp_path / "IMG_0002.png", 1)
    (tmp_path / "img_0001.caption").write_text("a mug")
    with pytest.raises(ConceptSetError) as ei:
        _load(tmp_path)
    assert "'img_0001.caption'" in str(ei.value) and "Rename it to 'IMG_0001.caption'" in str(ei.value)


@pytest.mark.parametrize("name,fix", [("IMG_0003.HEIC", "Most Compatible"), ("DSC_0001.NEF", "RAW converter"),
                                      ("shot.dng", "RAW converter"), ("layers.psd", "flattened PNG or JPEG")])
def test_image_formats_the_pack_cannot_read_are_refused_with_the_fix(tmp_path, name, fix):
    _image(tmp_path / "a.png", 0)
    _image(tmp_path / "b.png", 1)
    (tmp_path / "notes.md").write_text("skipped, not the reason")
    (tmp_path / name).write_bytes(b"\x00" * 16)
    with pytest.raises(ConceptSetError) as ei:
        _load(tmp_path)
    message = str(ei.value)
    assert f"'{name}'" in message and fix in message and "cannot read" in message and "notes.md" not in message


def test_avif_is_read_where_pillow_can_and_refused_with_the_fix_where_not(tmp_path):
    _image(tmp_path / "a.png", 0)
    pixels = np.random.default_rng(5).integers(0, 256, size=(32, 40, 3), dtype=np.uint8)
    if images.AVIF_READABLE:
        Image.fromarray(pixels).save(tmp_path / "b.avif", quality=100)
        assert _load(tmp_path).names == ("a.png", "b.avif")
    else:
        (tmp_path / "b.avif").write_bytes(b"\x00" * 16)
        with pytest.raises(ConceptSetError, match="'b.avif' is AVIF.*update Pillow"):
            _load(tmp_path)
