"""Scores arithmetic, prompt sets, the sweep's rule, cost cap and run matching, and the pictures (no ComfyUI)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfyui_conceptprism.prism_core.judging import prompt_sets
from comfyui_conceptprism.prism_core.formats.lora_file import FORMAT, BaseFamily, lora_metadata
from comfyui_conceptprism.prism_core.judging.score_table import HIGHLIGHT_FILL, Table, draw_table
from comfyui_conceptprism.prism_core.judging.scores import (
    clip_t_prompt, cosine_matrix, image_scores, mean_score, prompts_per_image, scores_text)
from comfyui_conceptprism.prism_core.judging.sweep import (
    Candidate, SweepCost, SweepPoint, check_cost, choose_checkpoint, run_checkpoints, same_run)
from comfyui_conceptprism.prism_core.pictures.sweep_plot import CHOSEN, draw_tradeoff
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens


def test_cosines_and_means_equal_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    text, images, refs = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(2, 5, generator=g)
    dino_images, dino_refs = torch.randn(3, 4, generator=g), torch.randn(2, 4, generator=g)

    def cos(a, b):
        a, b = a.tolist(), b.tolist()
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    rows = image_scores(["p0", "p1", "p2"], text, images, refs, dino_images, dino_refs)
    for i, row in enumerate(rows):
        assert row.clip_t == pytest.approx(cos(text[i], images[i]), abs=1e-12)
        assert row.clip_i == pytest.approx((cos(images[i], refs[0]) + cos(images[i], refs[1])) / 2, abs=1e-12)
        assert row.dino == pytest.approx((cos(dino_images[i], dino_refs[0]) + cos(dino_images[i], dino_refs[1])) / 2, abs=1e-12)
    assert mean_score(rows, "DINO") == pytest.approx(sum(r.dino for r in rows) / 3)
    assert cosine_matrix(text, text).diagonal() == pytest.approx([1.0] * 3)
    only_dino = image_scores(["a", "b", "c"], None, None, None, dino_images, dino_refs)
    assert math.isnan(mean_score(only_dino, "CLIP-T")) and not math.isnan(mean_score(only_dino, "DINO"))
    assert scores_text(only_dino).splitlines()[-1].startswith("mean\t-\t-\t")
    with pytest.raises(ValueError, match="zero or not finite"):
        cosine_matrix(torch.zeros(1, 5), text)


def test_clip_t_reads_the_class_noun_and_refuses_what_clip_cannot_read():
    assert clip_t_prompt("a [V] in the  snow", "[V]", " dog ") == "a dog in the snow"
    assert clip_t_prompt("a dog in the snow", "[V]", "") == "a dog in the snow"  # nothing to replace
    with pytest.raises(ValueError, match="class_noun is empty"):
        clip_t_prompt("a [V] in the snow", "[V]", "")
    with pytest.raises(ValueError, match="embedding: word"):
        clip_t_prompt("a embedding:concept in the snow", "[V]", "dog")
    assert prompts_per_image("a [V]", 3) == ["a [V]"] * 3
    assert prompts_per_image("a\n\nb\n", 2) == ["a", "b"]
    with pytest.raises(ValueError, match="3 lines for 2 images"):
        prompts_per_image("a\nb\nc", 2)


def test_shipped_prompt_sets_and_their_spread():
    sets = prompt_sets.shipped_sets()
    assert set(sets) == {"objects", "live subjects"} and prompt_sets.set_names()[-1] == "custom"
    for templates in sets.values():
        assert len(templates) == 25 and len(set(templates)) == 25 and all("[V]" in t for t in templates)
    picked = prompt_sets.sweep_prompts("live subjects", 5, "")
    assert picked == [sets["live subjects"][i] for i in (0, 5, 10, 15, 20)]
    assert prompt_sets.sweep_prompts("objects", 99, "") == list(sets["objects"])
    assert prompt_sets.sweep_prompts("custom", 1, "a [V]\n\nb [V]\n") == ["a [V]"]
    with pytest.raises(ValueError, match="has no \\[V\\]"):
        prompt_sets.sweep_prompts("custom", 2, "a [V]\na dog")
    with pytest.raises(ValueError, match="custom_prompts is empty"):
        prompt_sets.sweep_prompts("custom", 2, "  \n")
    with pytest.raises(ValueError, match="at least 1"):
        prompt_sets.sweep_prompts("objects", 0, "")


def _points(*rows):
    return [SweepPoint(step, None if step == 0 else f"ck_step{step:04d}", clip_t, float("nan"), dino)
            for step, clip_t, dino in rows]


def test_the_rule_picks_the_known_step():
    # The paper's shape: DINO rises with steps while CLIP-T falls. With tolerance 0.02 below step 0's
    # 0.360 (floor 0.340), steps 40 and 80 stay in and 120 (0.335) does not: the answer is 80, which has
    # the highest DINO of those, although 120 and 160 have more DINO.
    points = _points((0, 0.360, 0.150), (40, 0.355, 0.190), (80, 0.340, 0.205), (120, 0.335, 0.215), (160, 0.30, 0.22))
    choice = choose_checkpoint(points, 0.02)
    assert choice.point.step == 80 and choice.point.lora_name == "ck_step0080" and choice.within_tolerance
    assert "step 80" in choice.reason and "0.3400" in choice.reason
    assert choose_checkpoint(points, 0.03).point.step == 120  # a looser tolerance lets 120 in
    assert choose_checkpoint(points, 1.0).point.step == 160
    strict = choose_checkpoint(points, 0.0)  # none keeps step 0's CLIP-T: the one that lost the least
    assert strict.point.step == 40 and not strict.within_tolerance


def test_the_rule_without_an_eligible_step_ties_and_bad_input():
    none_within = choose_checkpoint(_points((0, 0.36, 0.1), (40, 0.30, 0.3), (80, 0.32, 0.2)), 0.01)
    assert none_within.point.step == 80 and not none_within.within_tolerance and "no trained step" in none_within.reason
    tie = choose_checkpoint(_points((0, 0.3, 0.1), (40, 0.3, 0.2), (80, 0.3, 0.2)), 0.0)
    assert tie.point.step == 40  # equal DINO: the earlier step
    # Step 0 is the baseline, never the answer, even with the highest DINO.
    assert choose_checkpoint(_points((0, 0.3, 0.9), (40, 0.3, 0.2)), 0.0).point.step == 40
    with pytest.raises(ValueError, match="step 0"):
        choose_checkpoint(_points((40, 0.3, 0.2)), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        choose_checkpoint(_points((0, 0.3, float("nan")), (40, 0.3, 0.2)), 0.1)
    with pytest.raises(ValueError, match="clip_t_tolerance"):
        choose_checkpoint(_points((0, 0.3, 0.1), (40, 0.3, 0.2)), -0.1)


def test_cost_is_shown_and_capped():
    cost = SweepCost(candidates=6, prompts=8, seeds=2, steps=25)
    assert cost.images == 96 and cost.sampler_steps == 2400
    assert cost.describe().startswith("6 steps (step 0 + 5 trained) x 8 prompts x 2 seeds x 25 sampler steps = 2400")
    check_cost(cost, 2400)  # at the cap: runs
    with pytest.raises(ValueError, match="2400 sampler steps .* more than max_sampler_steps 2399"):
        check_cost(cost, 2399)


def _header(steps, loss, target_seed=0, family="sd15"):
    g = torch.Generator().manual_seed(target_seed)
    tokens = PrismTokens({"clip_l": torch.randn(1, 8, generator=g)}, {"clip_l": torch.randn(2, 3, 8, generator=g)},
                         ["", ""], ["a.png", "b.png"], {}, LossHistory())
    return lora_metadata(BaseFamily(family, False, "sd_v1", "x"), 4, 4.0, steps, {}, tokens, loss)


def test_only_checkpoints_of_the_run_are_candidates():
    loss = [0.5, 0.4, 0.45, 0.3, 0.35, 0.2]
    final = _header(6, loss)
    files = [
        ("ck_step0002_00001_.safetensors", _header(2, loss[:2])),
        ("ck_step0002_00002_.safetensors", _header(2, [0.5, 0.41])),       # another run (different losses)
        ("ck_step0004_00001_.safetensors", _header(4, loss[:4])),
        ("ck_step0004_00002_.safetensors", _header(4, loss[:4])),          # the same run again: the later file wins
        ("ck_step0002_00003_.safetensors", _header(2, loss[:2], target_seed=1)),  # other tokens
        ("ck_step0002_00004_.safetensors", _header(2, loss[:2], family="sdxl")),  # other family
        ("ck_step0006_00001_.safetensors", _header(6, loss)),              # not earlier than the final
        ("ck_step0002_00005_.safetensors", {**_header(2, loss[:2]), "conceptprism.format": "other"}),
    ]
    assert run_checkpoints(final, files) == [Candidate(2, "ck_step0002_00001_.safetensors"),
                                             Candidate(4, "ck_step0004_00002_.safetensors")]
    assert final["conceptprism.format"] == FORMAT and not same_run(final, {})
    assert run_checkpoints(final, []) == []


def _has_colour(picture: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((np.round(picture * 255) == np.array(colour)).all(axis=-1).any())


def test_table_and_tradeoff_pictures():
    table = draw_table(Table("title", ["step", "CLIP-T"], [["0", "0.3"], ["40", "0.2"], ["mean", "0.25"]],
                             thumbnails=[np.zeros((8, 8, 3)), np.ones((8, 8, 3))], highlight=1, footer_rows=1))
    assert table.dtype == np.float32 and table.ndim == 3 and table.shape[2] == 3
    assert _has_colour(table, HIGHLIGHT_FILL) and _has_colour(table, (0, 0, 0))
    points = _points((0, 0.36, 0.15), (40, 0.35, 0.19), (80, 0.34, 0.2))
    assert _has_colour(draw_tradeoff(points, chosen_step=40, clip_t_floor=0.34), CHOSEN)
    assert not _has_colour(draw_tradeoff(points), CHOSEN)
    with pytest.raises(ValueError, match="Nothing to plot"):
        draw_tradeoff(_points((0, float("nan"), 0.1)))
