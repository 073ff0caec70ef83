"""CONCEPT_SET: the reference images of one concept, square and ready for the VAE, with captions."""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Sequence

import torch

from . import concept_folder
from . import images as image_io
from .input_checks import check_pixels


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


def caption_lines(values: Sequence[str]) -> list[str]:
    """Captions from a STRING input as a list-taking node receives it (one item per upstream output).

    One string (a widget, or a node with a single output): one caption per non-empty line. Several strings
    (a captioning node's list output, one per image): one caption each, whitespace collapsed, an empty item
    meaning "no caption" for its image. Nothing but empty strings: no captions.
    """
    if len(values) <= 1:
        return image_io.split_caption_lines(values[0] if values else "")
    captions = [" ".join(value.split()) for value in values]
    return captions if any(captions) else []


def _pick_captions(sidecars: list[str | None], lines: list[str], n_images: int, source: str) -> list[str]:
    # Explicit captions (widget or input) win over sidecar files; they must cover every image.
    if lines:
        image_io.check_caption_count(lines, n_images, source)
        return lines
    return [c or "" for c in sidecars]


def from_folder(folder: str | os.PathLike, resolution: int, caption_lines: list[str], caption_source: str,
                typed: str | None = None) -> ConceptSet:
    """All images directly in `folder` (file-name order), caption files unless `caption_lines` are given.

    `typed` is the folder as the user wrote it, for the messages (default: `folder`).
    """
    typed = str(folder) if typed is None else typed
    contents = concept_folder.read_folder(folder, typed)
    if len(contents.images) < 2:
        raise image_io.ConceptSetError(concept_folder.too_few_images_message(
            pathlib.Path(folder).expanduser(), typed, len(contents.images)))
    pixels = torch.stack([image_io.resize_center_crop(image_io.load_image_file(f), resolution) for f in contents.images])
    sidecars = [concept_folder.read_caption(c) for c in contents.captions]
    captions = _pick_captions(sidecars, caption_lines, len(contents.images), caption_source)
    return ConceptSet(pixels, tuple(f.name for f in contents.images), tuple(captions), resolution, f"folder '{typed}'")


def _rgb(batch: torch.Tensor, item: int, source: str) -> torch.Tensor:
    if batch.ndim == 3:
        batch = batch.unsqueeze(0)  # one image without its batch dim
    if batch.ndim != 4:
        raise image_io.ConceptSetError(
            f"{source} item {item} must be an IMAGE batch [N, H, W, C], got shape {tuple(batch.shape)}.")
    return batch[..., :3].float() if batch.shape[-1] >= 3 else batch[..., :1].float().expand(-1, -1, -1, 3)


def from_batch(batch: torch.Tensor | Sequence[torch.Tensor], resolution: int, caption_lines: list[str],
               caption_source: str, source: str = "images input") -> ConceptSet:
    """Images from an IMAGE batch [N, H, W, C], or from a list of them (a list-output node gives one item per
    image, sizes may differ), each resized as folder images are. Inputs are copied, never modified; images
    with NaN or infinite pixels are refused, by index."""
    batches = [batch] if isinstance(batch, torch.Tensor) else list(batch)
    frames = [image for item, b in enumerate(batches) for image in _rgb(b, item, source)]
    image_io.check_image_count(len(frames), source)
    names = tuple(f"image_{i:02}" for i in range(len(frames)))
    check_pixels([image.cpu() for image in frames], names, source)
    pixels = torch.stack([image_io.resize_center_crop(image.cpu(), resolution) for image in frames])
    captions = _pick_captions([None] * len(frames), caption_lines, len(frames), caption_source)
    return ConceptSet(pixels, names, tuple(captions), resolution, source)
