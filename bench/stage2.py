"""Stage 2: the pack's LoRA training against ComfyUI's own TrainLoraNode, time per step and peak memory.

Same model (models.py: SD1.5-layout UNet, 32x32 latents), rank, dtype (float32), seeds and per-step
work (4 samples per optimizer step) for every variant:

  pack               ComfyStage2Backend + train_lora (what train_concept_lora runs after encoding
                     the prompts and latents once per run) on executor (inference-tensor) weights,
                     max_batch 8: the 4 micro-steps of a step share one model call of 4 samples
  pack_mb1           the same with max_batch 1: 4 model calls of 1 sample, like TrainLoraNode
  pack_plain_mb1     pack_mb1 on ordinary frozen weights (no per-forward weight copies)
  host_all           TrainLoraNode.train(batch_size 1, grad_accumulation_steps 4, fp32/fp32, rank 4,
                     AdamW, MSE), its default adapters: LoRA on every >=2-D weight plus bias/norm diffs
  host_attn          the same train() call with only the adapters of the pack's layers
                     (to_q/to_k/to_v/to_out.0 of attn1/attn2) attached: ModelPatcher.add_weight_wrapper
                     drops every other key during the call (see restricted_to); on ordinary frozen
                     weights, because without a wrapper on every layer the host's trainer cannot
                     backward through inference-tensor weights (`host_attn_executor`, on request,
                     shows it: "Inference tensors cannot be saved for backward")
  *_ckpt             with gradient checkpointing (the host's own patch of the top-level blocks)

Timing: each round runs, for every variant in an order rotated per round, one fresh training run of
2 optimizer steps (setup, one warm-up step, one measured step); runs never overlap, so the host's
model management sees one training run at a time. A step is measured from the end of one AdamW step
to the end of the next, as the bench process's CPU time (one torch thread); model forward
(BaseModel.apply_model), backward (torch.autograd.backward) and optimizer (clip_grad_norm_,
AdamW.step) are timed from outside. Ratios are paired within a round.

Peak memory: one fresh subprocess per variant: build the model and data, note RSS, reset VmHWM,
run a whole 1-step training run (adapters, loading, one optimizer step), read VmHWM.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import measure, models

HELP = "Stage 2: pack LoRA training vs. ComfyUI's TrainLoraNode, time per step and peak memory"


@dataclass(frozen=True)
class Spec:
    trainer: str          # "pack" | "host"
    weights: str          # "executor" (inference tensors) | "plain"
    max_batch: int = 8    # pack only
    layers: str = "attention"  # host: "all" | "attention"
    checkpointing: bool = False


VARIANTS = {
    "pack": Spec("pack", "executor", 8),
    "pack_mb1": Spec("pack", "executor", 1),
    "pack_plain_mb1": Spec("pack", "plain", 1),
    "host_all": Spec("host", "executor", layers="all"),
    "host_attn": Spec("host", "plain", layers="attention"),
    "pack_ckpt": Spec("pack", "executor", 8, checkpointing=True),
    "pack_plain_mb1_ckpt": Spec("pack", "plain", 1, checkpointing=True),
    "host_attn_ckpt": Spec("host", "plain", layers="attention", checkpointing=True),
    "host_all_ckpt": Spec("host", "executor", layers="all", checkpointing=True),
    "pack_plain": Spec("pack", "plain", 8),
    "host_attn_executor": Spec("host", "executor", layers="attention"),  # fails, see the module docstring
}
TIMED = ("pack", "pack_mb1", "pack_plain_mb1", "host_all", "host_attn", "pack_ckpt", "pack_plain_mb1_ckpt",
         "host_attn_ckpt")
MEMORY = TIMED
LABELS = {
    "pack": "pack, executor weights, max_batch 8 (1 call of 4)",
    "pack_mb1": "pack, executor weights, max_batch 1 (4 calls of 1)",
    "pack_plain_mb1": "pack, plain weights, max_batch 1",
    "pack_plain": "pack, plain weights, max_batch 8",
    "host_all": "TrainLoraNode, default all-layer adapters",
    "host_attn": "TrainLoraNode, attention adapters only, plain weights",
    "pack_ckpt": "pack + checkpointing, executor weights, max_batch 8",
    "pack_plain_mb1_ckpt": "pack + checkpointing, plain weights, max_batch 1",
    "host_attn_ckpt": "TrainLoraNode + checkpointing, attention only, plain weights",
    "host_all_ckpt": "TrainLoraNode + checkpointing, all layers",
    "host_attn_executor": "TrainLoraNode, attention adapters only, executor weights",
}
RATIOS = (  # (numerator, denominator, what it says)
    ("pack", "host_all", "pack (as run in ComfyUI) / host default all-layer"),
    ("pack_mb1", "host_all", "pack max_batch 1 / host default all-layer"),
    ("pack_plain_mb1", "host_attn", "like for like: pack / host, same layers, plain weights, 4 calls of 1"),
    ("pack_mb1", "host_attn", "pack executor weights max_batch 1 / host attention-only"),
    ("pack", "host_attn", "pack (as run in ComfyUI) / host attention-only"),
    ("pack_plain_mb1_ckpt", "host_attn_ckpt", "like for like with checkpointing"),
    ("host_attn", "host_all", "host attention-only / host all-layer"),
    ("pack", "pack_mb1", "pack max_batch 8 / max_batch 1"),
    ("pack_mb1", "pack_plain_mb1", "pack executor / plain weights (per-forward weight copies)"),
    ("pack_ckpt", "pack", "checkpointing on / off (pack)"),
    ("pack_plain_mb1_ckpt", "pack_plain_mb1", "checkpointing on / off (pack, plain, max_batch 1)"),
    ("host_attn_ckpt", "host_attn", "checkpointing on / off (host attention-only)"),
)
COMPONENTS = ("model forward", "backward", "optimizer")
CAPTIONS = ("a red ball on green grass in the sun", "a red ball on a wooden kitchen table",
            "a red ball in the snow", "a red ball on a beach at dusk")
LEARNING_RATE = 4e-4


@dataclass
class Settings:
    channels: int = 64
    images: int = 4
    rank: int = 4
    accumulation: int = 4
    seed: int = 0
    threads: int = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs one fresh 2-step training run of every variant")
    parser.add_argument("--variants", default=",".join(TIMED), help=f"timed variants, comma separated (of {', '.join(VARIANTS)})")
    measure.add_settings_arguments(parser, Settings, ",".join(MEMORY))


# -- models and data ----------------------------------------------------------------------------------
@dataclass
class Data:
    latents: torch.Tensor     # [N, 4, 32, 32], an inference tensor as a LATENT from the executor
    positive: list            # CONDITIONING for TrainLoraNode: one [cond, {"pooled_output"}] per image
    conds: list               # the pack's model inputs per image (ordinary tensors, as training_conditionings)


def make_data(settings: Settings, bench_models: models.BenchModels) -> Data:
    from ..prism_core.host.diffusion import model_inputs
    clip = bench_models.clip
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.inference_mode():
        latents = torch.randn(settings.images, 4, 32, 32, generator=generator)
        positive = []
        for i in range(settings.images):
            cond, pooled = clip.encode_from_tokens(clip.tokenize(CAPTIONS[i % len(CAPTIONS)]), return_pooled=True)
            positive.append([cond, {"pooled_output": pooled}])
    conds = []
    with torch.inference_mode(False):
        for cond, extra in positive:
            inputs = model_inputs(bench_models.model, cond.clone(), extra["pooled_output"].clone(), 256, torch.device("cpu"))
            conds.append({k: v.detach().cpu().clone() for k, v in inputs.items()})
    return Data(latents, positive, conds)


def build_models(settings: Settings, kinds: set[str]) -> dict[str, models.BenchModels]:
    return {kind: models.build(settings.channels, 1, settings.seed, inference=(kind == "executor")) for kind in sorted(kinds)}


def wipe(bench_models: models.BenchModels) -> None:
    """Between runs: unload everything, and clear weight functions the host's last load left on the
    modules (its unload does not clear them outside lowvram mode; the next load would)."""
    import comfy.model_management
    comfy.model_management.unload_all_models()
    for module in bench_models.model.model.modules():
        for attribute in ("weight_function", "bias_function"):
            if attribute in module.__dict__:
                module.__dict__[attribute] = []
    gc.collect()


# -- instrumentation ------------------------------------------------------------------------------------
class Recorder:
    """Process-wide instrumentation: component timers, and a mark at the end of every AdamW step."""

    def __init__(self) -> None:
        self.timers = measure.Timers()
        self.marks: list[dict[str, Any]] | None = None
        self.optimizers: list[Any] = []

    def mark(self, optimizer: Any = None) -> None:
        if self.marks is not None:
            self.marks.append({"cpu": measure.clock(), "wall": time.perf_counter(), "timers": self.timers.snapshot()})
            if optimizer is not None:
                self.optimizers.append(optimizer)

    @contextlib.contextmanager
    def installed(self) -> Any:
        import comfy.model_base
        recorder = self
        adamw_step = torch.optim.AdamW.step

        def step(self_, *args: Any, **kwargs: Any) -> Any:
            with recorder.timers("optimizer"):
                result = adamw_step(self_, *args, **kwargs)
            recorder.mark(self_)
            return result

        with contextlib.ExitStack() as stack:
            stack.enter_context(measure.patched(comfy.model_base.BaseModel, "apply_model",
                                                self.timers.wrap("model forward", comfy.model_base.BaseModel.apply_model)))
            stack.enter_context(measure.patched(torch.autograd, "backward", self.timers.wrap("backward", torch.autograd.backward)))
            stack.enter_context(measure.patched(torch.nn.utils, "clip_grad_norm_",
                                                self.timers.wrap("optimizer", torch.nn.utils.clip_grad_norm_)))
            stack.enter_context(measure.patched(torch.optim.AdamW, "step", step))
            yield self


# -- the two trainers ------------------------------------------------------------------------------------
def attention_weight_keys(bench_models: models.BenchModels) -> set[str]:
    from ..prism_core.host import lora_targets
    return {f"{name}.weight" for name in lora_targets.attention_projections(bench_models.model)}


@contextlib.contextmanager
def restricted_to(keys: set[str]) -> Any:
    """TrainLoraNode attaches each adapter with ModelPatcher.add_weight_wrapper(key, adapter): keep only
    `keys`. Its loop, loss, sampler, optimizer and loading stay the host's own; the adapters it builds for
    other layers stay in its optimizer but get no gradient, and AdamW skips parameters without one."""
    import comfy.model_patcher
    original = comfy.model_patcher.ModelPatcher.add_weight_wrapper

    def add_weight_wrapper(self: Any, name: str, function: Callable) -> None:
        if name in keys:
            original(self, name, function)
    with measure.patched(comfy.model_patcher.ModelPatcher, "add_weight_wrapper", add_weight_wrapper):
        yield


def run_pack(spec: Spec, settings: Settings, bench_models: models.BenchModels, data: Data, steps: int) -> list[float]:
    from ..prism_core.training.config import LoraConfig
    from ..prism_core.training.stage2 import train_lora
    from ..prism_core.host import lora_layers
    from ..prism_core.host.internals.lora_adapters import trainable_parameters
    from ..prism_core.host.family import describe
    from ..prism_core.host.lora_targets import lora_targets
    from ..prism_core.host.stage2_backend import ComfyStage2Backend
    config = LoraConfig(rank=settings.rank, alpha=float(settings.rank), learning_rate=LEARNING_RATE, steps=steps,
                        gradient_accumulation=settings.accumulation, seed=settings.seed)
    model = bench_models.model
    with torch.inference_mode(False):
        family = describe(model, stage2=True)
        targets = lora_targets(model, family.lora)
        adapters = lora_layers.trainable_adapters(targets, config.rank, config.alpha, config.seed)
        with ComfyStage2Backend(model, adapters, family, targets, max_batch=spec.max_batch,
                                training_dtype="float32", checkpointing=spec.checkpointing) as backend:
            return train_lora(backend, data.latents, data.conds, trainable_parameters(adapters), config)


def run_host(spec: Spec, settings: Settings, bench_models: models.BenchModels, data: Data, steps: int) -> list[float]:
    import comfy.utils
    from comfy.weight_adapter import LoRAAdapter, adapter_maps
    from comfy_extras.nodes_train import TrainLoraNode
    algorithm = next(name for name, cls in adapter_maps.items() if cls is LoRAAdapter)
    restrict = restricted_to(attention_weight_keys(bench_models)) if spec.layers == "attention" else contextlib.nullcontext()
    with restrict, measure.patched(comfy.utils, "PROGRESS_BAR_ENABLED", False):
        _, _, loss_map, _ = TrainLoraNode().train(
            bench_models.model, {"samples": data.latents}, data.positive, batch_size=1, steps=steps,
            grad_accumulation_steps=settings.accumulation, learning_rate=LEARNING_RATE, rank=settings.rank,
            optimizer="AdamW", loss_function="MSE", seed=settings.seed, training_dtype="fp32", lora_dtype="fp32",
            algorithm=algorithm, gradient_checkpointing=spec.checkpointing, existing_lora="[None]")
    return list(loss_map["loss"])


def run_variant(name: str, settings: Settings, built: dict[str, models.BenchModels], data: dict[str, Data],
                recorder: Recorder, steps: int) -> dict[str, Any]:
    """One fresh training run of `steps` optimizer steps; returns per-step records (step 1 includes setup)."""
    spec = VARIANTS[name]
    bench_models = built[spec.weights]
    wipe(bench_models)
    torch.manual_seed(settings.seed)  # TrainLoraNode draws images and timesteps from the global RNG
    recorder.marks, recorder.optimizers = [], []
    recorder.mark()
    runner = run_pack if spec.trainer == "pack" else run_host
    loss = runner(spec, settings, bench_models, data[spec.weights], steps)
    marks, optimizers = recorder.marks, recorder.optimizers
    recorder.marks, recorder.optimizers = None, []
    updated = sum(1 for state in optimizers[-1].state.values() if state) if optimizers else 0
    in_optimizer = sum(len(g["params"]) for g in optimizers[-1].param_groups) if optimizers else 0
    del optimizers
    wipe(bench_models)
    records = []
    for k in range(1, len(marks)):
        a, b = marks[k - 1], marks[k]
        record = {"step": k, "total": b["cpu"] - a["cpu"], "wall": b["wall"] - a["wall"],
                  **measure.delta(b["timers"], a["timers"])}
        record["other"] = record["total"] - sum(record.get(c, 0.0) for c in COMPONENTS)
        records.append(record)
    if len(records) != steps:
        raise RuntimeError(f"{name}: expected {steps} optimizer steps, saw {len(records)}")
    return {"records": records, "loss": loss, "updated_tensors": updated, "optimizer_tensors": in_optimizer}


# -- timing ----------------------------------------------------------------------------------------------
def time_variants(settings: Settings, names: list[str], rounds: int) -> dict[str, Any]:
    kinds = {VARIANTS[n].weights for n in names}
    print(f"building models ({', '.join(sorted(kinds))} weights) ...", flush=True)
    built = build_models(settings, kinds)
    data = {kind: make_data(settings, bm) for kind, bm in built.items()}
    first = next(iter(built.values()))
    info = {"unet_parameters": models.parameter_count(first.model.model.diffusion_model),
            "attention_layers": len(attention_weight_keys(first))}
    records: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    first_steps: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    checks: dict[str, Any] = {}
    recorder = Recorder()
    with recorder.installed():
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            line = []
            for name in order:
                result = run_variant(name, settings, built, data, recorder, 2)
                first_steps[name].append(result["records"][0])
                records[name].append(result["records"][1])
                checks[name] = {"updated_tensors": result["updated_tensors"], "optimizer_tensors": result["optimizer_tensors"],
                                "first_loss": result["loss"][:4]}
                line.append(f"{name} {result['records'][1]['total']:.2f}/{result['records'][1]['wall']:.2f}")
            print(f"  round {r + 1}/{rounds} (measured step, CPU s/wall s): " + ", ".join(line), flush=True)
    return {"info": info, "records": records, "first_steps": first_steps, "checks": checks}


# -- memory ----------------------------------------------------------------------------------------------
def memory_worker(settings: Settings, name: str) -> dict[str, Any]:
    spec = VARIANTS[name]
    built = build_models(settings, {spec.weights})
    data = {spec.weights: make_data(settings, built[spec.weights])}
    gc.collect()
    baseline = measure.rss_mib()
    build_peak = measure.peak_rss_mib()
    reset = measure.reset_peak_rss()
    recorder = Recorder()
    start = time.perf_counter()
    with recorder.installed():
        result = run_variant(name, settings, built, data, recorder, 1)
    seconds = time.perf_counter() - start
    peak = measure.peak_rss_mib()
    return {"variant": name, "baseline_mib": baseline, "build_peak_mib": build_peak, "peak_mib": peak,
            "increment_mib": peak - baseline if reset else math.nan, "run_s": seconds,
            "step_record": result["records"][0]}


# -- report ----------------------------------------------------------------------------------------------
def report(settings: Settings, timing: dict[str, Any] | None, memory: dict[str, Any], machine: dict[str, Any],
           rounds: int) -> str:
    out = [f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; torch {machine['torch']} "
           f"({machine['torch_threads']} thread), Python {machine['python']}, ComfyUI {machine['comfyui_commit']}; "
           f"load average at start {machine['load_average'][0]:.1f}",
           f"work per optimizer step: {settings.accumulation} samples (gradient accumulation {settings.accumulation}), "
           f"rank {settings.rank}, float32, {settings.images} images, 32x32 latents, UNet channels {settings.channels}, seed {settings.seed}"]
    if timing:
        info, records, checks = timing["info"], timing["records"], timing["checks"]
        names = list(records)
        out.append(f"UNet {info['unet_parameters'] / 1e6:.1f} M parameters; {info['attention_layers']} attention projections adapted by the pack")
        out.append(f"\nseconds per optimizer step ({rounds} rounds, measured step of a fresh 2-step run; median [min-max])")
        out.append("| variant | CPU s | wall s | model forward | backward | optimizer | other | tensors updated / in optimizer |")
        out.append("|---|---|---|---|---|---|---|---|")
        for name in names:
            rs = records[name]
            comp = [measure.fmt(measure.summary([r.get(c, 0.0) for r in rs]), 3).split(" ")[0] for c in COMPONENTS + ("other",)]
            out.append(f"| {LABELS[name]} `{name}` | {measure.fmt(measure.summary([r['total'] for r in rs]))} | "
                       f"{measure.fmt(measure.summary([r['wall'] for r in rs]))} | " + " | ".join(comp) +
                       f" | {checks[name]['updated_tensors']} / {checks[name]['optimizer_tensors']} |")
        out.append("\nratios, paired within a round (CPU time; wall time), median [min-max]")
        out.append("| ratio | what | CPU time | wall time |")
        out.append("|---|---|---|---|")
        for a, b, what in RATIOS:
            if a in records and b in records:
                cpu = [x["total"] / y["total"] for x, y in zip(records[a], records[b])]
                wall = [x["wall"] / y["wall"] for x, y in zip(records[a], records[b])]
                out.append(f"| {a} / {b} | {what} | {measure.fmt(measure.summary(cpu), 3)} | {measure.fmt(measure.summary(wall), 3)} |")
        out.append("\nfirst step of each run (setup + AdamW state creation + 1 step), CPU s median: " + ", ".join(
            f"{n} {measure.summary([r['total'] for r in timing['first_steps'][n]])['median']:.2f}" for n in names))
    if memory:
        out.append("\npeak memory (fresh process per variant; training = peak during a whole 1-step run minus RSS after build)")
        out.append("| variant | RSS after build MiB | peak MiB | training MiB |")
        out.append("|---|---|---|---|")
        for name, m in memory.items():
            out.append(f"| {LABELS[name]} `{name}` | {m['baseline_mib']:.0f} | {m['peak_mib']:.0f} | {m['increment_mib']:.0f} |")
    return "\n".join(out)


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
    unknown = sorted(set(names + mem_names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    started = time.perf_counter()
    timing = time_variants(settings, names, args.rounds) if names else None
    memory = measure.run_memory("stage2", settings, mem_names, args.memory_parallel) if mem_names else {}
    text = report(settings, timing, memory, machine, args.rounds)
    print()
    print(text)
    print(f"\n(bench wall time {time.perf_counter() - started:.0f} s)")
    if args.json:
        measure.dump_json(args.json, {"settings": dataclasses.asdict(settings), "machine": machine,
                                      "timing": timing, "memory": memory, "report": text})
    return 0
