"""The run inputs both training nodes share: memory and precision controls, the preset and FLUX.1's guidance
(optional, so graphs saved before them still run). Written once here; each node says what differs."""
from __future__ import annotations

from ..prism_core.training.config import PRESETS
from ..prism_core.host.diffusion import TRAINING_DTYPES

TRAINING_DTYPE_TIP = (
    "Precision the diffusion model computes in while training, whatever dtype the checkpoint was loaded in (ComfyUI "
    "loads SD checkpoints in float16 on most GPUs). auto (default): the first precision ComfyUI allows for this model "
    "that the GPU runs, in ComfyUI's order: SD float16 with dynamic loss scaling (measured: the float32 gradient to a "
    "cosine of 0.9999999, for about half the memory and time), FLUX.1 bfloat16 (float16 on cards without it), Z-Image and FLUX.2 Klein bfloat16 (else the next ComfyUI allows); float32 "
    "on the CPU. float32: exact, about 2x the memory and time on a GPU. bfloat16: half the activation memory, "
    "gradients slightly rounded. float16: loss-scaled (an overflowing step is skipped and the scale lowered). ")


def memory_inputs(shared_call: str, stays_float32: str, checkpointing_cost: str) -> dict:
    """max_batch, gradient_checkpointing and training_dtype. `shared_call`: what shares one model call;
    `stays_float32`: what the node trains, which stays float32 in every mode; `checkpointing_cost`: its time cost."""
    return {
        "max_batch": ("INT", {"default": 4, "min": 1, "max": 16, "tooltip": (
            f"Most {shared_call} sharing one model call. Lower it if you run out of memory; results do not change.")}),
        "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip": (
            f"Recompute activations in the backward pass: much less memory, {checkpointing_cost}. Results do not change.")}),
        "training_dtype": (list(TRAINING_DTYPES), {"default": "auto", "tooltip": TRAINING_DTYPE_TIP + stays_float32}),
    }


def family_inputs(flux_values: str, guidance_note: str) -> dict:
    """preset and guidance. `flux_values`: the reference FLUX.1 values the auto preset runs; `guidance_note`: where
    the stage feeds guidance and which value to use."""
    return {
        "preset": (list(PRESETS), {"default": "auto", "tooltip": (
            f"auto: SD models train with the values set here; FLUX.1, Z-Image and FLUX.2 Klein models train with the reference FLUX values "
            f"({flux_values}) in those widgets still at their SD default, so values you change are kept (the node's "
            "progress text shows the values that ran). widgets: every value exactly as set here (needed to run an SD "
            "default on FLUX).")}),
        "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": (
            f"FLUX.1-dev's (and a guidance-embedding FLUX.2 Klein's) guidance input while training{guidance_note}. Ignored "
            "by FLUX.1-schnell, Klein checkpoints without a guidance embedding, Z-Image and SD models.")}),
    }
