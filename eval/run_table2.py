"""The Table-2 experiment on the synthetic world (protocol.md): Stage 1 (+ Stage 2) per configuration,
concept and seed, judged by the attribute classifiers.

Usage (from the repository root):
    python eval/run_table2.py --budget full                # every concept x configuration x seed
    python eval/run_table2.py --budget smoke               # 1 concept, 1 seed, a few steps: the pipeline works
    python eval/run_table2.py --budget full --shard 0/2    # half the units (run 1/2 in a second process)
    python eval/run_table2.py --budget full --summarize    # only (re)write the summary from finished units

One *unit* is (concept, configuration, seed): learn tokens with `prism_host.stage1.learn_tokens`,
generate and score, train the LoRA with `prism_host.stage2.train_concept_lora`, generate and score
again. Prompts are encoded by the Prism Conditioning node's own code. Each unit writes one JSON file
and is skipped when that file exists, so a run can be interrupted, sharded and resumed. The unit
'text_prompt' is the reference row: the world model prompted with the object's words instead of [V].
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import host

host.setup_host()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import comfy.model_management  # noqa: E402

import classifiers  # noqa: E402
import concepts  # noqa: E402
import metrics  # noqa: E402
import world  # noqa: E402
from generate import SamplerSettings, conditioning_tensor, encode_text, generate  # noqa: E402
from world_model import WorldModel, load_world_model  # noqa: E402

from comfyui_conceptprism.nodes.conditioning import PrismConditioning  # noqa: E402
from comfyui_conceptprism.prism_core.concept_set import ConceptSet, from_batch  # noqa: E402
from comfyui_conceptprism.prism_core.config import TABLE2_CONFIGURATIONS, LoraConfig, TokenConfig  # noqa: E402
from comfyui_conceptprism.prism_core.token_bank import PrismTokens  # noqa: E402
from comfyui_conceptprism.prism_host.stage1 import RunOptions, learn_tokens  # noqa: E402
from comfyui_conceptprism.prism_host.stage2 import apply_lora, train_concept_lora  # noqa: E402

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


BUDGETS = {
    "full": Budget(200, 1, 60, 1, 2, 2, tuple(c.name for c in concepts.CONCEPTS), concepts.SEEDS),
    "smoke": Budget(4, 1, 2, 1, 1, 1, (concepts.CONCEPTS[0].name,), (0,)),
}


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
          scene_list: list[world.Scene], budget: Budget, gen_seed: int) -> dict[str, float]:
    """Generate '[V] on <new background>' (and '<t_res(i)>' alone) and score them."""
    backgrounds = concepts.new_backgrounds(scene_list)
    wanted = [bg for bg in backgrounds for _ in range(budget.images_per_background)]
    if tokens is None:  # reference: the object's own words in place of [V]
        phrase = f"a {concept.size} {concept.colour} {concept.pattern} {concept.shape}"
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
    return {k: round(v, 4) for k, v in out.items()}


def run_unit(wm: WorldModel, net: classifiers.AttributeNet, index: int, config_name: str, seed: int, budget: Budget) -> dict:
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
                                  "gradient_accumulation": budget.stage1_accumulation, "seed": seed})
    t0 = time.time()
    tokens = learn_tokens(wm.model, wm.clip, wm.vae, concept_set, token_config, RunOptions())
    t1 = time.time()
    record["tokens"] = score(wm, net, tokens, concept, scene_list, budget, gen_seed)
    t2 = time.time()
    lora_config = LoraConfig(steps=budget.stage2_steps, gradient_accumulation=budget.stage2_accumulation, seed=seed)
    run = train_concept_lora(wm.model, wm.clip, wm.vae, concept_set, tokens, lora_config, RunOptions())
    t3 = time.time()
    record["lora"] = score(dataclasses.replace(wm, model=apply_lora(wm.model, run.weights)), net, tokens, concept,
                           scene_list, budget, gen_seed)
    # Put the base weights back before the next unit, so its Stage 1 starts from an unpatched model.
    # (When the LoRA model was sampled outside inference mode, the next Stage 1 failed with "Inference
    # tensors cannot be saved for backward": the pack inspects its clone while the patched weights are
    # still in place. Sampling runs under inference mode here, as in ComfyUI; this stays as a guard.)
    comfy.model_management.unload_all_models()
    record["seconds"] = {"stage1": round(t1 - t0, 1), "eval_tokens": round(t2 - t1, 1), "stage2": round(t3 - t2, 1),
                         "eval_lora": round(time.time() - t3, 1)}
    record["stage1_loss"] = {"rec": [round(x, 5) for x in tokens.history.rec], "excl": [round(x, 5) for x in tokens.history.excl]}
    record["stage2_loss"] = [round(x, 5) for x in run.loss]
    return record


def units(budget: Budget, configs: list[str]) -> list[tuple[int, str, int]]:
    names = [c.name for c in concepts.CONCEPTS]
    return [(names.index(name), config, seed) for seed in budget.seeds for name in budget.concepts for config in configs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    parser.add_argument("--configs", default=",".join([*TABLE2_CONFIGURATIONS, REFERENCE]))
    parser.add_argument("--out", type=Path, default=None, help="results folder (default eval/artifacts/table2/<budget>)")
    parser.add_argument("--shard", default="0/1", help="k/n: run every n-th unit starting at k")
    parser.add_argument("--summarize", action="store_true", help="only summarise finished units")
    parser.add_argument("--model", type=Path, default=host.ARTIFACTS / "world_model.safetensors")
    parser.add_argument("--classifiers", type=Path, default=host.ARTIFACTS / "classifiers.safetensors")
    args = parser.parse_args()
    budget = BUDGETS[args.budget]
    out = args.out or host.ARTIFACTS / "table2" / args.budget
    out.mkdir(parents=True, exist_ok=True)
    configs = args.configs.split(",")
    if not args.summarize:
        k, n = map(int, args.shard.split("/"))
        wm = load_world_model(args.model)
        net = classifiers.load(args.classifiers)
        todo = units(budget, configs)[k::n]
        for number, (index, config, seed) in enumerate(todo, 1):
            path = out / f"{concepts.CONCEPTS[index].name}__{config}__seed{seed}.json"
            if path.exists():
                continue
            start = time.time()
            record = run_unit(wm, net, index, config, seed, budget)
            record["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}
            path.write_text(json.dumps(record, indent=1) + "\n")
            print(f"[{number}/{len(todo)}] {path.name} {time.time() - start:.0f}s "
                  f"{json.dumps({k: record.get(k) for k in ('tokens', 'lora', 'text') if k in record})}", flush=True)
    from summarize_table2 import summarize
    summary = summarize(out, budget, configs)
    print(summary)


if __name__ == "__main__":
    main()
