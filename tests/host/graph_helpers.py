"""Running graphs through the host's executor with test-only nodes (a tiny-model loader, a capture sink)."""
from __future__ import annotations

import asyncio
import copy
import inspect
import uuid

import numpy as np
import torch
from PIL import Image

import execution
import nodes as host_nodes

from host_setup import fake_server
from comfyui_conceptprism.nodes import NODE_CLASS_MAPPINGS

CAPTURED = []
CAPTURED_BY = {}  # capture node id -> what it captured last


def write_images(folder, n, size=80):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (size + 16 * i, size), (200, 30 * i, 40)).save(folder / f"{i:02}.png")
    return folder


def register_test_nodes(tiny):
    class PrismTestTinyModels:  # loader nodes cannot be overridden by a pack: a test-only one under a new name
        RETURN_TYPES = ("MODEL", "CLIP", "VAE")
        FUNCTION = "load"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"family": (["sd15", "sd2v", "sdxl"],)}}

        def load(self, family):
            models = tiny(family)
            return (models.model, models.clip, models.vae)

    class PrismTestCapture:
        RETURN_TYPES = ()
        FUNCTION = "capture"
        OUTPUT_NODE = True
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}, "optional": {"latent": ("LATENT",), "image": ("IMAGE",), "conditioning": ("CONDITIONING",),
                                                 "concept_set": ("CONCEPT_SET",), "tokens": ("PRISM_TOKENS",)},
                    "hidden": {"unique_id": "UNIQUE_ID"}}

        def capture(self, latent=None, image=None, conditioning=None, concept_set=None, tokens=None, unique_id=None):
            if latent is not None:
                CAPTURED.append(latent["samples"].clone())
            elif image is not None:
                CAPTURED.append(image.clone())
            else:
                CAPTURED.append(next(x for x in (conditioning, concept_set, tokens) if x is not None))
            CAPTURED_BY[str(unique_id)] = CAPTURED[-1]
            return {}

    # Keyword arguments, not `MAPPINGS["id"] = ...`: no test-only id reads as one of the pack's to
    # ComfyUI-Manager's source scanner (tests/core/test_manager_scan.py).
    host_nodes.NODE_CLASS_MAPPINGS.update(NODE_CLASS_MAPPINGS, PrismTestTinyModels=PrismTestTinyModels,
                                          PrismTestCapture=PrismTestCapture)
    host_nodes.NODE_CLASS_MAPPINGS.update(list_and_fault_nodes())


def list_pixels(count: int, seed: int = 0) -> list[np.ndarray]:
    """uint8 [H, W, 3] images of different sizes, as a list-based loader would yield them (PNG-exact)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(48 + 8 * i, 80 - 8 * i, 3), dtype=np.uint8) for i in range(count)]


def list_and_fault_nodes() -> dict[str, type]:
    """Test-only stand-ins for what users wire in: list outputs (captioners, list image loaders), NaN pixels, a VAE
    that overflows on one image (as a float16 VAE does), random tokens, and prompt text around a word."""
    class PrismTestImageList:
        RETURN_TYPES = ("IMAGE",)
        OUTPUT_IS_LIST = (True,)
        FUNCTION = "make"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"count": ("INT", {"default": 3}), "nan_index": ("INT", {"default": -1, "min": -1})}}

        def make(self, count, nan_index):
            items = [torch.from_numpy(a).float()[None] / 255 for a in list_pixels(count)]
            if nan_index >= 0:
                items[nan_index][0, 3, 5, 1] = float("nan")
            return (items,)

    class PrismTestStringList:
        RETURN_TYPES = ("STRING",)
        OUTPUT_IS_LIST = (True,)
        FUNCTION = "split"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"default": ""})}}

        def split(self, text):
            return (text.split("|"),)

    class PrismTestOverflowVAE:
        RETURN_TYPES = ("VAE",)
        FUNCTION = "wrap"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"vae": ("VAE",), "index": ("INT", {"default": 1})}}

        def wrap(self, vae, index):
            return (overflowing_vae(vae, index),)

    class PrismTestTokens:
        RETURN_TYPES = ("PRISM_TOKENS",)
        FUNCTION = "make"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"clip": ("CLIP",), "seed": ("INT", {"default": 0})}}

        def make(self, clip, seed):
            from comfyui_conceptprism.prism_core.host import text
            from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens
            g = torch.Generator().manual_seed(seed)
            widths = text.encoder_widths(clip)
            return (PrismTokens({k: torch.randn(2, w, generator=g) * 0.05 for k, w in widths.items()},
                                {k: torch.randn(2, 3, w, generator=g) * 0.05 for k, w in widths.items()},
                                ["", ""], ["a", "b"], {}, LossHistory()),)

    class PrismTestFormat:
        RETURN_TYPES = ("STRING",)
        FUNCTION = "format"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"word": ("STRING", {"forceInput": True}), "template": ("STRING", {"default": "{}"})}}

        def format(self, word, template):
            return (template.replace("{}", word),)

    return {cls.__name__: cls for cls in (PrismTestImageList, PrismTestStringList, PrismTestOverflowVAE, PrismTestTokens,
                                          PrismTestFormat)}


def overflowing_vae(vae, index):
    """A copy of `vae` whose encode returns +inf latents for batch row `index` (what an fp16 VAE overflow gives)."""
    broken = copy.copy(vae)
    original = vae.encode

    def encode(pixels):
        latents = original(pixels).clone()
        latents[index] = float("inf")
        return latents
    broken.encode = encode
    return broken


def new_executor(server):
    """A PromptExecutor with the classic cache (each test's graph runs once). Decided by the constructor's
    signature, not a version: newer hosts (v0.8.0 on) take cache settings as `cache_args`, and some of them
    read `cache_args["ram"]` (a number of GB) after every node even with the classic cache; older ones
    (v0.3.64) take `cache_size`. The numbers are given here, not read from `comfy.cli_args.args`, whose
    `cache_ram` changed from a number to a list in v0.23.0 and is only used by main.py's RAM-pressure cache."""
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(server, cache_args={"lru": 0, "ram": 0.0, "ram_inactive": 0.0})
    return execution.PromptExecutor(server)


def run_graph(graph):
    server = fake_server()
    executor = new_executor(server)
    valid = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), graph, None))
    assert valid[0], valid
    executor.execute(graph, str(uuid.uuid4()), {"client_id": server.client_id}, valid[2])
    return executor, server


def stage1_graph(folder, steps):
    """Tiny loader -> Load Concept Set -> Optimize Prism Tokens -> Prism Conditioning -> KSampler -> capture (node "8")."""
    return {
        "1": {"class_type": "PrismTestTinyModels", "inputs": {"family": "sd15"}},
        "2": {"class_type": "ConceptPrismLoadConceptSet", "inputs": {"folder": str(folder), "resolution": 64, "captions": ""}},
        "3": {"class_type": "ConceptPrismOptimizePrismTokens", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0], "target_length": 1,
            "residual_length": 4, "beta": 0.05, "exclusion_set_size": 3, "learning_rate": 4e-4, "steps": steps,
            "gradient_accumulation": 1, "caption_init": True, "seed": 0}},
        "4": {"class_type": "ConceptPrismPrismConditioning", "inputs": {
            "clip": ["1", 1], "tokens": ["3", 0], "text": "a photo of [V] on the beach", "placeholder": "[V]",
            "mode": "target", "residual_index": 0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "seed": 0,
            "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "PrismTestCapture", "inputs": {"latent": ["7", 0]}},
    }
