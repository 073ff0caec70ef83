"""TEST-ONLY ComfyUI nodes: PrismTestTinyCheckpointLoader, PrismTestTinyCLIPVisionLoader and the part loaders
(PrismTestTinyUNETLoader, ...DualCLIPLoader, ...VAELoader). Never part of the shipped pack.

Not a custom node folder of its own: at test time the harness (server.py, ``make_base_directory``)
writes a two-line custom node into the temporary ComfyUI base directory that loads this file and
registers ``NODE_CLASSES``, so only the test server ever sees the loader, and the pack's checkout
holds no ``NODE_CLASS_MAPPINGS`` for ComfyUI-Manager's source scanner to advertise
(tests/core/test_manager_scan.py). The loader returns the in-process tiny MODEL/CLIP/VAE of one
family from ``tests/host/tiny_models.py``, in the same output order as CheckpointLoaderSimple, so a
shipped workflow's checkpoint loader can be swapped for it without touching any link.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import folder_paths

_TINY_MODELS_PATH = Path(__file__).resolve().parents[1] / "tiny_models.py"
_MODELS: dict[str, object] = {}


def _tiny_models_module():
    """Import tests/host/tiny_models.py by path: tests/host is not on the server's sys.path."""
    name = "prism_test_tiny_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _TINY_MODELS_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up in sys.modules while executing it
        spec.loader.exec_module(module)
    return sys.modules[name]


class PrismTestTinyCheckpointLoader:
    """Stands in for CheckpointLoaderSimple: (MODEL, CLIP, VAE) of a tiny model of `family`."""

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"
    DESCRIPTION = "Test-only: tiny in-process models of one family (never shipped)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (list(FAMILIES), {"tooltip": "tiny model family"})}}

    def load(self, family: str):
        models = _tiny(family)
        return (models.model, models.clip, models.vae)


FAMILIES = ("sd15", "sd2v", "sdxl", "flux", "zimage", "klein4b")


def _tiny(family: str):
    # Built once per server: SDXL's real-width text encoders take seconds. The CLIP reads
    # `embedding:` words from the server's embeddings folder, as a real checkpoint's would.
    if family not in _MODELS:
        embeddings = folder_paths.get_folder_paths("embeddings")
        _MODELS[family] = _tiny_models_module().build(family, 0, embedding_directory=embeddings)
    return _MODELS[family]


class _TinyPart:
    """Stands in for a single-output loader (UNETLoader, DualCLIPLoader / CLIPLoader, VAELoader): one part of the tiny
    models of `family`, the same objects the checkpoint loader returns."""

    FUNCTION = "load"
    CATEGORY = "testing"
    DESCRIPTION = "Test-only: one part of the tiny in-process models of one family (never shipped)."
    PART = 0

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (list(FAMILIES), {"tooltip": "tiny model family"})}}

    def load(self, family: str):
        models = _tiny(family)
        return ((models.model, models.clip, models.vae)[self.PART],)


class PrismTestTinyUNETLoader(_TinyPart):
    RETURN_TYPES = ("MODEL",)
    PART = 0


class PrismTestTinyDualCLIPLoader(_TinyPart):
    RETURN_TYPES = ("CLIP",)
    PART = 1


class PrismTestTinyCLIPLoader(_TinyPart):
    RETURN_TYPES = ("CLIP",)
    PART = 1


class PrismTestTinyVAELoader(_TinyPart):
    RETURN_TYPES = ("VAE",)
    PART = 2


# The pooled text width of each tiny family's CLIP (tiny_models: clip_l 768, clip_h 1024, SDXL's clip_g 1280):
# a tiny CLIP vision tower projects to it, as a real one projects to its text half's width.
TEXT_WIDTHS = {"sd15": 768, "sd2v": 1024, "sdxl": 1280, "flux": 768, "zimage": 64, "klein4b": 64}
_VISION: dict[tuple[str, str], object] = {}


class PrismTestTinyCLIPVisionLoader:
    """Stands in for CLIPVisionLoader: a tiny CLIP vision tower (projecting to the family's text width)
    or a tiny DINOv2, as comfy.clip_vision.ClipVisionModel builds them."""

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"
    CATEGORY = "testing"
    DESCRIPTION = "Test-only: a tiny in-process CLIP vision or DINOv2 model (never shipped)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["clip", "dinov2"], {"tooltip": "vision model kind"}),
                             "family": (list(TEXT_WIDTHS), {"tooltip": "the tiny family whose text width a CLIP tower projects to"})}}

    def load(self, kind: str, family: str):
        if (kind, family) not in _VISION:
            _VISION[(kind, family)] = _tiny_models_module().clip_vision(kind, seed=3, projection_dim=TEXT_WIDTHS[family])
        return (_VISION[(kind, family)],)


# Read by the generated custom node (server.py) as its NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS.
NODE_CLASSES = {"PrismTestTinyCheckpointLoader": PrismTestTinyCheckpointLoader,
                "PrismTestTinyCLIPVisionLoader": PrismTestTinyCLIPVisionLoader,
                "PrismTestTinyUNETLoader": PrismTestTinyUNETLoader,
                "PrismTestTinyDualCLIPLoader": PrismTestTinyDualCLIPLoader,
                "PrismTestTinyCLIPLoader": PrismTestTinyCLIPLoader,
                "PrismTestTinyVAELoader": PrismTestTinyVAELoader}
DISPLAY_NAMES = {"PrismTestTinyCheckpointLoader": "Prism Test Tiny Checkpoint Loader (test only)",
                 "PrismTestTinyCLIPVisionLoader": "Prism Test Tiny CLIP Vision Loader (test only)",
                 "PrismTestTinyUNETLoader": "Prism Test Tiny Diffusion Model Loader (test only)",
                 "PrismTestTinyDualCLIPLoader": "Prism Test Tiny Dual CLIP Loader (test only)",
                 "PrismTestTinyCLIPLoader": "Prism Test Tiny CLIP Loader (test only)",
                 "PrismTestTinyVAELoader": "Prism Test Tiny VAE Loader (test only)"}
