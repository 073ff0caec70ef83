"""Algorithm 2's loop on a small differentiable stand-in for the host (no ComfyUI needed)."""
import math

import pytest
import torch

from comfyui_conceptprism.prism_core.training.config import LoraConfig
from comfyui_conceptprism.prism_core.training.stage2 import train_lora
from comfyui_conceptprism.prism_core.training.stage1 import NonFiniteLossError
from comfyui_conceptprism.prism_core.training.schedule import draw_noise, plan_micro_steps


class ToyLoraBackend:
    """eps_hat = tanh((z_t) @ (W + up @ down) + context): a frozen W with a low-rank trainable update."""

    num_timesteps = 50
    loss_scaling = False

    def __init__(self, max_batch=8, poison=False):
        g = torch.Generator().manual_seed(0)
        self.frozen = torch.randn(4, 4, generator=g, requires_grad=True)  # a "frozen" weight that requires grad
        self.up = torch.nn.Parameter(torch.randn(4, 2, generator=g))
        self.down = torch.nn.Parameter(torch.zeros(2, 4))
        self.max_batch, self.poison, self.batches = max_batch, poison, []

    def target(self, latents, timesteps, noise):
        return noise

    def predict(self, latents, timesteps, noise, cond):
        self.batches.append(len(timesteps))
        sigma = torch.tensor([0.1 + t / 10 for t in timesteps]).view(-1, 1)
        out = torch.tanh((latents + sigma * noise) @ (self.frozen + self.up @ self.down) + cond["c"])
        return out * math.inf if self.poison else out

    def check_interrupt(self):
        pass


LATENTS = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
CONDS = [{"c": torch.full((1, 4), float(i))} for i in range(3)]


def _train(config, backend=None, start_step=0, **callbacks):
    backend = backend or ToyLoraBackend()
    loss = train_lora(backend, LATENTS, CONDS, [backend.up, backend.down], config, start_step, **callbacks)
    return loss, backend


def test_loss_matches_a_direct_recomputation_and_only_lora_weights_learn():
    config = LoraConfig(steps=1, gradient_accumulation=3)  # the loss is taken before the update
    (loss,), backend = _train(config)
    plan = plan_micro_steps(3, 0, 1, 3, 50, config.seed)[0]
    expected = []
    for m in plan:  # Eq. (2) by hand, per micro-step, each with its own image's prompt
        eps = draw_noise(m, LATENTS.shape[1:])[0]
        sigma = 0.1 + m.timesteps[0] / 10
        with torch.no_grad():
            pred = torch.tanh((LATENTS[m.image] + sigma * eps) @ backend.frozen + CONDS[m.image]["c"][0])
        expected.append(float(((pred - eps) ** 2).mean()))
    assert loss == pytest.approx(sum(expected) / 3, rel=1e-6)
    assert backend.frozen.grad is None

    (losses, trained) = _train(LoraConfig(steps=80, gradient_accumulation=3, learning_rate=0.05))
    assert not torch.equal(trained.down, torch.zeros(2, 4))
    assert sum(losses[-10:]) < sum(losses[:10])


def test_micro_steps_share_model_calls_without_changing_the_result():
    config = LoraConfig(steps=3, gradient_accumulation=3, learning_rate=0.05)
    loss1, b1 = _train(config, ToyLoraBackend(max_batch=1))
    loss2, b2 = _train(config, ToyLoraBackend(max_batch=2))
    assert b1.batches == [1] * 9 and b2.batches == [2, 1] * 3
    assert loss1 == pytest.approx(loss2, rel=1e-5)
    torch.testing.assert_close(b1.down, b2.down, rtol=1e-5, atol=1e-7)


def test_checkpoints_and_resume_continue_the_same_plan():
    config = LoraConfig(steps=6, gradient_accumulation=2, learning_rate=0.05, checkpoint_every=2)
    saved, seen = [], []
    full, _ = _train(config, on_checkpoint=saved.append, on_step=lambda s, last, v: seen.append((s, last)))
    assert saved == [2, 4] and seen == [(s, 6) for s in range(1, 7)]  # no checkpoint at the final step

    first, backend = _train(LoraConfig(steps=2, gradient_accumulation=2, learning_rate=0.05))
    assert first == full[:2]
    resumed_seen = []
    rest, _ = _train(LoraConfig(steps=4, gradient_accumulation=2, learning_rate=0.05), backend, start_step=2,
                     on_step=lambda s, last, v: resumed_seen.append((s, last)))
    assert resumed_seen == [(s, 6) for s in range(3, 7)]
    # Same micro-steps as the uninterrupted run; only AdamW's moments restart, so the losses stay close.
    assert rest == pytest.approx(full[2:], rel=0.1)


def test_non_finite_loss_stops_with_the_step_and_the_fix():
    with pytest.raises(NonFiniteLossError, match=r"step 1 of 3 \(on image index \d.*learning_rate"):
        _train(LoraConfig(steps=3), ToyLoraBackend(poison=True))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        LoraConfig(checkpoint_every=-1)
