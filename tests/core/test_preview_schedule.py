"""Previews without the host: the schedule, the prompt list, the step label, and the loops' preview hook."""
import pytest
import torch

from comfyui_conceptprism.prism_core.training.config import LoraConfig, TokenConfig
from comfyui_conceptprism.prism_core.training.stage2 import train_lora
from comfyui_conceptprism.prism_core.training.stage1 import optimize_tokens
from comfyui_conceptprism.prism_core.pictures.previews import (label_box, placeholder_image, preview_due, preview_prompts,
                                                     preview_schedule, stamp_step)

from test_lora_train_loop import CONDS, LATENTS, ToyLoraBackend
from test_optimize_loop import ToyBackend, _initial


def test_schedule_is_every_nth_step_and_off_at_zero():
    assert preview_schedule(1, 200, 40) == [40, 80, 120, 160, 200]
    assert preview_schedule(1, 7, 3) == [3, 6]  # not the last step unless it is a multiple
    assert preview_schedule(121, 240, 40) == [160, 200, 240]  # a resumed run keeps absolute steps
    assert preview_schedule(1, 200, 0) == [] and not preview_due(0, 1)


def test_prompts_one_per_line_each_with_the_placeholder():
    assert preview_prompts("a photo of [V]\n\n  [V] on the beach  \n") == ["a photo of [V]", "[V] on the beach"]
    with pytest.raises(ValueError, match=r"Node X: preview_prompts line 2 'a dog' has no \[V\]"):
        preview_prompts("a photo of [V]\na dog", node="Node X")
    with pytest.raises(ValueError, match="preview_prompts is empty.*preview_every to 0"):
        preview_prompts("  \n")


@pytest.mark.parametrize("size", [64, 512, 1024])
def test_step_label_changes_only_its_box(size):
    image = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(size))
    stamped = stamp_step(image, 120)
    left, top, right, bottom = label_box("step 120", size, size)
    assert left == 0 and top == 0 and 20 < right < size and 8 < bottom < size // 3
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert torch.equal(stamped[~inside], image[~inside]) and not torch.equal(stamped[inside], image[inside])
    box = stamped[top:bottom, left:right]
    assert box.min() == 0 and box.max() > 0.9  # white (anti-aliased) text on black
    assert not torch.equal(stamp_step(image, 120), stamp_step(image, 160))  # the number is drawn


def test_placeholder_is_one_image():
    image = placeholder_image("previews off (preview_every 0)")
    assert image.shape == (1, 64, 256, 3) and image.dtype == torch.float32 and image.max() > image.min()


def test_stage1_hook_runs_after_every_step_with_the_current_vectors():
    target, residuals = _initial()
    seen = []
    config = TokenConfig(steps=3, gradient_accumulation=2, target_length=1, residual_length=2)
    final = optimize_tokens(ToyBackend(), torch.randn(4, 4, generator=torch.Generator().manual_seed(1)), target, residuals,
                            config, on_preview=lambda step, snapshot: seen.append((step, snapshot())))
    assert [s for s, _ in seen] == [1, 2, 3]
    assert all(torch.equal(seen[-1][1][0][k], final[0][k]) for k in final[0])  # the snapshot after step 3 is the output
    assert not torch.equal(seen[0][1][0]["k"], seen[-1][1][0]["k"])  # and it changes with training
    assert all(not t.requires_grad for t in seen[0][1][0].values())


def test_stage2_hook_runs_after_every_step_before_that_steps_checkpoint():
    events = []
    backend = ToyLoraBackend()
    train_lora(backend, LATENTS, CONDS, [backend.up, backend.down], LoraConfig(steps=4, gradient_accumulation=2,
                                                                                 checkpoint_every=2),
               start_step=2, on_checkpoint=lambda s: events.append(("checkpoint", s)),
               on_preview=lambda s: events.append(("preview", s)))
    assert events == [("preview", 3), ("preview", 4), ("checkpoint", 4), ("preview", 5), ("preview", 6)]
