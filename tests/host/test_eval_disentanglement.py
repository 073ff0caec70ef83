"""The method's central claim on the synthetic world (eval/, issue 6), from the cached world model.

A slice of the Table-2 experiment (eval/protocol.md): seed 0 of one held-out and one seen concept
(`experiment.BUDGETS["test"]`), Stage 1 at the full experiment's per-unit budget, with the same
prompts and generation noise for every configuration. The statistic is a paired bootstrap over the
generated '[V] on <new background>' images (same prompt, same noise), configuration - target_only:
- concept fidelity (object attributes recovered by the classifiers): 95% interval above 0;
- text alignment (background as prompted): 95% interval above -ALIGNMENT_MARGIN.
The issue's claim is for the full configuration (caption initialisation); on this world it does not
hold, and the test says so as an expected failure. Rows 2-3 (residual tokens + exclusion loss, random
init) do hold it, checked alongside. The whole experiment (every concept and seed, Stage 2 too) and
what was tried: eval/RESULTS.md. Needs eval/artifacts/ (eval/build_world.sh; git-ignored).
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
                "build them with `COMFYUI_PATH=<ComfyUI> eval/build_world.sh` (about 150 CPU-minutes)", allow_module_level=True)

# eval/ is a folder of scripts, not a package; appended (not prepended) so it shadows nothing.
sys.path.append(str(PACK_ROOT / "eval"))

import classifiers  # noqa: E402
import concepts  # noqa: E402
import experiment  # noqa: E402
import metrics  # noqa: E402
from world_model import load_world_model  # noqa: E402

ALIGNMENT_MARGIN = 0.10  # a row may cost at most this much background alignment (fraction of attributes right)
CONFIGURATIONS = ("target_only", "residual_exclusion", "full")


@pytest.fixture(scope="module")
def per_image() -> dict[str, dict[str, np.ndarray]]:
    """{configuration: {'fidelity' | 'alignment': float [images]}}, images in the same order for each."""
    world_model = load_world_model(WORLD_MODEL)
    net = classifiers.load(CLASSIFIERS)
    budget = experiment.BUDGETS["test"]
    names = [c.name for c in concepts.CONCEPTS]
    out = {}
    for config in CONFIGURATIONS:
        scores: dict[str, list[float]] = {"fidelity": [], "alignment": []}
        for name in budget.concepts:
            for seed in budget.seeds:
                record = experiment.run_unit(world_model, net, names.index(name), config, seed, budget, stage2=False)
                for metric in scores:
                    scores[metric] += record["tokens"]["per_image"][metric]
        out[config] = {metric: np.array(values) for metric, values in scores.items()}
    return out


def _check_against_target_only(per_image: dict, config: str) -> None:
    results = {}
    for metric in ("fidelity", "alignment"):
        row, baseline = per_image[config][metric], per_image["target_only"][metric]
        assert row.shape == baseline.shape and row.size >= 40
        results[metric] = metrics.bootstrap_difference(row, baseline)
        print(f"{config} - target_only, {metric}: {row.mean():.3f} - {baseline.mean():.3f} = {results[metric][0]:+.3f} "
              f"[{results[metric][1]:+.3f}, {results[metric][2]:+.3f}] ({row.size} image pairs)")
    assert results["fidelity"][1] > 0, f"fidelity: {config} - target_only 95% interval {results['fidelity'][1:]} does not lie above 0"
    assert results["alignment"][1] > -ALIGNMENT_MARGIN, (
        f"alignment: {config} - target_only 95% interval {results['alignment'][1:]} reaches below -{ALIGNMENT_MARGIN}")


def test_residual_tokens_with_exclusion_beat_target_only_on_fidelity_at_equal_alignment(per_image):
    _check_against_target_only(per_image, "residual_exclusion")


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "finding (eval/RESULTS.md): on this world the caption initialisation starts every residual token at the "
    "caption's mean final-layer state, which names the object; the residual tokens keep the object and the "
    "target token learns less than target-only's (full run: fidelity -0.17, 95% CI [-0.23, -0.11])"))
def test_full_configuration_beats_target_only_on_fidelity_at_equal_alignment(per_image):
    _check_against_target_only(per_image, "full")
