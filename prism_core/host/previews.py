"""Previews during training, rendered with the host's own nodes exactly as a stock graph would.

Every N optimizer steps (prism_core.pictures.previews.preview_due) each preview prompt is rendered with the
current concept: Stage 1 conditions the incoming MODEL with Prism Conditioning's encoding of the
current token bank (mode "target"); Stage 2 patches the current adapters into the incoming MODEL as
LoraLoader patches a saved file (``comfy.sd.load_lora_for_models``, model strength 1). Rendering is
EmptyLatentImage -> KSampler (the node's own function: same noise from the seed, sampler,
scheduler, cfg) -> VAEDecode, with CLIP Text Encode of "" as the negative prompt. So a preview at step
k is the image a graph of those stock nodes draws from the step-k tokens or checkpoint.

A preview leaves training as it was: it runs under ``torch.random.fork_rng`` (``prepare_noise`` seeds
the global generator) and ``torch.inference_mode`` (as the executor runs nodes), and afterwards the
training clones are loaded again (the host unloads a model's clones when it loads the preview model,
which takes their weight wrappers off the shared modules). Cancel is checked before every render and
after every sampling, and by the host's sampler progress hook on each sampler step when a server runs.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

import comfy.model_management
import comfy.utils
import node_helpers

from ..pictures.previews import PLACEHOLDER, placeholder_image, preview_due, stamp_step
from ..formats.token_bank import PrismTokens
from .runtime import show_text
from .stock_nodes import placeholder_conditioning, render
from .internals.out_of_place import sampling_as_the_host
from .internals.training_guard import load_as_executor

log = logging.getLogger("ConceptPrism")

PROGRESS_PREVIEW_SIZE = 512  # longest side of the image shown on the node (the host's default preview size)


@dataclass(frozen=True)
class PreviewSettings:
    """What the preview inputs ask for. every 0 = off."""

    every: int = 0
    prompts: tuple[str, ...] = ("a photo of [V]",)
    steps: int = 12
    sampler_name: str = "euler"
    scheduler: str = "normal"
    cfg: float = 7.0
    seed: int = 0
    placeholder: str = PLACEHOLDER
    guidance: float | None = None  # FLUX.1: set on the prompt's conditioning as FluxGuidance does; None: none set


@dataclass(frozen=True)
class Preview:
    step: int
    prompt: str
    image: torch.Tensor  # IMAGE [1, H, W, 3] as VAEDecode returned it, without the label


def _rng_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@contextlib.contextmanager
def isolated(reload: Sequence[Any]) -> Iterator[None]:
    """Run a preview as a separate graph would: global random state forked, inference mode; on success the
    training patchers `reload` are loaded again as training loaded them (a Cancel ends training anyway)."""
    with torch.random.fork_rng(devices=_rng_devices()):
        with torch.inference_mode(), sampling_as_the_host():
            yield
    if reload:
        load_as_executor(reload)


class TrainingPreviews:
    """Renders, keeps and shows the previews of one training run."""

    def __init__(self, settings: PreviewSettings, clip: Any, vae: Any, size: int, total_steps: int,
                 node_id: str | None = None, label: str = "Training") -> None:
        self.settings, self.clip, self.vae, self.size = settings, clip, vae, size
        self.total_steps, self.node_id, self.label = total_steps, node_id, label
        self.previews: list[Preview] = []
        self._negative = None
        self._bar = comfy.utils.ProgressBar(total_steps, node_id=node_id)

    def due(self, step: int) -> bool:
        return preview_due(step, self.settings.every)

    def render_step(self, step: int, model: Callable[[], Any], bank: Callable[[], PrismTokens],
                    reload: Sequence[Any] = ()) -> None:
        """Render every prompt after optimizer step `step`: model() gives the MODEL to sample with, bank() the
        token bank whose target token stands at the placeholder. Both are called inside the isolation."""
        settings = self.settings
        with isolated(reload):
            if self._negative is None:
                self._negative = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(""))  # CLIP Text Encode ""
            sampling_model, tokens = model(), bank()
            for number, prompt in enumerate(settings.prompts, 1):
                comfy.model_management.throw_exception_if_processing_interrupted()
                show_text(f"{self.label} step {step}/{self.total_steps}: preview {number}/{len(settings.prompts)} "
                          f"'{prompt}' ({settings.steps} sampler steps)", self.node_id)
                positive = placeholder_conditioning(self.clip, tokens, prompt, settings.placeholder, where=None)
                if settings.guidance is not None:
                    positive = node_helpers.conditioning_set_values(positive, {"guidance": settings.guidance})
                image = render(sampling_model, self.vae, positive, self._negative, self.size, self.size, settings.seed,
                               settings.steps, settings.cfg, settings.sampler_name, settings.scheduler)
                self.previews.append(Preview(step, prompt, image.detach().float().cpu().clone()))
                self._show(self.labelled(self.previews[-1]))
        log.info("ConceptPrism %s: preview at step %d (%d prompt(s))", self.label, step, len(settings.prompts))

    @staticmethod
    def labelled(preview: Preview) -> torch.Tensor:
        """IMAGE [1, H, W, 3] with "step N" drawn on it."""
        return stamp_step(preview.image[0], preview.step)[None]

    def _show(self, image: torch.Tensor) -> None:
        """The newest preview on the node, through the host's progress preview (the training bar keeps its value)."""
        pixels = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        self._bar.update_absolute(self.previews[-1].step, self.total_steps,
                                  ("JPEG", Image.fromarray(np.ascontiguousarray(pixels)), PROGRESS_PREVIEW_SIZE))

    def output(self) -> torch.Tensor:
        """IMAGE batch of every preview, step-major then prompt order, each labelled; when none was rendered a
        1-image placeholder saying why."""
        if not self.previews:
            return placeholder_image(nothing_rendered(self.settings.every, self.total_steps))
        return torch.cat([self.labelled(p) for p in self.previews])


def nothing_rendered(every: int, total_steps: int) -> str:
    return "previews off (preview_every 0)" if every <= 0 else f"no preview: {total_steps} steps < preview_every {every}"


def no_previews(every: int = 0, total_steps: int = 0) -> torch.Tensor:
    """The previews output of a run without previews: a 1-image placeholder."""
    return placeholder_image(nothing_rendered(every, total_steps))
