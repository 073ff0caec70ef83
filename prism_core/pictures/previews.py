"""Training previews without the host: which steps render, the prompts, and the step label on each image.

A preview renders the user's prompts with the current tokens / adapters every N optimizer steps
(prism_core.host.previews does the rendering with the host's sampler). Here: the schedule (steps N,
2N, ... counted from the start of training, absolute step numbers when a run resumes), the prompt
list read from the multi-line input, and "step N" drawn onto an IMAGE without touching any pixel
outside the label's box.
"""
from __future__ import annotations

import torch
from PIL import Image, ImageDraw, ImageFont

DEFAULT_PROMPTS = "a photo of [V]"
PLACEHOLDER = "[V]"


def preview_due(step: int, every: int) -> bool:
    """True when a preview renders after optimizer step `step` (1-based, absolute): every N-th step,
    never when every is 0 (off)."""
    return every > 0 and step > 0 and step % every == 0


def preview_schedule(first_step: int, last_step: int, every: int) -> list[int]:
    """The steps in first_step..last_step (inclusive) after which a preview renders."""
    return [s for s in range(max(first_step, 1), last_step + 1) if preview_due(s, every)]


def preview_prompts(text: str, placeholder: str = PLACEHOLDER, node: str = "the training node") -> list[str]:
    """One prompt per non-empty line of `text` (the preview_prompts input), each holding `placeholder`.

    Raises ValueError naming the input and the line when there is no prompt or a line has no placeholder.
    """
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{node}: preview_prompts is empty; write one prompt per line with {placeholder} where the "
                         f"concept goes (e.g. '{DEFAULT_PROMPTS}'), or set preview_every to 0.")
    for number, prompt in enumerate(prompts, 1):
        if placeholder not in prompt:
            raise ValueError(f"{node}: preview_prompts line {number} '{prompt}' has no {placeholder}; write {placeholder} "
                             f"where the concept goes, e.g. 'a photo of {placeholder} on the beach'.")
    return prompts


def _font(height: int) -> ImageFont.ImageFont:
    size = max(10, height // 24)  # readable on 512-1024 px renders, still fits a 64 px test image
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def label_box(text: str, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel box the label of `text` covers on an image of that size: the
    text's box in the default font plus 2 px padding, at the top-left corner, clipped to the image."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=_font(height))
    return 0, 0, min(width, right + 4), min(height, bottom + 4)


def stamp_text(image: torch.Tensor, text: str) -> torch.Tensor:
    """A copy of `image` ([H, W, 3] float in 0..1, an IMAGE row) with `text` in white on black at its
    top-left corner. Pixels outside `label_box` keep their exact values."""
    height, width = image.shape[0], image.shape[1]
    left, top, right, bottom = label_box(text, height, width)
    patch = Image.new("RGB", (right - left, bottom - top), (0, 0, 0))
    ImageDraw.Draw(patch).text((2, 2), text, fill=(255, 255, 255), font=_font(height))
    pixels = torch.frombuffer(bytearray(patch.tobytes()), dtype=torch.uint8).view(bottom - top, right - left, 3)
    out = image.clone()
    out[top:bottom, left:right, :3] = pixels.to(out.dtype).to(out.device) / 255
    return out


def stamp_step(image: torch.Tensor, step: int) -> torch.Tensor:
    """`image` ([H, W, 3]) with "step N" drawn on it (see stamp_text)."""
    return stamp_text(image, f"step {step}")


def placeholder_image(message: str, width: int = 256, height: int = 64) -> torch.Tensor:
    """IMAGE [1, height, width, 3]: `message` on dark grey, what the previews output holds when no
    preview was rendered (preview_every 0, or fewer steps than preview_every)."""
    canvas = Image.new("RGB", (width, height), (40, 40, 40))
    ImageDraw.Draw(canvas).text((6, height // 2 - 6), message, fill=(220, 220, 220), font=_font(240))
    return torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(height, width, 3).float()[None] / 255
