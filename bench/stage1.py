"""Stage 1 (token optimisation, paper Algorithm 1): seconds per optimizer step and peak memory.

Every variant does the same work per optimizer step: `accumulation` micro-steps (default 4), each
on one image i with |J| = K anchors (default 3), on the same ComfyUI model objects, in float32,
with the pack's own sampling plan (images, anchors, timesteps and noise from one seed):

  pack        (a)  the pack: prism_core.host's ComfyStage1Backend + prism_core's optimize_tokens,
                   on weights held as ComfyUI's executor holds them (inference tensors, so the
                   backend's per-forward weight copies are paid, as in a real run)
  pack_plain  (a') the same on ordinary frozen weights (no weight copies needed): like for like
                   with (b) and (c), which hold such weights
  pack_ckpt   (a)  with gradient_checkpointing on
  ref         (b)  the reference train_sd21_stage1.py's structure re-implemented on the same
                   model: the reconstruction prompt encoded (batch 1) and the residual prompt
                   encoded K times (batch K), both with gradient; the empty prompt encoded K
                   times (batch K) without; separate UNet calls for the reconstruction sample
                   (batch 1), the K anchors (batch K) and the K null predictions (batch K, no
                   gradient); one backward through UNet and text encoder per micro-step. Only the
                   token vectors train (the pack's parameter set), latents encoded once.
  ref_full    (b') the reference as written: additionally its whole input-embedding table
                   (49408 x 768 + the new rows) is the AdamW parameter (dense gradient, clipping,
                   and the re-clamp of the untrained rows after every micro-step), and the VAE
                   encodes image i and the K anchors in every micro-step
  bound       (c)  bare lower bound: per micro-step one forward+backward of the UNet on the same
                   1+K samples (backward to the conditioning only) plus one no-grad forward for
                   the K null predictions; fixed conditioning tensors, no text encoder, no optimizer
  bound_ckpt  (c)  with the host's gradient checkpointing (memory runs by default)
  pack_plain_ckpt  (a') with gradient checkpointing (on request)
  pack_embfix, pack_persist, pack_ckpt_embfix: (a) with a proposed prism_core.host change applied by the
                   bench (see proposals.py); pack_persist computes exactly what pack_plain does, so
                   it is in the memory runs only; pack_ckpt_embfix on request

Variants are timed in one process, interleaved micro-step by micro-step: each round runs one
optimizer step of every variant, one micro-step of each in turn (the pack's optimize_tokens runs in
a worker thread that hands control back at every micro-step), in an order rotated per round, and
ratios are taken within a round (paired), so load from other processes hits both sides alike.
Peak memory is measured in a fresh subprocess per variant: VmHWM is reset once the models are built
and the run is set up, then one micro-step and an optimizer update run.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from . import measure, models, proposals

HELP = "Stage 1: pack vs. reference structure vs. lower bound, time per step and peak memory"

TIMED = ("pack", "pack_plain", "ref", "ref_full", "bound", "pack_ckpt", "pack_embfix")
MEMORY = ("pack", "pack_plain", "ref", "ref_full", "bound", "pack_persist", "pack_ckpt", "bound_ckpt")
ALL_VARIANTS = ("pack", "pack_plain", "pack_ckpt", "ref", "ref_full", "bound", "bound_ckpt", "pack_embfix",
                "pack_persist", "pack_ckpt_embfix", "pack_plain_ckpt")
LABELS = {
    "pack": "(a) pack, executor weights",
    "pack_plain": "(a') pack, plain weights",
    "pack_ckpt": "(a) pack + checkpointing",
    "ref": "(b) reference structure",
    "ref_full": "(b') reference as written",
    "bound": "(c) lower bound",
    "bound_ckpt": "(c) lower bound + checkpointing",
    "pack_embfix": "proposal: (a) without embedding-table copies",
    "pack_persist": "proposal: (a) with one persistent weight copy",
    "pack_ckpt_embfix": "proposal: (a) + checkpointing without embedding-table copies",
    "pack_plain_ckpt": "(a') pack, plain weights + checkpointing",
}
CAPTIONS = ("a red ball on green grass in the sun", "a red ball on a wooden kitchen table",
            "a red ball in fresh snow next to a fence", "a red ball on a sandy beach at dusk",
            "a red ball on a blue sofa with cushions", "a red ball on a stone floor in a church")
COMPONENTS = ("text forward", "text backward", "model forward", "null forward", "null text forward",
              "model backward", "backward", "vae", "optimizer")


@dataclass(frozen=True)
class Settings:
    images: int = 4
    resolution: int = 256
    channels: int = 64
    clip_layers: int = 1
    accumulation: int = 4
    anchors: int = 3
    max_batch: int = 8
    seed: int = 0
    threads: int = 1

    def token_config(self, steps: int):
        from ..prism_core.training.config import TokenConfig
        return TokenConfig(steps=steps, gradient_accumulation=self.accumulation, exclusion_set_size=self.anchors,
                           seed=self.seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs --steps optimizer steps of every variant, interleaved micro-step by micro-step")
    parser.add_argument("--steps", type=int, default=1, help="timed optimizer steps per variant and round")
    parser.add_argument("--variants", default=",".join(TIMED), help="timed variants, comma separated")
    measure.add_settings_arguments(parser, Settings, ",".join(MEMORY))


# -- the concept set ---------------------------------------------------------------------------------
def make_concept(settings: Settings):
    from ..prism_core.concept_input.concept_set import ConceptSet
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.inference_mode():  # upstream IMAGE tensors are inference tensors in a real run
        images = torch.rand(settings.images, settings.resolution, settings.resolution, 3, generator=generator)
    captions = tuple(CAPTIONS[i % len(CAPTIONS)] for i in range(settings.images))
    return ConceptSet(images, tuple(f"{i}.png" for i in range(settings.images)), captions, settings.resolution, "bench")


def sample_inputs(model_sampling, latents: torch.Tensor, images: list[int], timesteps: list[int], noise: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """What a diffusers-style trainer feeds its UNet: x_t = sqrt(abar) x0 + sqrt(1-abar) eps and the
    integer timestep. On ComfyUI's eps schedule that is (x0 + sigma eps) / sqrt(sigma^2 + 1)."""
    sigma = model_sampling.sigmas[torch.tensor(timesteps)].float().view(-1, 1, 1, 1)
    x_in = (latents[images] + sigma * noise) / (sigma ** 2 + 1).sqrt()
    return x_in, torch.tensor(timesteps, dtype=torch.float32)


# -- variants ------------------------------------------------------------------------------------
ACTIVE: list[Any] = [None]
"""The variant whose code runs now. Exactly one runs at a time (see `interleave`)."""


@contextlib.contextmanager
def torch_instrumentation():
    """optimize_tokens makes these calls through the torch module; for the pack variants, time them
    for the breakdown (installed once per process, attributed to the active variant)."""
    def timed(name: str, fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            variant = ACTIVE[0]
            if variant is None or not variant.instrument_torch:
                return fn(*args, **kwargs)
            with variant.timers(name):
                return fn(*args, **kwargs)
        return call
    with contextlib.ExitStack() as stack:
        stack.enter_context(measure.patched(torch.autograd, "grad", timed("model backward", torch.autograd.grad)))
        stack.enter_context(measure.patched(torch.autograd, "backward", timed("text backward", torch.autograd.backward)))
        stack.enter_context(measure.patched(torch.nn.utils, "clip_grad_norm_", timed("optimizer", torch.nn.utils.clip_grad_norm_)))
        stack.enter_context(measure.patched(torch.optim.AdamW, "step", timed("optimizer", torch.optim.AdamW.step)))
        yield


class Marks:
    """Cuts a variant's run into segments: reset() where one starts, segment() where it ends."""

    def __init__(self, timers: measure.Timers) -> None:
        self.timers = timers
        self.reset()

    def reset(self) -> None:
        self.cpu, self.wall, self.snap = measure.clock(), time.perf_counter(), self.timers.snapshot()

    def segment(self, step: int, **extra: float) -> dict[str, float]:
        return {"step": step, "total": measure.clock() - self.cpu, "wall": time.perf_counter() - self.wall,
                **measure.delta(self.timers.snapshot(), self.snap), **extra}


class Variant:
    """One way of running Stage 1. setup() once; segments(steps) runs that many optimizer steps and
    yields after every micro-step (the last one of a step includes the optimizer update), so that
    variants can be interleaved micro-step by micro-step. A segment: {"step": index, "total": CPU s,
    "wall": s, <component>: CPU s, ..., and "rec"/"excl" at the end of a step}."""

    instrument_torch = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timers = measure.Timers()
        self.stack = contextlib.ExitStack()
        self.setup_s = math.nan

    def setup(self) -> None:
        raise NotImplementedError

    def segments(self, steps: int, accumulation: int | None = None) -> Iterator[dict[str, float]]:
        """`accumulation` overrides the micro-steps per step (the warm-up runs a single one)."""
        raise NotImplementedError

    def plan(self, steps: int, accumulation: int | None):
        from ..prism_core.training.schedule import plan_micro_steps
        s = self.settings
        return plan_micro_steps(s.images, min(s.anchors, s.images - 1), steps, accumulation or s.accumulation,
                                int(self.sampling.sigmas.shape[0]), s.seed)

    def close(self) -> None:
        self.stack.close()


class Handoff:
    """Runs `fn` in a worker thread that gives control back to the caller at every `pause(message)`:
    iterating yields the messages. Exactly one of the two threads runs at any time, so CPU time of
    the process between two points of the worker is the worker's."""

    def __init__(self, fn, threads: int) -> None:
        self.fn, self.threads = fn, threads
        self.to_worker, self.to_main = threading.Semaphore(0), threading.Semaphore(0)
        self.message, self.done, self.error = None, False, None

    def _work(self) -> None:
        torch.set_num_threads(self.threads)  # OpenMP settings are per thread
        self.to_worker.acquire()
        try:
            self.fn()
        except BaseException as error:  # handed to the caller
            self.error = error
        finally:
            self.done = True
            self.to_main.release()

    def pause(self, message: Any) -> None:
        self.message = message
        self.to_main.release()
        self.to_worker.acquire()

    def __iter__(self) -> Iterator[Any]:
        thread = threading.Thread(target=self._work, daemon=True)
        thread.start()
        while True:
            self.to_worker.release()
            self.to_main.acquire()
            if self.done:
                thread.join()
                if self.error is not None:
                    raise self.error
                return
            yield self.message


class PackVariant(Variant):
    """(a): the node's own path, ComfyStage1Backend + optimize_tokens, instrumented from outside.
    optimize_tokens runs in a worker thread that pauses where a micro-step starts (the backend's
    check_interrupt) and where a step ends (on_step)."""

    instrument_torch = True

    def __init__(self, settings: Settings, bench_models: models.BenchModels, concept, checkpointing: bool,
                 proposal: str | None = None) -> None:
        super().__init__(settings)
        self.models, self.concept, self.checkpointing, self.proposal = bench_models, concept, checkpointing, proposal
        self._micro_step_start = lambda: None

    def setup(self) -> None:
        from ..prism_core.host import text
        from ..prism_core.host.internals import training_guard
        from ..prism_core.host.stage1 import initial_vectors
        from ..prism_core.host.stage1_backend import ComfyStage1Backend, encode_latents
        config = self.settings.token_config(1)
        start = time.perf_counter()
        # what learn_tokens does before optimize_tokens (per run, not per step)
        widths = text.encoder_widths(self.models.clip)
        lengths = text.slot_lengths_for(
            {k: torch.empty(config.target_length, w) for k, w in widths.items()},
            {k: torch.empty(len(self.concept), config.residual_length, w) for k, w in widths.items()})
        self.latents = encode_latents(self.models.model, self.models.vae, self.concept.images.clone())
        self.backend = ComfyStage1Backend(self.models.model, self.models.clip, lengths, self.concept.resolution,
                                          self.settings.max_batch, "float32", self.checkpointing)
        if self.proposal:
            with measure.patched(training_guard, "with_weight_copies", proposals.PROPOSALS[self.proposal]):
                self.stack.enter_context(self.backend)
        else:
            self.stack.enter_context(self.backend)
        self.target, self.residuals, _ = initial_vectors(self.backend, self.concept.captions, config)
        self.setup_s = time.perf_counter() - start
        b, t = self.backend, self.timers
        b.encode = t.wrap("text forward", b.encode)
        b.predict = t.wrap(lambda: "model forward" if torch.is_grad_enabled() else "null forward", b.predict)
        check = b.check_interrupt

        def check_interrupt() -> None:
            self._micro_step_start()
            check()
        b.check_interrupt = check_interrupt

    def segments(self, steps: int, accumulation: int | None = None) -> Iterator[dict[str, float]]:
        from ..prism_core.training.stage1 import optimize_tokens
        config = self.settings.token_config(steps)
        if accumulation:
            config = dataclasses.replace(config, gradient_accumulation=accumulation)
        marks = Marks(self.timers)
        state = {"step": 0, "running": False}

        def micro_step_start() -> None:
            if not state["running"]:  # the first micro-step of a step: what came before (AdamW, plan and
                if state["step"] == 0:  # null encoding per run; zero_grad per step) is not a micro-step's
                    marks.reset()
                state["running"] = True
                return
            handoff.pause(marks.segment(state["step"]))
            marks.reset()

        def on_step(step: int, total: int, rec: float, excl: float) -> None:
            handoff.pause(marks.segment(state["step"], rec=rec, excl=excl))
            marks.reset()
            state["step"], state["running"] = step, False

        def work() -> None:
            self._micro_step_start = micro_step_start
            try:
                optimize_tokens(self.backend, self.latents, self.target, self.residuals, config, on_step)
            finally:
                self._micro_step_start = lambda: None

        handoff = Handoff(work, self.settings.threads)
        yield from handoff


class TokenTextEncoder:
    """The reference's text path on ComfyUI's clip_l: token ids -> input embeddings (frozen table
    plus the new rows) -> the host's CLIPTextModel, final layer (what the pack's prompts get)."""

    def __init__(self, clip, rows: torch.Tensor, full_table: bool) -> None:
        self.encoder = clip.cond_stage_model.clip_l
        self.tokenizer = clip.tokenizer.clip_l
        self.table = self.encoder.transformer.get_input_embeddings().weight
        self.vocab = self.table.shape[0]
        self.full_table = full_table
        if full_table:  # the reference trains the resized embedding matrix itself
            self.param = torch.nn.Parameter(torch.cat([self.table.detach().float(), rows.float()]))
            self.original = self.param.detach().clone()
            self.keep = torch.ones(self.param.shape[0], dtype=torch.bool)
            self.keep[self.vocab:] = False
        else:
            self.param = torch.nn.Parameter(rows.detach().clone().float())

    def ids(self, parts: list[Any]) -> tuple[list[int], int]:
        """[start, parts..., end, pad...] (77 ids) and the count up to the end token; a part is a
        word or a list of new-row indices."""
        tok = self.tokenizer
        ids = [tok.start_token]
        for part in parts:
            if isinstance(part, str):
                chunk = tok.tokenize_with_weights(part)[0]
                ids += [t for t, _ in chunk[1:] if t != tok.end_token and t != tok.pad_token]
            else:
                ids += [self.vocab + r for r in part]
        ids.append(tok.end_token)
        count = len(ids)
        ids += [tok.pad_token] * (tok.max_length - len(ids))
        return ids, count

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.full_table:
            return F.embedding(ids, self.param)
        new = ids >= self.vocab
        base = F.embedding(ids.clamp(max=self.vocab - 1), self.table).float()
        return torch.where(new.unsqueeze(-1), self.param[(ids - self.vocab).clamp(min=0)], base)

    def encode(self, ids: torch.Tensor, counts: list[int]) -> torch.Tensor:
        out = self.encoder.transformer(None, None, embeds=self.embed(ids), num_tokens=counts, intermediate_output=None,
                                       final_layer_norm_intermediate=True, dtype=torch.float32)
        return out[0].float()

    def reclamp(self) -> None:
        if self.full_table:
            with torch.no_grad():
                self.param.data[self.keep] = self.original[self.keep]


class ReferenceVariant(Variant):
    """(b)/(b'): the reference's per-micro-step call structure on the same ComfyUI model objects."""

    def __init__(self, settings: Settings, bench_models: models.BenchModels, concept, latents: torch.Tensor,
                 initial: tuple[dict, dict], full: bool) -> None:
        super().__init__(settings)
        self.models, self.concept, self.latents, self.initial, self.full = bench_models, concept, latents, initial, full

    def setup(self) -> None:
        from ..prism_core.host.internals import out_of_place, training_guard
        start = time.perf_counter()
        clip = self.models.clip
        # the host's CLIP layers add residuals in place, which autograd cannot go back through
        self.stack.enter_context(training_guard.restore_modules(clip.cond_stage_model))
        out_of_place.out_of_place_text_layers(clip.cond_stage_model)
        target, residuals = self.initial
        n, n_r, width = residuals["clip_l"].shape
        rows = torch.cat([target["clip_l"], residuals["clip_l"].reshape(n * n_r, width)])
        self.text = TokenTextEncoder(clip, rows, self.full)
        n_t = target["clip_l"].shape[0]
        res_rows = [list(range(n_t + i * n_r, n_t + (i + 1) * n_r)) for i in range(n)]
        rec = [self.text.ids([list(range(n_t)), "with", res_rows[i]]) for i in range(n)]
        res = [self.text.ids([res_rows[i]]) for i in range(n)]
        null = self.text.ids([])
        self.rec_ids = [(torch.tensor([ids]), [c]) for ids, c in rec]
        self.res_ids = [(torch.tensor([ids]), [c]) for ids, c in res]
        self.null_ids = (torch.tensor([null[0]]), [null[1]])
        config = self.settings.token_config(1)
        self.beta = config.beta
        self.optimizer = torch.optim.AdamW([self.text.param], lr=config.learning_rate, weight_decay=config.weight_decay)
        self.sampling = self.models.model.get_model_object("model_sampling")
        self.unet = self.models.model.model.diffusion_model
        self.pixels = self.concept.images.clone()  # (b') encodes these every micro-step
        self.setup_s = time.perf_counter() - start

    def _latents(self, images: list[int]) -> torch.Tensor:
        if not self.full:
            return self.latents[images]
        with self.timers("vae"), torch.no_grad():
            latents = self.models.vae.encode(self.pixels[images])
            return self.models.model.model.process_latent_in(latents).float()

    def _micro_step(self, step, scale: float) -> tuple[float, float]:
        from ..prism_core.training.schedule import draw_noise
        t = self.timers
        k = len(step.anchors)
        noise = draw_noise(step, self.latents.shape[1:])
        latents = torch.cat([self._latents([step.image]), self._latents(list(step.anchors))])
        x_in, timesteps = sample_inputs(self.sampling, latents, list(range(1 + k)), list(step.timesteps), noise)
        with t("text forward"):
            rec_hidden = self.text.encode(*self.rec_ids[step.image])
        with t("model forward"):
            pred = self.unet(x_in[:1], timesteps[:1], context=rec_hidden)
        loss_rec = F.mse_loss(pred.float(), noise[:1].float())
        ids, counts = self.res_ids[step.image]
        with t("text forward"):
            res_hidden = self.text.encode(ids.expand(k, -1), counts * k)
        with t("model forward"):
            pred_res = self.unet(x_in[1:], timesteps[1:], context=res_hidden)
        with torch.no_grad():
            ids, counts = self.null_ids
            with t("null text forward"):
                null_hidden = self.text.encode(ids.expand(k, -1), counts * k)
            with t("null forward"):
                pred_null = self.unet(x_in[1:], timesteps[1:], context=null_hidden)
        loss_excl = F.mse_loss(pred_res.float(), pred_null.float())
        loss = loss_rec + self.beta * loss_excl
        with t("backward"):
            (loss * scale).backward()
        return loss_rec.item(), loss_excl.item()

    def segments(self, steps: int, accumulation: int | None = None) -> Iterator[dict[str, float]]:
        marks = Marks(self.timers)
        for index, micro_steps in enumerate(self.plan(steps, accumulation)):
            losses = []
            for i, micro_step in enumerate(micro_steps):
                marks.reset()
                losses.append(self._micro_step(micro_step, 1.0 / len(micro_steps)))
                last = i == len(micro_steps) - 1
                if last:
                    with self.timers("optimizer"):
                        torch.nn.utils.clip_grad_norm_([self.text.param], 1.0)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                with self.timers("optimizer"):
                    self.text.reclamp()  # every micro-step, as the reference does (no-op for (b))
                extra = {"rec": sum(r for r, _ in losses) / len(losses),
                         "excl": sum(e for _, e in losses) / len(losses)} if last else {}
                yield marks.segment(index, **extra)


class BoundVariant(Variant):
    """(c): the UNet work Algorithm 1 cannot avoid, and nothing else."""

    def __init__(self, settings: Settings, bench_models: models.BenchModels, latents: torch.Tensor, checkpointing: bool) -> None:
        super().__init__(settings)
        self.models, self.latents, self.checkpointing = bench_models, latents, checkpointing

    def setup(self) -> None:
        from ..prism_core.host.internals import training_guard
        start = time.perf_counter()
        self.unet = self.models.model.model.diffusion_model
        if self.checkpointing:
            self.stack.enter_context(training_guard.restore_modules(self.unet))
            training_guard.gradient_checkpointing(self.unet)
        self.sampling = self.models.model.get_model_object("model_sampling")
        generator = torch.Generator().manual_seed(self.settings.seed)
        self.rec_cond = torch.randn(1, 77, 768, generator=generator).requires_grad_(True)
        self.res_cond = torch.randn(1, 77, 768, generator=generator).requires_grad_(True)
        self.null_cond = torch.randn(1, 77, 768, generator=generator)
        self.setup_s = time.perf_counter() - start

    def segments(self, steps: int, accumulation: int | None = None) -> Iterator[dict[str, float]]:
        from ..prism_core.training.losses import exclusion_loss, prism_loss, reconstruction_loss
        from ..prism_core.training.schedule import draw_noise
        t, marks = self.timers, Marks(self.timers)
        for index, micro_steps in enumerate(self.plan(steps, accumulation)):
            for step in micro_steps:
                marks.reset()
                k = len(step.anchors)
                noise = draw_noise(step, self.latents.shape[1:])
                x_in, timesteps = sample_inputs(self.sampling, self.latents, [step.image, *step.anchors],
                                                list(step.timesteps), noise)
                targets = noise.clone()
                with torch.no_grad(), t("null forward"):
                    targets[1:] = self.unet(x_in[1:], timesteps[1:], context=self.null_cond.expand(k, -1, -1))
                with t("model forward"):
                    pred = self.unet(x_in, timesteps, context=torch.cat([self.rec_cond, self.res_cond.expand(k, -1, -1)]))
                loss = prism_loss(reconstruction_loss(pred[:1], targets[:1]), exclusion_loss(pred[1:], targets[1:]),
                                  0.05) / len(micro_steps)
                with t("model backward"):
                    torch.autograd.grad(loss, [self.rec_cond, self.res_cond])
                yield marks.segment(index)


# -- building what a set of variants needs ------------------------------------------------------------
def build_variants(names: list[str], settings: Settings) -> tuple[dict[str, Variant], dict[str, Any]]:
    """Build the models each variant needs (one set per distinct weight handling, so that a variant
    that patches modules never changes another's) and set the variants up."""
    concept = make_concept(settings)
    built: dict[str, models.BenchModels] = {}

    def get(kind: str) -> models.BenchModels:
        if kind not in built:
            built[kind] = models.build(settings.channels, settings.clip_layers, settings.seed,
                                       inference=kind.startswith("exec"))
        return built[kind]

    variants: dict[str, Variant] = {}
    info: dict[str, Any] = {}
    # the plain models serve pack_plain, ref, ref_full and bound, none of which patches the UNet
    plain_users = [n for n in names if n in ("pack_plain", "ref", "ref_full", "bound")]
    initial, latents = None, None
    if plain_users or "bound_ckpt" in names:
        from ..prism_core.host.stage1_backend import encode_latents
        plain = get("plain")
        with torch.inference_mode(False):
            latents = encode_latents(plain.model, plain.vae, concept.images.clone())
    if any(n in names for n in ("ref", "ref_full")):
        # the same initial vectors as the pack (captions through the same CLIP): one short pack setup
        probe = PackVariant(settings, get("plain"), concept, False)
        probe.setup()
        initial = (probe.target, probe.residuals)
        probe.close()
    for name in names:
        if name == "pack":
            variants[name] = PackVariant(settings, get("exec"), concept, False)
        elif name == "pack_ckpt":
            variants[name] = PackVariant(settings, get("exec_ckpt"), concept, True)
        elif name in proposals.PROPOSALS:
            variants[name] = PackVariant(settings, get(f"exec_{name}"), concept, False, name)
        elif name == "pack_ckpt_embfix":
            variants[name] = PackVariant(settings, get(f"exec_{name}"), concept, True, "pack_embfix")
        elif name == "pack_plain_ckpt":  # its own plain models: checkpointing patches the UNet
            variants[name] = PackVariant(settings, get("plain_for_pack_ckpt"), concept, True)
        elif name == "pack_plain":
            variants[name] = PackVariant(settings, get("plain"), concept, False)
        elif name in ("ref", "ref_full"):
            variants[name] = ReferenceVariant(settings, get("plain"), concept, latents, initial, name == "ref_full")
        elif name == "bound":
            variants[name] = BoundVariant(settings, get("plain"), latents, False)
        elif name == "bound_ckpt":
            variants[name] = BoundVariant(settings, get("plain_ckpt" if plain_users else "plain"), latents, True)
        else:
            raise SystemExit(f"unknown variant {name}; known: {', '.join(ALL_VARIANTS)}")
    for variant in variants.values():
        variant.setup()
    any_models = next(iter(built.values()))
    info["unet_params_m"] = models.parameter_count(any_models.model.model.diffusion_model) / 1e6
    info["clip_params_m"] = models.parameter_count(any_models.clip.cond_stage_model) / 1e6
    info["model_flops"] = model_flops(any_models)
    return variants, info


def model_flops(bench_models: models.BenchModels) -> dict[str, float]:
    """GFLOP of one UNet sample forward at the bench size and of one prompt through the text encoder."""
    from torch.utils.flop_counter import FlopCounterMode
    unet = bench_models.model.model.diffusion_model
    with torch.no_grad(), FlopCounterMode(display=False) as unet_count:
        unet(torch.zeros(1, 4, 32, 32), torch.tensor([500.0]), context=torch.zeros(1, 77, 768))
    clip = bench_models.clip
    with torch.no_grad(), FlopCounterMode(display=False) as clip_count:
        clip.cond_stage_model.encode_token_weights(clip.tokenize("a photo of a red ball"))
    return {"unet_sample_gflop": unet_count.get_total_flops() / 1e9, "text_prompt_gflop": clip_count.get_total_flops() / 1e9}


# -- timing ---------------------------------------------------------------------------------------------
def combine(segments: list[dict[str, float]]) -> list[dict[str, float]]:
    """Segments -> one record per optimizer step (sums; the losses of the step's last segment)."""
    steps: dict[int, dict[str, float]] = {}
    for segment in segments:
        record = steps.setdefault(int(segment["step"]), {})
        for key, value in segment.items():
            if key in ("rec", "excl"):
                record[key] = value
            elif key != "step":
                record[key] = record.get(key, 0.0) + value
    return [steps[k] for k in sorted(steps)]


def interleave(variants: dict[str, Variant], order: list[str], steps: int, accumulation: int | None = None
               ) -> dict[str, list[dict[str, float]]]:
    """Run `steps` optimizer steps of every variant, one micro-step of each in turn."""
    running = {name: iter(variants[name].segments(steps, accumulation)) for name in order}
    segments: dict[str, list[dict[str, float]]] = {name: [] for name in order}
    while running:
        for name in [n for n in order if n in running]:
            ACTIVE[0] = variants[name]
            try:
                segments[name].append(next(running[name]))
            except StopIteration:
                del running[name]
            finally:
                ACTIVE[0] = None
    return {name: combine(segments[name]) for name in order}


def time_variants(settings: Settings, names: list[str], rounds: int, steps: int) -> dict[str, Any]:
    print(f"building models and setting up {', '.join(names)} ...", flush=True)
    start = time.perf_counter()
    variants, info = build_variants(names, settings)
    info["setup_s"] = {n: v.setup_s for n, v in variants.items()}
    print(f"  ready in {time.perf_counter() - start:.1f} s; one warm-up micro-step of each variant ...", flush=True)
    records: dict[str, list[list[dict[str, float]]]] = {n: [] for n in names}
    with torch_instrumentation():
        warmup = {name: steps_[0] for name, steps_ in interleave(variants, names, 1, accumulation=1).items()}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            done = interleave(variants, order, steps)
            for name in names:
                records[name].append(done[name])
            print(f"  round {r + 1}/{rounds} (CPU s/wall s per step): " + ", ".join(
                f"{name} {sum(x['total'] for x in done[name]) / steps:.2f}/{sum(x['wall'] for x in done[name]) / steps:.2f}"
                for name in order), flush=True)
    for variant in reversed(list(variants.values())):
        variant.close()
    return {"info": info, "warmup": warmup, "records": records}


# -- memory -----------------------------------------------------------------------------------------
def memory_worker(settings: Settings, name: str) -> dict[str, Any]:
    """In a fresh process: build, set up, then measure the peak RSS of one micro-step and an optimizer
    update (a micro-step frees its graph before the next; the optimizer state appears at the update)."""
    variants, _ = build_variants([name], settings)
    variant = variants[name]
    baseline = measure.rss_mib()
    build_peak = measure.peak_rss_mib()
    reset = measure.reset_peak_rss()
    start = time.perf_counter()
    with torch_instrumentation():  # one micro-step and the update: the peak of every micro-step is the same
        record = interleave(variants, [name], 1, accumulation=1)[name][0]
    seconds = time.perf_counter() - start
    peak = measure.peak_rss_mib()
    variant.close()
    return {"variant": name, "baseline_mib": baseline, "build_peak_mib": build_peak, "peak_mib": peak,
            "increment_mib": peak - baseline if reset else math.nan, "step_s": seconds, "step_record": record}


# -- report -----------------------------------------------------------------------------------------
def per_step(records: list[list[dict[str, float]]], key: str = "total") -> list[float]:
    return [sum(step.get(key, 0.0) for step in block) / len(block) for block in records]


def report(settings: Settings, timing: dict[str, Any], memory: dict[str, Any], machine: dict[str, Any],
           rounds: int, steps: int) -> str:
    out = []
    add = out.append
    add("## Stage 1")
    add("")
    if timing is None:
        add(memory_table(memory))
        return "\n".join(out)
    info, records = timing["info"], timing["records"]
    names = list(records)
    flops = info["model_flops"]
    add(f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; torch {machine['torch']} "
        f"with {machine['torch_threads']} thread(s); ComfyUI {machine['comfyui_commit']}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in machine['load_average'])}.")
    add(f"Models: SD1.5-layout UNet, {settings.channels} channels, {info['unet_params_m']:.1f} M parameters, "
        f"{flops['unet_sample_gflop']:.2f} GFLOP per sample forward at 32x32 latents; clip_l 768 wide, "
        f"{settings.clip_layers} layer(s), {info['clip_params_m']:.1f} M parameters (37.9 M of them the vocabulary), "
        f"{flops['text_prompt_gflop']:.2f} GFLOP per prompt. float32, torch SDPA attention.")
    add(f"Work per optimizer step: {settings.accumulation} micro-steps, {settings.images} images at "
        f"{settings.resolution} px, K = {min(settings.anchors, settings.images - 1)} anchors, max_batch {settings.max_batch}, seed {settings.seed}.")
    add(f"Timing: {rounds} interleaved rounds x {steps} step(s) per variant after one warm-up micro-step each; "
        "median [min-max] over rounds; ratios are paired within a round. CPU s = CPU time of the bench "
        "process (the work done; robust to other load on the machine), wall s = elapsed time.")
    add("")
    add("| variant | CPU s per optimizer step | wall s per optimizer step | per-run setup, wall s |")
    add("|---|---|---|---|")
    for name in names:
        add(f"| {LABELS[name]} `{name}` | {measure.fmt(measure.summary(per_step(records[name])))} | "
            f"{measure.fmt(measure.summary(per_step(records[name], 'wall')))} | {info['setup_s'][name]:.2f} |")
    add("")
    pairs = [("pack", "ref", "(a)/(b) pack / reference structure (target <= 1.0)"),
             ("pack", "bound", "(a)/(c) pack / lower bound (target <= 1.15)"),
             ("pack", "ref_full", "(a)/(b') pack / reference as written"),
             ("pack_plain", "ref", "(a')/(b) pack on plain weights / reference structure"),
             ("pack_plain", "bound", "(a')/(c) pack on plain weights / lower bound"),
             ("ref", "bound", "(b)/(c) reference structure / lower bound"),
             ("pack_ckpt", "pack", "checkpointing on / off (pack)"),
             ("pack_embfix", "ref", "proposal embfix / reference structure"),
             ("pack_embfix", "bound", "proposal embfix / lower bound"),
             ("pack_persist", "ref", "proposal persist / reference structure"),
             ("pack_persist", "bound", "proposal persist / lower bound")]
    add("| ratio | CPU time, median [min-max] | wall time, median [min-max] |")
    add("|---|---|---|")
    for a, b, label in pairs:
        if a in records and b in records:
            cells = []
            for key in ("total", "wall"):
                ratios = [x / y for x, y in zip(per_step(records[a], key), per_step(records[b], key))]
                cells.append(measure.fmt(measure.summary(ratios), 3))
            add(f"| {label} | {cells[0]} | {cells[1]} |")
    add("")
    add("Breakdown, median CPU seconds per optimizer step (model forward = UNet calls with gradient; null forward = "
        "the K null predictions; model backward = UNet backward to the conditioning; text backward = the one "
        "backward from the conditioning into the tokens; backward (reference) = its single loss.backward through "
        "UNet and text encoder; other = total minus the listed parts: noising, losses, batching, Python):")
    add("")
    shown = [c for c in COMPONENTS if any(any(c in s for b in records[n] for s in b) for n in names)]
    add("| variant | total | " + " | ".join(shown) + " | other |")
    add("|---|---|" + "---|" * len(shown) + "---|")
    for name in names:
        total = measure.summary(per_step(records[name]))["median"]
        cells = [measure.summary(per_step(records[name], c))["median"] for c in shown]
        other = [sum(step["total"] - sum(step.get(c, 0.0) for c in COMPONENTS) for step in block) / len(block)
                 for block in records[name]]
        add(f"| `{name}` | {total:.2f} | " + " | ".join(f"{c:.3f}" if c else "-" for c in cells)
            + f" | {measure.summary(other)['median']:.3f} |")
    add("")
    checked = {n: w for n, w in timing["warmup"].items() if "rec" in w}
    if checked:
        add("Same-algorithm check, losses of the warm-up micro-step (same plan, same initial vectors): "
            + "; ".join(f"`{n}` L_rec {w['rec']:.6f} L_excl {w['excl']:.6f}" for n, w in checked.items()) + ".")
        add("")
    if memory:
        add(memory_table(memory))
    return "\n".join(out)


def memory_table(memory: dict[str, Any]) -> str:
    out = ["Peak memory (process RSS, one fresh process per variant; 'training' = peak during one micro-step "
           "and an optimizer update minus RSS after building the models and setting the run up):", "",
           "| variant | RSS after setup MiB | peak MiB | training MiB |", "|---|---|---|---|"]
    for name, m in memory.items():
        out.append(f"| {LABELS[name]} `{name}` | {m['baseline_mib']:.0f} | {m['peak_mib']:.0f} | "
                   f"{m['increment_mib']:.0f} |")
    return "\n".join(out + [""])


def main(args: argparse.Namespace) -> int:
    settings = measure.settings_from(args, Settings)
    host = models.import_host()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    if args.worker:
        print(json.dumps(memory_worker(settings, args.worker), default=float))
        return 0
    machine = measure.machine_description(str(host))
    names = [n for n in args.variants.split(",") if n]
    mem_names = [n for n in args.memory.split(",") if n]
    started = time.perf_counter()
    timing = time_variants(settings, names, args.rounds, args.steps) if names else None
    memory = measure.run_memory("stage1", settings, mem_names, args.memory_parallel) if mem_names else {}
    text = report(settings, timing, memory, machine, args.rounds, args.steps)
    print()
    print(text)
    print(f"\n(bench wall time {time.perf_counter() - started:.0f} s)")
    if args.json:
        measure.dump_json(args.json, {"settings": dataclasses.asdict(settings), "machine": machine,
                                      "timing": timing, "memory": memory, "report": text})
    return 0
