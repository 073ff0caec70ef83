"""Previews while training (issue 17): the cost of one preview and its share of a run.

Runs both stages through the pack's own host functions (learn_tokens, train_concept_lora) on the bench's
SD1.5-layout models (bench/models.py: UNet with --channels model channels at 32x32 latents, i.e. 256 px
images, clip_l at width 768, a small VAE), with previews every --every steps, and clocks (process CPU
time, measure.clock) every optimizer step and every preview (TrainingPreviews.render_step: encoding the
prompts, KSampler's sampling, VAE decode). The share reported is that of a run of --run-steps steps with
a preview every --run-every steps:

    share = previews * preview_s / (run_steps * step_s + previews * preview_s)

with the median step and preview times measured here. Preview settings are the nodes' defaults (12 euler
steps, cfg 7, one prompt) unless given. Caveat: the bench VAE is small (32 channels), so the VAE decode,
which on SD's VAE costs about as much as several UNet steps at 512 px, is under-represented.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

from . import measure, models

HELP = "previews: the cost of one preview and its share of a 200-step run at N = 40, both stages"


@dataclass(frozen=True)
class Settings:
    images: int = 4
    resolution: int = 256
    channels: int = 64
    clip_layers: int = 1
    accumulation: int = 4
    steps: int = 6
    every: int = 3
    preview_steps: int = 12
    prompts: int = 1
    sampler: str = "euler"
    cfg: float = 7.0
    run_steps: int = 200
    run_every: int = 40
    seed: int = 0
    threads: int = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(Settings):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    parser.add_argument("--stages", default="1,2", help="which stages to run, comma separated")
    parser.add_argument("--json", default="", help="also write the results as JSON to this path")


class Clocked:
    """Clock per optimizer step (between on_step calls, previews taken out) and per preview."""

    def __init__(self) -> None:
        self.last = measure.clock()
        self.steps: list[float] = []
        self.previews: list[float] = []
        self._in_preview = 0.0

    def on_step(self, step: int, steps: int, *losses: float) -> None:
        now = measure.clock()
        self.steps.append(now - self.last - self._in_preview)
        self.last, self._in_preview = now, 0.0

    def wrap(self, previews) -> None:
        render = previews.render_step

        def timed(*args, **kwargs):
            start = measure.clock()
            try:
                return render(*args, **kwargs)
            finally:
                spent = measure.clock() - start
                self.previews.append(spent)
                self._in_preview += spent
        previews.render_step = timed


def run_stage(stage: int, settings: Settings, bench_models, concept, tokens=None):
    from ..prism_core.training.config import LoraConfig, TokenConfig
    from ..prism_core.host.previews import PreviewSettings, TrainingPreviews
    from ..prism_core.host.runtime import RunOptions
    from ..prism_core.host.stage1 import learn_tokens
    from ..prism_core.host.family import describe
    from ..prism_core.host.stage2 import train_concept_lora

    prompts = tuple(f"a photo of [V], view {i}" for i in range(settings.prompts))
    preview = PreviewSettings(settings.every, prompts, settings.preview_steps, settings.sampler, "normal", settings.cfg,
                              settings.seed)
    previews = TrainingPreviews(preview, bench_models.clip, bench_models.vae, settings.resolution, settings.steps)
    clocked = Clocked()
    clocked.wrap(previews)
    options = RunOptions(max_batch=8, training_dtype="float32")
    started = measure.clock()
    with torch.inference_mode():
        if stage == 1:
            config = TokenConfig(steps=settings.steps, gradient_accumulation=settings.accumulation, seed=settings.seed)
            result = learn_tokens(bench_models.model, bench_models.clip, bench_models.vae, concept, config, options,
                                  on_step=clocked.on_step, previews=previews)
        else:
            config = LoraConfig(steps=settings.steps, gradient_accumulation=settings.accumulation, seed=settings.seed)
            result = train_concept_lora(bench_models.model, bench_models.clip, bench_models.vae, concept, tokens, config,
                                        describe(bench_models.model), options,
                                        on_step=clocked.on_step, previews=previews)
    total = measure.clock() - started
    assert len(clocked.previews) == settings.steps // settings.every, clocked.previews
    step_s = statistics.median(clocked.steps[1:] or clocked.steps)  # the first step also pays warm-up
    preview_s = statistics.median(clocked.previews)
    previews_in_run = settings.run_steps // settings.run_every
    share = previews_in_run * preview_s / (settings.run_steps * step_s + previews_in_run * preview_s)
    return result, {"stage": stage, "step_s": clocked.steps, "preview_s": clocked.previews, "median_step_s": step_s,
                    "median_preview_s": preview_s, "preview_in_steps": preview_s / step_s,
                    "share_of_run": share, "run_steps": settings.run_steps, "run_every": settings.run_every,
                    "total_s": total, "images": tuple(previews.output().shape)}


def main(args: argparse.Namespace) -> int:
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    host = models.import_host()
    torch.set_num_threads(settings.threads)
    from .stage1 import make_concept
    bench_models = models.build(settings.channels, settings.clip_layers, settings.seed, inference=True)
    concept = make_concept(dataclasses.replace(_stage1_settings(), images=settings.images, resolution=settings.resolution,
                                               seed=settings.seed))
    started = time.perf_counter()
    results, tokens = [], None
    for stage in [int(s) for s in args.stages.split(",") if s]:
        if stage == 2 and tokens is None:  # Stage 2 trains on Stage 1 tokens; a 1-step run is enough for timing
            from ..prism_core.training.config import TokenConfig
            from ..prism_core.host.stage1 import learn_tokens
            with torch.inference_mode():
                tokens = learn_tokens(bench_models.model, bench_models.clip, bench_models.vae, concept,
                                      TokenConfig(steps=1, gradient_accumulation=1, seed=settings.seed))
        result, row = run_stage(stage, settings, bench_models, concept, tokens)
        if stage == 1:
            tokens = result
        results.append(row)
        print(f"Stage {stage}: step {row['median_step_s']:.2f} s, one preview {row['median_preview_s']:.2f} s "
              f"({row['preview_in_steps']:.2f} steps; {settings.prompts} prompt(s) x {settings.preview_steps} {settings.sampler} "
              f"steps, cfg {settings.cfg}, {settings.resolution} px); previews every {settings.run_every} of "
              f"{settings.run_steps} steps: {100 * row['share_of_run']:.1f}% of the run (CPU s, median of "
              f"{len(row['step_s']) - 1} steps and {len(row['preview_s'])} previews)", flush=True)
    print(f"(bench wall time {time.perf_counter() - started:.0f} s, {settings.threads} thread(s); host {host})")
    if args.json:
        machine = measure.machine_description(str(host))
        measure.dump_json(args.json, {"settings": dataclasses.asdict(settings), "machine": machine, "results": results})
    return 0


def _stage1_settings():
    from .stage1 import Settings as Stage1Settings
    return Stage1Settings()
