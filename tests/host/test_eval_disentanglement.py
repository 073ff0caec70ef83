"""The method's central claim on the synthetic world (eval/, issue 6), from the cached world model.

A slice of the Table-2 experiment (eval/protocol.md): seed 0 of one held-out and one seen concept
(`experiment.BUDGETS["test"]`), Stage 1 in the 'target_only' and 'full' configurations at the full
experiment's per-unit budget, the same prompts and generation noise for both. The statistic is a
paired bootstrap over the generated '[V] on <new background>' images (same prompt, same noise):
- concept fidelity (object attributes recovered by the classifiers): full - target_only has a 95%
  interval above 0;
- text alignment (background as prompted): full - target_only has a 95% interval above -ALIGNMENT_MARGIN.
The full experiment (every concept and seed, Stage 2 too, bootstrap over (concept, seed) units) is
eval/RESULTS.md. Needs eval/artifacts/ (built by eval/build_world.sh, about 90 CPU-minutes; git-ignored).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from host_setup import PACK_ROOT, require_host

require_host()

ARTIFACTS = PACK_ROOT / "eval" / "artifacts"
WORLD_MODEL = ARTIFACTS / "world_model.safetensors"
CLASSIFIERS = ARTIFACTS / "classifiers.safetensors"
if not (WORLD_MODEL.is_file() and CLASSIFIERS.is_file()):
    pytest.skip(f"synthetic-world artifacts absent ({WORLD_MODEL.name}, {CLASSIFIERS.name} in eval/artifacts/): "
                "build them with `COMFYUI_PATH=<ComfyUI> eval/build_world.sh` (about 90 CPU-minutes)", allow_module_level=True)

# eval/ is a folder of scripts, not a package; appended (not prepended) so it shadows nothing.
sys.path.append(str(PACK_ROOT / "eval"))

import classifiers  # noqa: E402
import concepts  # noqa: E402
import experiment  # noqa: E402
import metrics  # noqa: E402
from world_model import load_world_model  # noqa: E402

ALIGNMENT_MARGIN = 0.10  # full may cost at most this much background alignment (fraction of attributes right)


def test_full_configuration_beats_target_only_on_fidelity_at_equal_alignment():
    world_model = load_world_model(WORLD_MODEL)
    net = classifiers.load(CLASSIFIERS)
    budget = experiment.BUDGETS["test"]
    names = [c.name for c in concepts.CONCEPTS]
    per_config: dict[str, dict[str, list[float]]] = {}
    for config in ("target_only", "full"):
        per_config[config] = {"fidelity": [], "alignment": []}
        for name in budget.concepts:
            for seed in budget.seeds:
                record = experiment.run_unit(world_model, net, names.index(name), config, seed, budget, stage2=False)
                for metric in ("fidelity", "alignment"):
                    per_config[config][metric] += record["tokens"]["per_image"][metric]
    results = {}
    for metric in ("fidelity", "alignment"):
        full, target_only = (np.array(per_config[c][metric]) for c in ("full", "target_only"))
        assert full.shape == target_only.shape and full.size >= 40
        results[metric] = metrics.bootstrap_difference(full, target_only)
        print(f"{metric}: full {full.mean():.3f}, target_only {target_only.mean():.3f}, "
              f"difference {results[metric][0]:+.3f} [{results[metric][1]:+.3f}, {results[metric][2]:+.3f}] ({full.size} image pairs)")
    assert results["fidelity"][1] > 0, f"fidelity: full - target_only 95% interval {results['fidelity'][1:]} does not lie above 0"
    assert results["alignment"][1] > -ALIGNMENT_MARGIN, (
        f"alignment: full - target_only 95% interval {results['alignment'][1:]} reaches below -{ALIGNMENT_MARGIN}")
