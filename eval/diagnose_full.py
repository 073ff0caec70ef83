"""Diagnostics for the 'full' row (caption initialisation), run after the Table-2 run: not part of
the protocol, only to say what was tried when full - target_only did not hold (RESULTS.md).

Usage: COMFYUI_PATH=<ComfyUI> python eval/diagnose_full.py
Units: the host-test slice (seed 0 of yellow_striped_circle and blue_dotted_circle), Stage 1 only, at
the full budget. Variants of 'full':
- beta_x10: exclusion weight 0.5 instead of 0.05;
- init_rescaled: the caption initialisation rescaled to the vocabulary's mean input-embedding norm.
  The caption vector is a mean of *final-layer* hidden states (paper Sec. 3.3, reference code), which
  live at a far larger norm than input embeddings; this checks whether that scale is what goes wrong.
Writes artifacts/table2/diagnostics/<concept>__<variant>__seed0.json and prints a table.
"""
from __future__ import annotations

import contextlib
import json

import host

host.setup_host()

import numpy as np  # noqa: E402
import torch  # noqa: E402

import classifiers  # noqa: E402
import concepts  # noqa: E402
import experiment  # noqa: E402
from world_model import load_world_model  # noqa: E402

from comfyui_conceptprism.prism_core.host import stage1_backend  # noqa: E402

OUT = host.ARTIFACTS / "table2" / "diagnostics"


@contextlib.contextmanager
def rescaled_caption_init(log: list[float]):
    """Scale every caption vector to the vocabulary's mean row norm; `log` gets the factors used."""
    original = stage1_backend.ComfyStage1Backend.caption_embedding

    def caption_embedding(self, caption: str) -> dict[str, torch.Tensor]:
        out = {}
        statistics = self.vocabulary_statistics()  # once per caption, not per encoder: it scans the whole table
        for key, vector in original(self, caption).items():
            mean, std = statistics[key]
            vocabulary_norm = float(torch.sqrt((mean ** 2 + std ** 2).sum()))  # E||row|| ~ sqrt(sum(mean^2 + std^2))
            log.append(float(vector.norm()) / vocabulary_norm)
            out[key] = vector * (vocabulary_norm / vector.norm())
        return out
    stage1_backend.ComfyStage1Backend.caption_embedding = caption_embedding
    try:
        yield
    finally:
        stage1_backend.ComfyStage1Backend.caption_embedding = original


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    wm = load_world_model(host.ARTIFACTS / "world_model.safetensors")
    net = classifiers.load(host.ARTIFACTS / "classifiers.safetensors")
    budget = experiment.BUDGETS["test"]
    names = [c.name for c in concepts.CONCEPTS]
    ratios: list[float] = []
    variants = {"beta_x10": ({"beta": 0.5}, contextlib.nullcontext()),
                "init_rescaled": ({}, rescaled_caption_init(ratios))}
    for variant, (overrides, context) in variants.items():
        with context:
            for name in budget.concepts:
                path = OUT / f"{name}__{variant}__seed0.json"
                if not path.exists():
                    record = experiment.run_unit(wm, net, names.index(name), "full", 0, budget, stage2=False,
                                                 token_overrides=overrides)
                    record["variant"] = variant
                    path.write_text(json.dumps(record, indent=1) + "\n")
                record = json.loads(path.read_text())
                tokens = {k: v for k, v in record["tokens"].items() if k != "per_image"}
                print(f"{name} {variant}: {json.dumps(tokens)}", flush=True)
    if ratios:
        print(f"caption vector norm / vocabulary row norm: {np.mean(ratios):.1f} (mean over {len(ratios)} captions)")


if __name__ == "__main__":
    main()
