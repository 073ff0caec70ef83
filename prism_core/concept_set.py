"""CONCEPT_SET: the reference images of one concept, square and ready for the VAE, with captions."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import images as image_io


@dataclass(frozen=True)
class ConceptSet:
    """images: [N, R, R, 3] float32 in [0, 1] on CPU; captions[i] is '' when image i has none."""

    images: torch.Tensor
    names: tuple[str, ...]
    captions: tuple[str, ...]
    resolution: int
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]


def _pick_captions(sidecars: list[str | None], lines: list[str], n_images: int, source: str) -> list[str]:
    # Explicit captions (widget or input) win over sidecar files; they must cover every image.
    if lines:
        image_io.check_caption_count(lines, n_images, source)
        return lines
    return [c or "" for c in sidecars]


def from_folder(folder: str | os.PathLike, resolution: int, caption_lines: list[str], caption_source: str) -> ConceptSet:
    """All images directly in `folder` (file-name order), sidecar captions unless `caption_lines` are given."""
    files = image_io.list_image_files(folder)
    image_io.check_image_count(len(files), f"folder '{folder}'")
    pixels = torch.stack([image_io.resize_center_crop(image_io.load_image_file(f), resolution) for f in files])
    captions = _pick_captions([image_io.read_sidecar_caption(f) for f in files], caption_lines, len(files), caption_source)
    return ConceptSet(pixels, tuple(f.name for f in files), tuple(captions), resolution, str(folder))


def from_batch(batch: torch.Tensor, resolution: int, caption_lines: list[str], caption_source: str) -> ConceptSet:
    """An IMAGE batch [N, H, W, C] (copied, never modified), with captions from `caption_lines`."""
    if batch.ndim != 4:
        raise image_io.ConceptSetError(f"images input must be an IMAGE batch [N, H, W, C], got shape {tuple(batch.shape)}.")
    image_io.check_image_count(batch.shape[0], "images input")
    rgb = batch[..., :3].float() if batch.shape[-1] >= 3 else batch[..., :1].float().expand(-1, -1, -1, 3)
    pixels = torch.stack([image_io.resize_center_crop(image.cpu(), resolution) for image in rgb])
    captions = _pick_captions([None] * batch.shape[0], caption_lines, batch.shape[0], caption_source)
    names = tuple(f"image_{i:02}" for i in range(batch.shape[0]))
    return ConceptSet(pixels, names, tuple(captions), resolution, "images input")
