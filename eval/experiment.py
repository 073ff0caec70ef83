"""One Table-2 unit on the synthetic world (protocol.md): learn tokens for a concept set in one
configuration and seed, generate and score; then train the LoRA, generate and score again.

Import-safe: this module sets nothing up (no thread count, no host path), so the host-tier test and
`run_table2.py` (the CLI, which sets up the host first) share it. The caller must have ComfyUI importable.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
import comfy.model_management

import classifiers
import concepts
import metrics
import world
from generate import SamplerSettings, conditioning_tensor, encode_text, generate
from world_model import WorldModel

from comfyui_conceptprism.nodes.conditioning import PrismConditioning
from comfyui_conceptprism.prism_core.concept_input.concept_set import ConceptSet, from_batch
from comfyui_conceptprism.prism_core.training.config import TABLE2_CONFIGURATIONS, LoraConfig, TokenConfig
from comfyui_conceptprism.prism_core.formats.token_bank import PrismTokens
from comfyui_conceptprism.prism_core.host.runtime import RunOptions
from comfyui_conceptprism.prism_core.host.stage1 import learn_tokens
from comfyui_conceptprism.prism_core.host.family import describe
from comfyui_conceptprism.prism_core.host.stage2 import train_concept_lora
from comfyui_conceptprism.prism_core.host.stock_nodes import apply_lora

REFERENCE = "text_prompt"
PLACEHOLDER = "[V]"


@dataclass(frozen=True)
class Budget:
    """How much work each unit does. 'full' is the committed experiment (protocol.md, "Budget")."""

    stage1_steps: int
    stage1_accumulation: int
    stage2_steps: int
    stage2_accumulation: int
    images_per_background: int  # '[V] on <new background>' images per new background
    residual_images: int  # '<t_res(i)>' images per concept-set image
    concepts: tuple[str, ...]
    seeds: tuple[int, ...]
    stage1_learning_rate: float = TokenConfig.learning_rate
    stage2_learning_rate: float = LoraConfig.learning_rate


BUDGETS = {
    # Stage 1 at 1.5e-2, not the pack's 4e-4: see protocol.md, "Changes recorded before the Table-2 run", 4.
    "full": Budget(200, 1, 60, 1, 2, 2, tuple(c.name for c in concepts.CONCEPTS), concepts.SEEDS, stage1_learning_rate=1.5e-2),
    "smoke": Budget(4, 1, 2, 1, 1, 1, (concepts.CONCEPTS[0].name,), (0,)),
}
# One concept and seed at the full per-unit budget: measures what a unit costs.
BUDGETS["timing"] = dataclasses.replace(BUDGETS["full"], concepts=BUDGETS["smoke"].concepts, seeds=(0,))
# The host-tier test's slice of the full experiment (Stage 1 only there): seed 0 of the first held-out
# and the first seen concept, at the full per-unit budget, so its units are the full run's units.
BUDGETS["test"] = dataclasses.replace(BUDGETS["full"], concepts=(concepts.CONCEPTS[0].name, concepts.CONCEPTS[4].name), seeds=(0,))


def concept_set_for(index: int) -> tuple[concepts.Concept, list[world.Scene], ConceptSet]:
    """The concept's 5 scenes and the pack's CONCEPT_SET for them (full captions, for caption init)."""
    concept = concepts.CONCEPTS[index]
    scene_list = concepts.concept_scenes(concept, index)
    pixels = torch.from_numpy(world.render_batch(scene_list))
    captions = [world.caption(s) for s in scene_list]
    return concept, scene_list, from_batch(pixels, world.SIZE, captions, "eval concept set")


def generation_seed(seed: int, index: int) -> int:
    # Shared by every configuration and stage of a (concept, seed): differences are not noise draws.
    return 100_000 + 1_000 * seed + index


def target_prompts(wm: WorldModel, tokens: PrismTokens, backgrounds: list[tuple[str, str]], repeat: int) -> torch.Tensor:
    node = PrismConditioning()
    rows = [conditioning_tensor(node.encode(wm.clip, tokens, world.prompt_on_background(PLACEHOLDER, c, p), PLACEHOLDER, "target", 0)[0])
            for c, p in backgrounds for _ in range(repeat)]
    return torch.cat(rows)


def residual_prompts(wm: WorldModel, tokens: PrismTokens, n_images: int, repeat: int) -> torch.Tensor:
    node = PrismConditioning()
    rows = [conditioning_tensor(node.encode(wm.clip, tokens, PLACEHOLDER, PLACEHOLDER, "residual only", i)[0])
            for i in range(n_images) for _ in range(repeat)]
    return torch.cat(rows)


def score(wm: WorldModel, net: classifiers.AttributeNet, tokens: PrismTokens | None, concept: concepts.Concept,
          scene_list: list[world.Scene], budget: Budget, gen_seed: int) -> dict[str, Any]:
    """Generate '[V] on <new background>' (and '<t_res(i)>' alone) and score them: the metrics of
    protocol.md, rounded, plus 'per_image' {'fidelity', 'alignment'}: lists over the '[V] on <new
    background>' images in prompt order (the same order and noise for every configuration)."""
    backgrounds = concepts.new_backgrounds(scene_list)
    wanted = [bg for bg in backgrounds for _ in range(budget.images_per_background)]
    if tokens is None:  # reference: the object's own words in place of [V] (every scene shows the same object)
        phrase = world.object_phrase(scene_list[0])
        cond = encode_text(wm, [world.prompt_on_background(phrase, c, p) for c, p in wanted])
    else:
        cond = target_prompts(wm, tokens, backgrounds, budget.images_per_background)
    n_target = cond.shape[0]
    has_residual = tokens is not None and tokens.residual_length > 0
    if has_residual:
        cond = torch.cat([cond, residual_prompts(wm, tokens, len(scene_list), budget.residual_images)])
    predicted = classifiers.predict(net, generate(wm, cond, gen_seed, SamplerSettings()))
    head = {k: v[:n_target] for k, v in predicted.items()}
    out = {**metrics.concept_fidelity(head, concept.attributes()), **metrics.background_match(head, wanted)}
    if has_residual:
        own = [(s.bg_colour, s.bg_pattern) for s in scene_list for _ in range(budget.residual_images)]
        out.update(metrics.residual_alone({k: v[n_target:] for k, v in predicted.items()}, own))
    per_image = {"fidelity": metrics.fidelity_per_image(head, concept.attributes()).tolist(),
                 "alignment": metrics.alignment_per_image(head, wanted).tolist()}
    return {**{k: round(v, 4) for k, v in out.items()}, "per_image": per_image}


def run_unit(wm: WorldModel, net: classifiers.AttributeNet, index: int, config_name: str, seed: int, budget: Budget,
             stage2: bool = True, token_overrides: dict[str, Any] | None = None) -> dict:
    """The unit's record: the scores after Stage 1 ('tokens') and after Stage 2 ('lora', unless
    `stage2` is False), the loss curves and the seconds each part took. `index` into concepts.CONCEPTS;
    `token_overrides`: TokenConfig fields set on top of the configuration (diagnostics only)."""
    concept, scene_list, concept_set = concept_set_for(index)
    gen_seed = generation_seed(seed, index)
    record: dict = {"concept": concept.name, "held_out": concept.held_out, "config": config_name, "seed": seed,
                    "budget": dataclasses.asdict(budget), "generation_seed": gen_seed}
    if config_name == REFERENCE:
        start = time.time()
        record["text"] = score(wm, net, None, concept, scene_list, budget, gen_seed)
        record["seconds"] = {"eval": round(time.time() - start, 1)}
        return record
    token_config = TokenConfig(**{**TABLE2_CONFIGURATIONS[config_name], "steps": budget.stage1_steps,
                                  "learning_rate": budget.stage1_learning_rate,
                                  "gradient_accumulation": budget.stage1_accumulation, "seed": seed,
                                  **(token_overrides or {})})
    t0 = time.time()
    tokens = learn_tokens(wm.model, wm.clip, wm.vae, concept_set, token_config, RunOptions())
    t1 = time.time()
    record["tokens"] = score(wm, net, tokens, concept, scene_list, budget, gen_seed)
    t2 = time.time()
    record["stage1_loss"] = {"rec": [round(x, 5) for x in tokens.history.rec], "excl": [round(x, 5) for x in tokens.history.excl]}
    record["seconds"] = {"stage1": round(t1 - t0, 1), "eval_tokens": round(t2 - t1, 1)}
    if not stage2:
        return record
    lora_config = LoraConfig(steps=budget.stage2_steps, gradient_accumulation=budget.stage2_accumulation, seed=seed,
                             learning_rate=budget.stage2_learning_rate)
    run = train_concept_lora(wm.model, wm.clip, wm.vae, concept_set, tokens, lora_config, describe(wm.model),
                             RunOptions())
    t3 = time.time()
    record["lora"] = score(dataclasses.replace(wm, model=apply_lora(wm.model, run.weights)), net, tokens, concept,
                           scene_list, budget, gen_seed)
    # Put the base weights back before the next unit, so its Stage 1 starts from an unpatched model.
    # (When the LoRA model was sampled outside inference mode, the next Stage 1 failed with "Inference
    # tensors cannot be saved for backward": the pack inspects its clone while the patched weights are
    # still in place. Sampling runs under inference mode here, as in ComfyUI; this stays as a guard.)
    comfy.model_management.unload_all_models()
    record["seconds"].update({"stage2": round(t3 - t2, 1), "eval_lora": round(time.time() - t3, 1)})
    record["stage2_loss"] = [round(x, 5) for x in run.loss]
    return record
