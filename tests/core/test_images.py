"""Tests for prism_core.concept_input.images. All images are generated in tmp_path with Pillow."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_conceptprism.prism_core.concept_input import images
from comfyui_conceptprism.prism_core.concept_input.images import ConceptSetError


def _save(img: Image.Image, path: pathlib.Path, **kw) -> pathlib.Path:
    img.save(path, **kw)
    return path


# ---------------------------------------------------------------- decoding


def test_rgb_png_roundtrip_exact(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    p = _save(Image.fromarray(arr), tmp_path / "rgb.png")
    t = images.load_image_file(p)
    assert t.dtype == torch.float32 and t.shape == (7, 5, 3)
    assert torch.allclose(t, torch.from_numpy(arr).float() / 255.0)


def test_rgba_composited_on_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> must become white
    im.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    t = images.load_image_file(_save(im, tmp_path / "a.png"))
    assert t.shape == (4, 4, 3)
    assert torch.allclose(t[0, 0], torch.ones(3))
    assert torch.allclose(t[0, 1], torch.full((3,), 1 - 128 / 255), atol=1e-6)
    assert torch.allclose(t[2, 2], torch.tensor([1.0, 0.0, 0.0]))


def test_la_composited_on_white(tmp_path):
    im = Image.new("LA", (3, 3), (0, 255))
    im.putpixel((2, 2), (0, 0))
    t = images.load_image_file(_save(im, tmp_path / "la.png"))
    assert torch.allclose(t[2, 2], torch.ones(3)) and torch.allclose(t[0, 0], torch.zeros(3))


def test_grayscale_equal_channels(tmp_path):
    arr = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    t = images.load_image_file(_save(Image.fromarray(arr, "L"), tmp_path / "g.png"))
    assert t.shape == (4, 6, 3)
    assert torch.equal(t[..., 0], t[..., 1]) and torch.equal(t[..., 1], t[..., 2])
    assert torch.allclose(t[..., 0], torch.from_numpy(arr).float() / 255.0)


def test_bilevel_mode_1(tmp_path):
    im = Image.new("1", (4, 2), 0)
    im.putpixel((3, 1), 1)
    t = images.load_image_file(_save(im, tmp_path / "b.bmp"))
    assert torch.allclose(t[1, 3], torch.ones(3)) and torch.allclose(t[0, 0], torch.zeros(3))


def test_palette_image(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    im.putpixel((1, 1), 1)
    t = images.load_image_file(_save(im, tmp_path / "p.png"))
    assert torch.allclose(t[0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(t[1, 1], torch.tensor([0.0, 1.0, 0.0]))


def test_palette_with_transparency_is_white(tmp_path):
    im = Image.new("P", (3, 3), 0)
    im.putpalette([10, 20, 30] + [200, 0, 0] + [0, 0, 0] * 254)
    im.putpixel((1, 1), 1)
    t = images.load_image_file(_save(im, tmp_path / "pt.png", transparency=0))
    assert torch.allclose(t[0, 0], torch.ones(3))
    assert torch.allclose(t[1, 1], torch.tensor([200 / 255, 0.0, 0.0]))


def test_16bit_png_uses_full_range(tmp_path):
    arr = np.array([[65535, 32768], [0, 1000]], dtype=np.uint16)
    p = _save(Image.fromarray(arr), tmp_path / "d16.png")
    assert Image.open(p).mode.startswith("I")  # really a 16-bit file
    t = images.load_image_file(p)
    assert t.shape == (2, 2, 3)
    assert t[0, 0, 0].item() == pytest.approx(1.0)
    assert t[0, 1, 0].item() == pytest.approx(0.5, abs=1e-4)  # 255-clipping would give 1.0
    assert t[1, 1, 0].item() == pytest.approx(1000 / 65535, abs=1e-6)
    assert torch.equal(t[..., 0], t[..., 2])


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_16bit_tiff_variants(tmp_path, mode):
    arr = np.array([[65535, 32768], [0, 1000]], dtype=np.uint16)
    if mode == "I;16B":
        im = Image.frombytes("I;16B", (2, 2), arr.astype(">u2").tobytes())
    else:
        im = Image.fromarray(arr.astype(np.int32))
    p = _save(im, tmp_path / f"d_{mode.replace(';', '')}.tif")
    t = images.load_image_file(p)
    assert t[0, 0, 0].item() == pytest.approx(1.0)
    assert t[0, 1, 0].item() == pytest.approx(0.5, abs=1e-4)
    assert t[1, 0, 0].item() == 0.0


def test_float_tiff(tmp_path):
    arr = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    t = images.load_image_file(_save(Image.fromarray(arr), tmp_path / "f.tif"))
    assert torch.allclose(t[..., 1], torch.from_numpy(arr))


def test_cmyk_jpeg_decodes_to_sane_rgb(tmp_path):
    p = _save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "cyan.jpg", quality=95)
    assert Image.open(p).mode == "CMYK"
    t = images.load_image_file(p)
    r, g, b = t[8, 8].tolist()
    assert t.shape == (16, 16, 3)
    assert r < 0.15 and g > 0.85 and b > 0.85


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 0, 0), (0, 0, 4, 4))  # marker at raw top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = _save(im, tmp_path / "rot.png", exif=exif)
    raw = np.asarray(Image.open(p).convert("RGB"))
    t = images.load_image_file(p)
    assert raw.shape == (20, 40, 3)
    assert t.shape == (40, 20, 3)  # H and W swapped
    # Rotating 90 CW moves the top-left corner to the top-right.
    assert torch.allclose(t[0, -1], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(t[0, 0], torch.zeros(3))


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 6), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(p), "n_frames", 1) == 3
    t = images.load_image_file(p)
    assert t.shape == (6, 6, 3)
    assert t[3, 3, 0] > 0.9 and t[3, 3, 1] < 0.1 and t[3, 3, 2] < 0.1


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_corrupt_file_names_file(tmp_path, kind):
    p = tmp_path / f"broken_{kind}.png"
    if kind == "garbage":
        p.write_bytes(b"this is not an image at all")
    elif kind == "truncated":
        good = tmp_path / "good.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
        p.write_bytes(good.read_bytes()[:200])
    else:
        p.write_bytes(b"")
    with pytest.raises(ConceptSetError) as ei:
        images.load_image_file(p)
    msg = str(ei.value)
    assert p.name in msg and "PNG" in msg and "remove" in msg


def test_image_extensions_constant():
    assert images.IMAGE_EXTENSIONS >= {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
    assert all(e.startswith(".") and e == e.lower() for e in images.IMAGE_EXTENSIONS)


# ---------------------------------------------------------------- captions


def test_split_caption_lines():
    assert images.split_caption_lines("  one \n\n two\r\n   \nthree") == ["one", "two", "three"]
    assert images.split_caption_lines("") == []


def test_caption_count_mismatch_names_counts():
    images.check_caption_count(["a", "b"], 2, "the captions widget")  # no error
    with pytest.raises(ConceptSetError) as ei:
        images.check_caption_count(["a", "b", "c"], 4, "the captions widget")
    msg = str(ei.value)
    assert "3 captions" in msg and "4 images" in msg and "the captions widget" in msg


def test_too_few_images():
    images.check_image_count(2, "images input")  # no error
    with pytest.raises(ConceptSetError) as ei:
        images.check_image_count(1, "/data/mugs")
    msg = str(ei.value)
    assert "/data/mugs" in msg and "at least 2" in msg and "4-6" in msg
    with pytest.raises(ConceptSetError, match="images input"):
        images.check_image_count(0, "images input")


# ---------------------------------------------------------------- resizing


def _marker_image(h: int, w: int, size: int = 6) -> torch.Tensor:
    """A white block exactly centred on both axes (block parity matches the axis parity)."""
    img = torch.zeros(h, w, 3)
    sy, sx = min(size, h), min(size, w)
    sy -= (h - sy) % 2
    sx -= (w - sx) % 2
    top, left = (h - sy) // 2, (w - sx) // 2
    img[top : top + sy, left : left + sx] = 1.0
    return img


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    m = img[..., 0]
    ys, xs = torch.meshgrid(torch.arange(m.shape[0]).float(), torch.arange(m.shape[1]).float(), indexing="ij")
    total = m.sum()
    return float((ys * m).sum() / total), float((xs * m).sum() / total)


@pytest.mark.parametrize("h,w", [(200, 300), (300, 200), (5, 3), (64, 64), (3, 500)])
def test_resize_center_crop_shape_range_and_center(h, w):
    img = _marker_image(h, w)
    out = images.resize_center_crop(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    cy, cx = _centroid(out)
    assert cy == pytest.approx(31.5, abs=1.5) and cx == pytest.approx(31.5, abs=1.5)


def test_resize_clamps_bicubic_overshoot_and_is_deterministic():
    # A hard checkerboard makes bicubic overshoot outside [0, 1] before clamping.
    img = ((torch.arange(37)[:, None] + torch.arange(53)[None, :]) % 2).float()[..., None].repeat(1, 1, 3)
    up = images.resize_center_crop(img, 128)
    assert up.min() >= 0.0 and up.max() <= 1.0
    assert torch.equal(up, images.resize_center_crop(img, 128))


def test_resize_does_not_mutate_input():
    img = torch.rand(50, 80, 3)
    before = img.clone()
    out = images.resize_center_crop(img, 32)
    out.fill_(0.5)
    assert torch.equal(img, before)
    same = torch.rand(16, 16, 3)
    kept = same.clone()
    out2 = images.resize_center_crop(same, 16)  # no-resize path must still return a copy
    assert torch.equal(out2, kept)
    out2.zero_()
    assert torch.equal(same, kept)


def test_resize_downscale_is_antialiased():
    # A 1-px stripe pattern should average to ~0.5 grey, not alias to solid black/white.
    stripes = (torch.arange(512) % 2).float()[None, :, None].repeat(512, 1, 3)
    out = images.resize_center_crop(stripes, 32)
    assert out.mean().item() == pytest.approx(0.5, abs=0.05)
    assert out.std().item() < 0.05


def test_resize_rejects_bad_input():
    with pytest.raises(ConceptSetError):
        images.resize_center_crop(torch.zeros(4, 4), 8)
    with pytest.raises(ConceptSetError):
        images.resize_center_crop(torch.zeros(4, 4, 3), 0)
