"""Precision: what float16 / bfloat16 compute does to Stage 1's exclusion term, against float32.

    COMFYUI_PATH=/path/to/ComfyUI python bench/run.py precision [--resolution 512]

On the tests' tiny SD1.5 model with its diffusion model and text encoder stored in float16 (as ComfyUI
loads SD1.5 on a GPU) and a float32 twin holding the same rounded values (tests/host/tiny_models.py):
- the cosine and norm ratio of the exclusion-only token gradient (d L_excl / d residual vectors, null
  predictions constant) against float32 compute, for plain float16, loss-scaled float16 and bfloat16;
- the first micro-step's exclusion loss per compute dtype, against the float32 twin's.
Also the CPU cost of float32 compute on float16-stored weights against float32-stored ones (the per-
forward weight casts), as a ratio of one Stage 1 micro-step's CPU time, interleaved over --rounds.
A measurement, not a test: these numbers chose training_dtype's default (README, "Time and memory").
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from . import models

HELP = "Precision: float16/bfloat16 compute against float32 on the exclusion term; float32 compute on float16 weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=int, default=512, help="image size (512: SD's 4x64x64 latents)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds for the CPU cost ratio")
    parser.add_argument("--json", help="write the results here")


def main(args: argparse.Namespace) -> int:
    models.import_host()
    sys.path.append(str(Path(__file__).resolve().parents[1] / "tests" / "host"))
    import tiny_models
    from ..prism_core.training.stage1 import TokenParameters, micro_step_losses, residual_prompt
    from ..prism_core.training.schedule import MicroStep
    from ..prism_core.host import text
    from ..prism_core.host.stage1_backend import ComfyStage1Backend, encode_latents

    stored = tiny_models.build("sd15", 7, unet_dtype=torch.float16, clip_dtype=torch.float16)
    twin = tiny_models.build("sd15", 7, unet_dtype=torch.float32, clip_dtype=torch.float32, rounded_like=torch.float16)
    widths = text.encoder_widths(stored.clip)
    g = torch.Generator().manual_seed(3)
    target = {k: torch.randn(1, w, generator=g) * 0.02 for k, w in widths.items()}
    residuals = {k: torch.randn(3, 4, w, generator=g) * 0.02 for k, w in widths.items()}
    lengths = text.slot_lengths_for(target, residuals)
    images = torch.rand(3, args.resolution, args.resolution, 3, generator=torch.Generator().manual_seed(4))

    def exclusion_gradient(bench, dtype: str, loss_scale: float) -> torch.Tensor:
        with torch.inference_mode(False):
            latents = encode_latents(bench.model, bench.vae, images)
            with ComfyStage1Backend(bench.model, bench.clip, lengths, args.resolution, max_batch=2, training_dtype=dtype) as b:
                params = TokenParameters.from_initial(target, residuals)
                cond = {k: torch.cat([v] * 2) for k, v in b.encode(residual_prompt(0), params.slots(0)).items()}
                noise = torch.randn((2, *latents.shape[1:]), generator=torch.Generator().manual_seed(11))
                with torch.no_grad():
                    null = b.predict(latents[[1, 2]], [300, 700], noise, {k: torch.cat([v] * 2) for k, v in b.encode_null().items()})
                loss = (b.predict(latents[[1, 2]], [300, 700], noise, cond) - null).pow(2).mean()
                (grad,) = torch.autograd.grad(loss * loss_scale, [next(iter(params.residuals.values()))])
        return (grad[0] / loss_scale).flatten().double()

    def first_exclusion(bench, dtype: str, resolution: int = 64) -> tuple[float, float]:
        small = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=resolution).permute(0, 2, 3, 1)
        step = MicroStep(image=1, anchors=(2, 0), timesteps=(10, 500, 990), noise_seed=1234)
        with torch.inference_mode(False):
            latents = encode_latents(bench.model, bench.vae, small)
            with ComfyStage1Backend(bench.model, bench.clip, lengths, resolution, max_batch=4, training_dtype=dtype) as b:
                params = TokenParameters.from_initial(target, residuals)
                start = time.process_time()
                rec, excl = micro_step_losses(b, latents, params, step, b.encode_null(), 0.05, 1.0)
                return excl, time.process_time() - start

    reference = exclusion_gradient(stored, "float32", 1.0)
    results = {"resolution": args.resolution, "gradient_vs_float32": {}, "first_exclusion_loss": {}}
    for label, dtype, scale in (("float16 plain", "float16", 1.0), ("float16 loss-scaled", "float16", 2.0 ** 16),
                                ("bfloat16", "bfloat16", 1.0)):
        grad = exclusion_gradient(stored, dtype, scale)
        results["gradient_vs_float32"][label] = {
            "cosine": float(torch.nn.functional.cosine_similarity(grad, reference, dim=0)),
            "norm_ratio": float(grad.norm() / reference.norm()), "zero_entries": int((grad == 0).sum()), "n": grad.numel()}
        print(label, results["gradient_vs_float32"][label], flush=True)
    for label, bench, dtype in (("float32 twin", twin, "float32"), ("float32 on float16 weights", stored, "float32"),
                                ("float16", stored, "float16"), ("bfloat16", stored, "bfloat16")):
        results["first_exclusion_loss"][label] = first_exclusion(bench, dtype)[0]
    print("first exclusion loss (64 px):", results["first_exclusion_loss"], flush=True)
    ratios = []
    for _ in range(args.rounds):  # interleaved: same conditions for both in each round
        on_stored = first_exclusion(stored, "float32")[1]
        on_twin = first_exclusion(twin, "float32")[1]
        ratios.append(on_stored / on_twin)
    results["cpu_time_ratio_float32_compute_float16_weights_vs_float32_weights"] = {
        "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}
    print("CPU time ratio, float32 compute on float16-stored vs float32-stored weights:",
          results["cpu_time_ratio_float32_compute_float16_weights_vs_float32_weights"], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0
