"""Concept-set image loading: decoding, caption lines and square resizing (folders: concept_folder.py).

Everything here returns ComfyUI's IMAGE layout without the batch dim: float32 [H, W, 3] in [0, 1].
Pure module: standard library, numpy, torch and Pillow only (no comfy imports).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError


class ConceptSetError(ValueError):
    """Bad concept-set input; the message names the offending file/input and says what to change."""


IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)


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


def load_image_file(path: str | os.PathLike) -> torch.Tensor:
    """Decode one image file to float32 RGB [H, W, 3] in [0, 1] (ComfyUI IMAGE layout without batch dim).

    EXIF orientation is applied; transparency is composited onto white; animated files use the first frame.
    Raises ConceptSetError naming the file if it cannot be decoded.
    """
    p = pathlib.Path(path)
    try:
        with Image.open(p) as im:
            im.seek(0)  # first frame of animated GIF/WebP/TIFF
            im.load()  # force the full decode here so truncated files fail inside this try
            try:
                oriented = ImageOps.exif_transpose(im)
            except (OSError, ValueError, KeyError, TypeError, SyntaxError, ZeroDivisionError):
                # Malformed EXIF should not make a perfectly decodable image unusable; keep raw orientation.
                oriented = im.copy()
            arr = _to_rgb_float(oriented if oriented is not None else im)
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
