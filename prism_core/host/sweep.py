"""The checkpoint sweep on the host: find the run's Stage 2 checkpoints, render a prompt set with each
(and with the untrained tokens on the base model as step 0), score the renders, pick a step.

Rendering uses the host's own pieces exactly as a stock graph would: EmptyLatentImage, KSampler
and VAEDecode (the nodes' own functions); each checkpoint is applied as LoraLoaderModelOnly applies a file
(``comfy.utils.load_torch_file`` + ``comfy.sd.load_lora_for_models`` on the incoming model, model
strength 1), so the chosen step's MODEL output equals loading that file with Load LoRA.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths

from ..formats.files import read_metadata, split_prefix
from ..formats.lora_file import FORMAT, token_summary
from ..judging.scores import mean_score
from ..judging.sweep import Candidate, Choice, SweepCost, SweepPoint, check_cost, choose_checkpoint, header_steps, header_tokens_hash, run_checkpoints
from ..formats.token_bank import PrismTokens
from .folders import first_folder
from .stock_nodes import apply_lora_file, render
from .runtime import show_text
from .scoring import preflight, score_images

log = logging.getLogger("ConceptPrism")


@dataclass(frozen=True)
class SweepSettings:
    """How each candidate is rendered and judged."""

    prompts: list[str]  # templates with `placeholder` where the concept goes
    class_noun: str
    seeds: int  # renders per prompt, seeds seed, seed+1, ...
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    width: int
    height: int
    clip_t_tolerance: float
    max_sampler_steps: int
    placeholder: str = "[V]"


@dataclass
class SweepResult:
    points: list[SweepPoint]
    choice: Choice
    images: torch.Tensor  # IMAGE [candidates * prompts * seeds, H, W, 3], candidate-major, then prompt, then seed
    cost: SweepCost


def checkpoint_files(prefix: str) -> list[tuple[str, Path]]:
    """(name as LoraLoader lists it, path) of every `<prefix>_stepNNNN_NNNNN_.safetensors` in the first
    loras folder (where Prism LoRA Train writes checkpoints), in counter order."""
    root = first_folder("loras")
    directory, stem = split_prefix(root, prefix)
    pattern = re.compile(re.escape(stem) + r"_step\d+_(\d+)_\.safetensors$")
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name))] if directory.is_dir() else []
    root = root.resolve()
    return [(p.resolve().relative_to(root).as_posix(), p) for _, p in sorted(found)]


def run_candidates(lora_name: str, checkpoint_prefix: str, tokens: PrismTokens) -> list[Candidate]:
    """Step 0, the run's checkpoints and the final LoRA `lora_name`, in step order.

    Raises when lora_name is not a ConceptPrism LoRA, when `tokens` are not the ones it was trained
    with, or when no checkpoint of its run is found (checkpoint_every was 0, or another prefix).
    """
    final_path = Path(folder_paths.get_full_path_or_raise("loras", lora_name))
    final = read_metadata(final_path)
    if final.get("conceptprism.format") != FORMAT:
        raise ValueError(f"lora_name: {lora_name} is not a ConceptPrism LoRA (no '{FORMAT}' header). Connect the name "
                         "Save Prism LoRA outputs for the run to sweep.")
    if header_tokens_hash(final) != token_summary(tokens)["sha256"]:
        raise ValueError(f"tokens: these are not the tokens {lora_name} was trained with, so step 0 would not be its run's "
                         "starting point. Connect the tokens that went into Prism LoRA Train.")
    files = checkpoint_files(checkpoint_prefix)
    checkpoints = run_checkpoints(final, [(name, read_metadata(path)) for name, path in files])
    if not checkpoints:
        raise ValueError(
            f"No checkpoints of this run ({lora_name}, {header_steps(final)} steps) in models/loras/{checkpoint_prefix}_step*: "
            f"{len(files)} files with that prefix, none from this run. Set checkpoint_every on Prism LoRA Train (the paper "
            "compared every 40 steps) and give checkpoint_prefix here the same value as there, then train again.")
    return [Candidate(0, None), *checkpoints, Candidate(header_steps(final), lora_name)]


def run_sweep(model: Any, vae: Any, encode: Callable[[str], Any], negative: Any, references: torch.Tensor,
              candidates: list[Candidate], settings: SweepSettings, score_clip: Any, clip_vision: Any, dino: Any,
              node_id: str | None = None) -> SweepResult:
    """Render every candidate x prompt x seed, score the renders, choose a step.

    encode(template) gives the positive CONDITIONING of a template (the learned token at the
    placeholder); `negative` is shared. The cost is shown (node text and log) and checked against
    max_sampler_steps before anything is rendered; the models are checked before too.
    """
    cost = SweepCost(len(candidates), len(settings.prompts), settings.seeds, settings.steps)
    check_cost(cost, settings.max_sampler_steps)
    preflight(settings.prompts, references, settings.placeholder, settings.class_noun, score_clip, clip_vision, dino)
    message = f"Checkpoint sweep: {cost.describe()} (cap {settings.max_sampler_steps})"
    log.info(message)
    show_text(message, node_id)
    positives = [encode(template) for template in settings.prompts]
    renders = []
    done = 0
    for candidate in candidates:
        patched = apply_lora_file(model, candidate.lora_name)
        for template, positive in zip(settings.prompts, positives):
            for seed in range(settings.seed, settings.seed + settings.seeds):
                comfy.model_management.throw_exception_if_processing_interrupted()
                show_text(f"{message}\nrendering {done + 1}/{cost.images}: step {candidate.step}, '{template}', seed {seed}", node_id)
                renders.append(render(patched, vae, positive, negative, settings.width, settings.height, seed,
                                      settings.steps, settings.cfg, settings.sampler_name, settings.scheduler))
                done += 1
    images = torch.cat(renders)
    show_text(f"{message}\nscoring {cost.images} images", node_id)
    prompts = [t for _ in candidates for t in settings.prompts for _ in range(settings.seeds)]
    rows = score_images(images, prompts, references, settings.placeholder, settings.class_noun,
                        clip=score_clip, clip_vision=clip_vision, dino=dino)
    size = len(settings.prompts) * settings.seeds  # renders per candidate
    scores = [rows[k * size:(k + 1) * size] for k in range(len(candidates))]
    points = [SweepPoint(c.step, c.lora_name, mean_score(s, "CLIP-T"), mean_score(s, "CLIP-I"), mean_score(s, "DINO"))
              for c, s in zip(candidates, scores)]
    choice = choose_checkpoint(points, settings.clip_t_tolerance)
    log.info("Checkpoint sweep chose %s", choice.reason)
    show_text(f"{message}\nchosen: {choice.point.lora_name}\n{choice.reason}", node_id)
    return SweepResult(points, choice, images, cost)
