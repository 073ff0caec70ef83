"""Running graphs through the host's executor with test-only nodes (a tiny-model loader, a capture sink)."""
from __future__ import annotations

import asyncio
import inspect
import uuid

from PIL import Image

import execution
import nodes as host_nodes

from host_setup import fake_server
from comfyui_conceptprism.nodes import NODE_CLASS_MAPPINGS

CAPTURED = []


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
            return {"required": {}, "optional": {"latent": ("LATENT",), "image": ("IMAGE",)}}

        def capture(self, latent=None, image=None):
            CAPTURED.append(latent["samples"].clone() if latent is not None else image.clone())
            return {}

    # Keyword arguments, not `MAPPINGS["id"] = ...`: no test-only id reads as one of the pack's to
    # ComfyUI-Manager's source scanner (tests/core/test_manager_scan.py).
    host_nodes.NODE_CLASS_MAPPINGS.update(NODE_CLASS_MAPPINGS, PrismTestTinyModels=PrismTestTinyModels,
                                          PrismTestCapture=PrismTestCapture)


def new_executor(server):
    """A PromptExecutor as the host's main.py builds one. Decided by the constructor's signature, not a
    version: newer hosts (v0.8.0) take cache settings as `cache_args` and read them on every execute
    (`cache_args["ram"]`), older ones (v0.3.64) take `cache_size`; both defaults mean "classic cache"."""
    from comfy.cli_args import args
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(server, cache_args={"lru": args.cache_lru, "ram": args.cache_ram})
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
