"""Concept-set image loading: decoding, caption lines and square resizing (folders: concept_folder.py).

Everything here returns ComfyUI's IMAGE layout without the batch dim: float32 [H, W, 3] in [0, 1].
Pure module: standard library, numpy, torch and Pillow only (no comfy imports).
"""

from __future__ import annotations

import math
import os
import pathlib
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError


class ConceptSetError(ValueError):
    """Bad concept-set input; the message names the offending file/input and says what to change."""


def _avif_readable() -> bool:
    # Pillow reads AVIF from 11.3 on when built with libavif (its wheels are); older or other builds cannot.
    try:
        from PIL import features
        return bool(features.check("avif"))
    except (ImportError, ValueError):
        return False


AVIF_READABLE: bool = _avif_readable()
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
    | ({".avif"} if AVIF_READABLE else set())
)
"""File extensions read as images (any case). .avif only where this Pillow can decode it."""


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 4] -> float32 [H, W, 3]; transparent areas become white (product shots mean white there)."""
    rgb = rgba[..., :3].astype(np.float32) / 255.0
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return rgb * alpha + (1.0 - alpha)


def _to_rgb_float(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 [H, W, 3] in [0, 1], keeping high-bit-depth precision."""
    mode = im.mode
    if mode.startswith("I;16"):
        # 16-bit grayscale: scale by the true 16-bit range; convert("L") would clip everything above 255.
        arr = np.asarray(im).astype(np.float32) / 65535.0
    elif mode == "I":
        raw = np.asarray(im).astype(np.float64)
        # Pillow also uses mode "I" for 16-bit PNGs, so a value range within 0..65535 is treated as 16-bit;
        # anything wider is genuine 32-bit signed data.
        if raw.size and raw.min() >= 0 and raw.max() <= 65535:
            arr = (raw / 65535.0).astype(np.float32)
        else:
            arr = np.clip(raw / float(2**31 - 1), 0.0, 1.0).astype(np.float32)
    elif mode == "F":
        raw = np.nan_to_num(np.asarray(im).astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        lo, hi = (float(raw.min()), float(raw.max())) if raw.size else (0.0, 1.0)
        # Float data already in [0, 1] is kept as-is; any other range is stretched rather than clipped to mush.
        arr = raw if (lo >= 0.0 and hi <= 1.0) or hi <= lo else (raw - lo) / (hi - lo)
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        return _composite_on_white(np.asarray(im.convert("RGBA")))
    else:
        # RGB, L, 1, P without transparency, CMYK (Pillow undoes Adobe inversion), YCbCr, LAB, HSV ...
        arr = np.asarray(im.convert("RGB")).astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


# Large files (item: a 180-megapixel photo). Pillow refuses to open images over 2 x Image.MAX_IMAGE_PIXELS
# (about 179 MP by default) as possible decompression bombs. That limit is process-wide and guards every other
# node, so it is never raised here; a concept folder holds the user's own photos, so those past it are opened
# through the format's own plugin class (which reads only the header), and decoded at reduced size where the
# format allows it (JPEG's DCT scaling), or refused with their size where a full decode would cost too much.
LARGE_IMAGE_MEGAPIXELS = 24
"""Decoded images over this many megapixels are reduced (integer box filter) before conversion to float32, so a
huge photo costs its 8-bit decode, not 12 bytes a pixel plus a full-size bicubic resize."""
DECODE_LIMIT_MEGAPIXELS = 250
"""The most megapixels decoded at full size (PNG, TIFF, WebP, ...: formats without reduced-size decoding)."""
MIN_SHORT_SIDE = 2048
"""Reduction keeps the short side at least this long: the largest training resolution Load Concept Set offers."""

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")
# EXIF orientation -> the transposition that shows the image upright (the table ImageOps.exif_transpose uses).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def _megapixels(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.0f} MP)"


def reduction_factor(size: tuple[int, int]) -> int:
    """The integer factor a decoded image of `size` (w, h) is reduced by before float conversion: 1 up to
    LARGE_IMAGE_MEGAPIXELS; above, the smallest factor that brings it to that size, but never one that takes the
    short side below MIN_SHORT_SIDE (a long panorama keeps its height)."""
    w, h = size
    if w * h <= LARGE_IMAGE_MEGAPIXELS * 1_000_000:
        return 1
    wanted = math.ceil(math.sqrt(w * h / (LARGE_IMAGE_MEGAPIXELS * 1_000_000)))
    return max(1, min(wanted, min(w, h) // MIN_SHORT_SIDE))


def _open_past_pillow_limit(p: pathlib.Path, error: Exception) -> Image.Image:
    """Open a file Pillow's decompression-bomb check refused, without touching the process-wide limit: JPEG and
    PNG through their plugin classes (the check lives in Image.open, not in them); any other format is refused
    with its size and the fix."""
    with open(p, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_JPEG_MAGIC):
        return JpegImagePlugin.JpegImageFile(p)
    if head.startswith(_PNG_MAGIC):
        return PngImagePlugin.PngImageFile(p)
    found = _BOMB_PIXELS.search(str(error))
    pixels, limit = (int(found.group(1)) / 1e6, int(found.group(2)) / 1e6) if found else (None, None)
    size = f"has {pixels:.0f} MP, more than" if pixels else "is larger than"
    below = f"{limit:.0f} MP" if limit else "that"
    raise ConceptSetError(
        f"Image '{p.name}' ({p}) {size} the {below} Pillow opens in one image (a limit ComfyUI keeps for every "
        f"node). Downscale it below {below} (training uses at most {MIN_SHORT_SIDE} px), or save it as JPEG, which "
        "ConceptPrism loads downscaled at any size.")


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, ZeroDivisionError):
        return 1  # malformed EXIF should not make a perfectly decodable image unusable; keep raw orientation


def _reduce(im: Image.Image) -> Image.Image:
    """`im` (decoded) reduced by `reduction_factor`, in a mode whose reduction averages colours: palette indices
    and 1-bit or 16-bit modes are converted first (Pillow cannot reduce those, or would average indices)."""
    factor = reduction_factor(im.size)
    if factor <= 1:
        return im
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode.startswith("I;16"):
        im = im.convert("I")
    return im.reduce(factor)


def _decode(im: Image.Image, p: pathlib.Path) -> np.ndarray:
    """First frame of an opened image -> float32 [H, W, 3], reduced before float conversion when large."""
    im.seek(0)  # first frame of animated GIF/WebP/TIFF
    w, h = im.size
    jpeg = isinstance(im, JpegImagePlugin.JpegImageFile)
    factor = reduction_factor(im.size)
    if jpeg and factor > 1:
        # Decode at 1/2, 1/4 or 1/8 scale (the largest that stays at least this size): a 180 MP JPEG never
        # exists at full size in memory.
        im.draft(None, (math.ceil(w / factor), math.ceil(h / factor)))
    elif not jpeg and w * h > DECODE_LIMIT_MEGAPIXELS * 1_000_000:
        raise ConceptSetError(
            f"Image '{p.name}' ({p}) is {_megapixels((w, h))}: ConceptPrism decodes at most {DECODE_LIMIT_MEGAPIXELS} MP "
            f"of a {im.format or 'non-JPEG'} image at full size. Downscale it below {DECODE_LIMIT_MEGAPIXELS} MP (training "
            f"uses at most {MIN_SHORT_SIDE} px), or save it as JPEG, which ConceptPrism loads downscaled at any size.")
    im.load()  # force the full decode here so truncated files fail inside the caller's try
    orientation = _orientation(im)
    small = _reduce(im)
    if orientation in _ORIENTATION:
        small = small.transpose(_ORIENTATION[orientation])
    return _to_rgb_float(small)


def load_image_file(path: str | os.PathLike) -> torch.Tensor:
    """Decode one image file to float32 RGB [H, W, 3] in [0, 1] (ComfyUI IMAGE layout without batch dim).

    EXIF orientation is applied; transparency is composited onto white; animated files use the first frame.
    Images over LARGE_IMAGE_MEGAPIXELS come back reduced by an integer factor (see `reduction_factor`); JPEGs
    of any size load, other formats up to DECODE_LIMIT_MEGAPIXELS. Pillow's process-wide limit is not changed.
    Raises ConceptSetError naming the file if it cannot be decoded or is too large to decode.
    """
    p = pathlib.Path(path)
    try:
        try:
            opened = Image.open(p)
        except Image.DecompressionBombError as exc:
            opened = _open_past_pillow_limit(p, exc)
        with opened as im:
            arr = _decode(im, p)
    except ConceptSetError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ConceptSetError(
            f"Could not read image '{p.name}' ({p}): {exc}. Re-save it as PNG or JPEG, or remove it."
        ) from exc
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConceptSetError(f"Image '{p.name}' ({p}) is empty: re-save it as PNG or JPEG, or remove it.")
    return torch.from_numpy(np.ascontiguousarray(arr))


def split_caption_lines(text: str) -> list[str]:
    """One caption per non-empty line (lines stripped; blank lines dropped)."""
    return [line.strip() for line in text.lstrip("\ufeff").splitlines() if line.strip()]


def resize_center_crop(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """[H, W, 3] float -> [resolution, resolution, 3] float32 in [0, 1].

    Scales so the short side equals `resolution` (antialiased bicubic, so downscales area-average instead of
    aliasing), clamps bicubic overshoot back into [0, 1], then crops the center square. Input is not modified.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ConceptSetError(f"Expected an image of shape [H, W, 3], got {tuple(image.shape)}.")
    if int(resolution) != resolution or resolution < 1:
        raise ConceptSetError(f"Resolution must be a positive integer, got {resolution!r}.")
    res = int(resolution)
    h, w = int(image.shape[0]), int(image.shape[1])
    if h < 1 or w < 1:
        raise ConceptSetError(f"Cannot resize an empty image of shape {tuple(image.shape)}.")
    # permute/unsqueeze give views, but interpolate/clamp/clone below always allocate, so the input is untouched.
    x = image.detach().to(torch.float32).permute(2, 0, 1).unsqueeze(0)  # [1, 3, H, W]
    scale = res / min(h, w)
    # max() guarantees the short side is exactly `res` and the long side never rounds below it.
    new_h = res if h <= w else max(res, round(h * scale))
    new_w = res if w <= h else max(res, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp(0.0, 1.0)
    top, left = (new_h - res) // 2, (new_w - res) // 2
    out = x[0, :, top : top + res, left : left + res].permute(1, 2, 0)
    return out.contiguous().clone()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def check_caption_count(captions: list[str], n_images: int, source: str) -> None:
    """Raise ConceptSetError unless there is exactly one caption per image."""
    if len(captions) != n_images:
        raise ConceptSetError(
            f"{_plural(len(captions), 'caption')} from {source} for {_plural(n_images, 'image')}: "
            "give one line per image, in file-name order, or leave it empty."
        )


def check_image_count(n_images: int, source: str, minimum: int = 2) -> None:
    """Raise ConceptSetError if `source` supplied fewer than `minimum` images."""
    if n_images < minimum:
        raise ConceptSetError(
            f"Only {_plural(n_images, 'image')} in {source}: ConceptPrism needs at least {minimum} images "
            "that share the concept (4-6 work best). Add more reference images."
        )
