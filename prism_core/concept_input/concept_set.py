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


# An image whose short side is under resolution / UPSCALE_WARNING is blown up more than this to the training
# size: it trains soft edges and JPEG blocks into the concept.
UPSCALE_WARNING = 2.0


@dataclass(frozen=True)
class ConceptSet:
    """images: [N, R, R, 3] float32 in [0, 1] on CPU; captions[i] is '' when image i has none.

    warnings: what about these inputs will train badly, one line each naming the image(s) and the fix (shown
    before training); skipped: the files of the folder that were left out (not images), for a console line."""

    images: torch.Tensor
    names: tuple[str, ...]
    captions: tuple[str, ...]
    resolution: int
    source: str
    warnings: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

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


def _label(names: Sequence[str], indices: Sequence[int]) -> str:
    total = len(names)
    return ", ".join(f"'{names[i]}' (image {i + 1} of {total})" for i in indices)


def duplicate_groups(pixels: torch.Tensor) -> list[list[int]]:
    """Groups (2 or more, by first index) of images that are the same picture: equal pixels at the training
    resolution after rounding to 8 bits. This is what training sees, so a byte-identical copy, one image given
    twice in a batch, or a lossless re-save (PNG of a JPEG, another name) all count; an edit, a re-compressed
    JPEG or another crop does not."""
    quantised = (pixels.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu()
    groups: dict[bytes, list[int]] = {}
    for i in range(quantised.shape[0]):
        groups.setdefault(quantised[i].numpy().tobytes(), []).append(i)
    return [group for group in groups.values() if len(group) > 1]


def input_warnings(pixels: torch.Tensor, names: Sequence[str], sizes: Sequence[tuple[int, int]], resolution: int,
                   source: str) -> list[str]:
    """What about a concept set will train badly, one warning per problem naming the image(s), what is wrong
    and what to do. pixels: [N, R, R, 3] as training sees them; sizes[i]: image i's (height, width) before
    resizing."""
    warnings = []
    for group in duplicate_groups(pixels):
        copies = len(group) - 1
        warnings.append(
            f"ConceptPrism: {_label(names, group)} from {source} are the same picture (identical pixels at "
            f"{resolution} px). Each image's residual token learns what the other images do not show, and a copy shows "
            f"nothing the original does not: it teaches nothing and counts that picture {len(group)} times. Remove "
            f"{'the copy' if copies == 1 else f'the {copies} copies'}, or replace it with another photo of the concept.")
    small = [i for i, (h, w) in enumerate(sizes) if min(h, w) * UPSCALE_WARNING < resolution]
    if small:
        details = ", ".join(f"'{names[i]}' is {sizes[i][1]}x{sizes[i][0]}" for i in small)
        warnings.append(
            f"ConceptPrism: {details} (from {source}): scaled up more than {UPSCALE_WARNING:g}x to {resolution} px, so "
            "training learns its blur and compression blocks as part of the concept. Use a larger original, or a lower "
            "resolution.")
    return warnings


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
    squares, sizes = [], []
    for f in contents.images:
        image = image_io.load_image_file(f)
        sizes.append((int(image.shape[0]), int(image.shape[1])))
        squares.append(image_io.resize_center_crop(image, resolution))
        del image  # one decoded original in memory at a time
    pixels = torch.stack(squares)
    sidecars = [concept_folder.read_caption(c) for c in contents.captions]
    captions = _pick_captions(sidecars, caption_lines, len(contents.images), caption_source)
    names = tuple(f.name for f in contents.images)
    source = f"folder '{typed}'"
    # Sizes of reduced huge photos are their reduced sizes: still far above any resolution, so never "small".
    warnings = input_warnings(pixels, names, sizes, resolution, source)
    return ConceptSet(pixels, names, tuple(captions), resolution, source, tuple(warnings), contents.skipped)


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
    empty = [i for i, image in enumerate(frames) if image.shape[0] == 0 or image.shape[1] == 0]
    if empty:
        raise image_io.ConceptSetError(
            f"{_label(names, empty)} from {source} {'is' if len(empty) == 1 else 'are'} empty (0 pixels high or wide): "
            "fix the node that made it, or leave it out.")
    check_pixels([image.cpu() for image in frames], names, source)
    pixels = torch.stack([image_io.resize_center_crop(image.cpu(), resolution) for image in frames])
    captions = _pick_captions([None] * len(frames), caption_lines, len(frames), caption_source)
    sizes = [(int(image.shape[0]), int(image.shape[1])) for image in frames]
    warnings = input_warnings(pixels, names, sizes, resolution, source)
    return ConceptSet(pixels, names, tuple(captions), resolution, source, tuple(warnings))
