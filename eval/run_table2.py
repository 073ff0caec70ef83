"""The Table-2 experiment on the synthetic world (protocol.md): Stage 1 (+ Stage 2) per configuration,
concept and seed, judged by the attribute classifiers.

Usage (from the repository root):
    python eval/run_table2.py --budget full                # every concept x configuration x seed
    python eval/run_table2.py --budget smoke               # 1 concept, 1 seed, a few steps: the pipeline works
    python eval/run_table2.py --budget full --shard 0/2    # half the units (run 1/2 in a second process)
    python eval/run_table2.py --budget full --summarize    # only (re)write the summary from finished units

One *unit* is (concept, configuration, seed): learn tokens with `prism_core.host.stage1.learn_tokens`,
generate and score, train the LoRA with `prism_core.host.stage2.train_concept_lora`, generate and score
again. Prompts are encoded by the Prism Conditioning node's own code. Each unit writes one JSON file
and is skipped when that file exists, so a run can be interrupted, sharded and resumed. The unit
'text_prompt' is the reference row: the world model prompted with the object's words instead of [V].
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import time
from pathlib import Path

import host

host.setup_host()

import torch  # noqa: E402

import classifiers  # noqa: E402
import concepts  # noqa: E402
from experiment import BUDGETS, REFERENCE, Budget, run_unit  # noqa: E402
from world_model import load_world_model  # noqa: E402

from comfyui_conceptprism.prism_core.training.config import TABLE2_CONFIGURATIONS  # noqa: E402


def units(budget: Budget, configs: list[str]) -> list[tuple[int, str, int]]:
    names = [c.name for c in concepts.CONCEPTS]
    return [(names.index(name), config, seed) for seed in budget.seeds for name in budget.concepts for config in configs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    parser.add_argument("--configs", default=",".join([*TABLE2_CONFIGURATIONS, REFERENCE]))
    parser.add_argument("--concepts", default=None, help="comma-separated concept names (default: the budget's)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default eval/artifacts/table2/<budget>)")
    parser.add_argument("--shard", default="0/1", help="k/n: run every n-th unit starting at k")
    parser.add_argument("--summarize", action="store_true", help="only summarise finished units")
    parser.add_argument("--model", type=Path, default=host.ARTIFACTS / "world_model.safetensors")
    parser.add_argument("--classifiers", type=Path, default=host.ARTIFACTS / "classifiers.safetensors")
    args = parser.parse_args()
    budget = BUDGETS[args.budget]
    if args.concepts:
        budget = dataclasses.replace(budget, concepts=tuple(args.concepts.split(",")))
    out = args.out or host.ARTIFACTS / "table2" / args.budget
    out.mkdir(parents=True, exist_ok=True)
    configs = args.configs.split(",")
    if not args.summarize:
        k, n = map(int, args.shard.split("/"))
        wm = load_world_model(args.model)
        model_id = {"file": args.model.name, "sha256": hashlib.sha256(args.model.read_bytes()).hexdigest()}
        net = classifiers.load(args.classifiers)
        todo = units(budget, configs)[k::n]
        for number, (index, config, seed) in enumerate(todo, 1):
            path = out / f"{concepts.CONCEPTS[index].name}__{config}__seed{seed}.json"
            if path.exists():
                continue
            start = time.time()
            record = run_unit(wm, net, index, config, seed, budget)
            record["world_model"] = model_id
            record["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}
            partial = path.with_suffix(".part")  # a killed run leaves no unit file that looks finished
            partial.write_text(json.dumps(record, indent=1) + "\n")
            partial.replace(path)
            print(f"[{number}/{len(todo)}] {path.name} {time.time() - start:.0f}s "
                  f"{json.dumps({k: {m: v for m, v in record[k].items() if m != 'per_image'} for k in ('tokens', 'lora', 'text') if k in record})}", flush=True)
    from summarize_table2 import summarize
    summary = summarize(out, budget, configs)
    print(summary)


if __name__ == "__main__":
    main()
