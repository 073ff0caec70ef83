"""GPU: seconds per optimizer step and peak VRAM of both stages at 512 px, per training_dtype.

    COMFYUI_PATH=/path/to/ComfyUI python bench/run.py gpu [--steps 6] [--dtypes float32,bfloat16,float16]
    COMFYUI_PATH=/path/to/ComfyUI python bench/run.py gpu --family zimage [--fp8] --max-batch 1 --checkpointing --dtypes auto

Ready to run on a CUDA machine (none has been available to this project so far): an SD1.5-shaped UNet
(the real 320-channel layout, ~860 M parameters, random weights stored in float16 as ComfyUI loads
SD1.5 on a GPU), ComfyUI's 12-layer clip_l at width 768 (the real shape and vocabulary), a small VAE
(only encodes the concept set). For each training_dtype it runs the pack's own Stage 1 (`learn_tokens`,
4 images, the paper's defaults: residual length 8, |J| 3, accumulation 4) and Stage 2
(`train_concept_lora`, rank 4, accumulation 4), reports the median seconds per step after the first
(torch.cuda.synchronize around each step) and torch.cuda.max_memory_allocated over the run, and
writes JSON with --json. `--cpu-smoke` runs a tiny configuration on the CPU to check the script itself.

--family zimage: Z-Image at its real shape (the transformer as the host detects a Z-Image checkpoint, ~6 B
parameters, stored in bfloat16, or fp8 with --fp8 as Load Diffusion Model's fp8_e4m3fn; Qwen3-4B in bfloat16),
random weights drawn on the GPU, both stages with the pack's auto preset (residual length 1, beta 0.5, lr 1e-4,
no accumulation): the numbers the README's 16 GB / 24 GB arithmetic waits for.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

from . import models

HELP = "GPU: seconds per step and peak VRAM of both stages at 512 px in float32 / bfloat16 / float16"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16", help="training_dtype values to run")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    parser.add_argument("--family", choices=("sd15", "zimage"), default="sd15", help="the model family to measure")
    parser.add_argument("--fp8", action="store_true", help="zimage: the transformer stored in float8_e4m3fn")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU: checks the script, measures nothing")


def _concept(n: int, resolution: int):
    from ..prism_core.concept_input.concept_set import ConceptSet
    images = torch.rand(n, resolution, resolution, 3, generator=torch.Generator().manual_seed(0))
    captions = ("a red mug on a wooden desk next to a laptop", "a red mug on a kitchen shelf with plates",
                "a red mug held in a hand outdoors", "a red mug on a windowsill in the sun")[:n]
    return ConceptSet(images, tuple(f"{i}.png" for i in range(n)), captions, resolution, "bench")


def _timed_steps(synchronize: Callable[[], None]) -> tuple[list[float], Callable[..., None]]:
    times, last = [], [None]

    def on_step(step, steps, *losses):
        synchronize()
        now = time.perf_counter()
        if last[0] is not None:
            times.append(now - last[0])
        last[0] = now
    return times, on_step


def main(args: argparse.Namespace) -> int:
    cuda = not args.cpu_smoke
    models.import_host(cpu=not cuda)
    import comfy.model_management as mm
    from ..prism_core.training.config import LoraConfig, TokenConfig, family_preset
    from ..prism_core.host.runtime import RunOptions
    from ..prism_core.host.stage1 import learn_tokens
    from ..prism_core.host.family import describe
    from ..prism_core.host.stage2 import train_concept_lora
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench gpu: no CUDA device here. Run it on a GPU machine (or --cpu-smoke to check the script).")
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    resolution = args.resolution if cuda else 64
    if args.family == "zimage":
        bench = models.build_zimage(small=not cuda, unet_dtype=torch.float8_e4m3fn if args.fp8 else torch.bfloat16)
    elif cuda:
        bench = models.build(full_sd15=True, clip_layers=12, unet_dtype=torch.float16)
    else:
        bench = models.build(channels=32, clip_layers=1, unet_dtype=torch.float16)
    family = describe(bench.model, bench.clip)
    concept = _concept(4, resolution)
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu (smoke)", "resolution": resolution,
               "family": args.family, "unet_dtype": bench.config["unet_dtype"], "max_batch": args.max_batch,
               "checkpointing": args.checkpointing, "runs": []}
    for dtype in args.dtypes.split(","):
        options = RunOptions(max_batch=args.max_batch, training_dtype=dtype, gradient_checkpointing=args.checkpointing)
        for stage in ("stage1", "stage2"):
            mm.soft_empty_cache()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times, on_step = _timed_steps(synchronize)
            with torch.inference_mode():
                if stage == "stage1":
                    config = family_preset(TokenConfig(steps=args.steps), family.presets, "auto")
                    tokens = learn_tokens(bench.model, bench.clip, bench.vae, concept, config, options, on_step=on_step,
                                          family=family)
                else:
                    config = family_preset(LoraConfig(steps=args.steps), family.presets, "auto")
                    train_concept_lora(bench.model, bench.clip, bench.vae, concept, tokens, config, family, options,
                                       on_step=on_step)
            run = {"stage": stage, "training_dtype": dtype, "seconds_per_step": statistics.median(times) if times else None,
                   "peak_vram_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
