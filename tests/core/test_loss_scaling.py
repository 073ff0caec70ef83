"""Dynamic loss scaling (float16 compute): skip the update on overflow, lower the scale, unscale before clip."""
import logging
import math

import pytest
import torch

from comfyui_conceptprism.prism_core.config import LoraConfig, TokenConfig
from comfyui_conceptprism.prism_core.loss_scaling import LossScaler
from comfyui_conceptprism.prism_core.lora_train import train_lora
from comfyui_conceptprism.prism_core.optimize import optimize_tokens
from comfyui_conceptprism.prism_core.token_bank import TARGET_SLOT

from test_lora_train_loop import CONDS, LATENTS, ToyLoraBackend
from test_optimize_loop import ToyBackend, _initial


def _param(value):
    p = torch.nn.Parameter(torch.tensor([value]))
    return p, torch.optim.SGD([p], lr=1.0)


def test_scaled_gradients_are_unscaled_before_the_update_and_clip():
    scaler = LossScaler(True)
    p, opt = _param(0.0)
    (p * 3.0 * scaler.factor).sum().backward()  # true gradient 3, scaled by 65536
    assert scaler.factor == 2.0 ** 16
    assert scaler.step(opt, [p], max_grad_norm=1.0, step_number=1)
    assert p.item() == pytest.approx(-1.0, abs=1e-6)  # unscaled to 3, clipped to norm 1 (clip_grad_norm_ adds 1e-6), SGD lr 1


def test_overflow_skips_the_update_and_halves_the_scale(caplog):
    scaler = LossScaler(True)
    p, opt = _param(0.5)
    (p * math.inf).sum().backward()
    with caplog.at_level(logging.INFO, logger="ConceptPrism"):
        assert not scaler.step(opt, [p], max_grad_norm=1.0, step_number=7)
    assert p.item() == 0.5 and scaler.factor == 2.0 ** 15 and scaler.skipped_steps == [7]
    assert "overflowed at step 7" in caplog.text


def test_disabled_scaler_is_a_pass_through():
    scaler = LossScaler(False)
    p, opt = _param(0.0)
    (p * 3.0).sum().backward()
    assert scaler.factor == 1.0 and scaler.step(opt, [p], max_grad_norm=0, step_number=1) and p.item() == -3.0


class OverflowOnce:
    """Wraps a toy backend as float16 compute would: loss scaling on, and one model call whose backward
    overflows (its gradient becomes inf, as an fp16 activation gradient does)."""

    def __init__(self, backend, overflow_call):
        self.backend, self.overflow_call, self.calls = backend, overflow_call, 0
        self.loss_scaling = True

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def predict(self, latents, timesteps, noise, cond):
        out = self.backend.predict(latents, timesteps, noise, cond)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.overflow_call and out.requires_grad:
                out.register_hook(lambda g: g * math.inf)
        return out


def test_stage1_loop_skips_the_overflowing_step_and_goes_on():
    config = TokenConfig(steps=4, gradient_accumulation=1, learning_rate=0.05)
    latents = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    seen = []
    toy = ToyBackend()
    encode = toy.encode
    toy.encode = lambda prompt, vectors: (seen.append(vectors[TARGET_SLOT]["k"].detach().clone())
                                          if TARGET_SLOT in prompt.parts else None) or encode(prompt, vectors)
    target, residuals = _initial(n_r=config.residual_length)
    out_target, _, history = optimize_tokens(OverflowOnce(toy, overflow_call=2), latents, target, residuals, config)
    # One reconstruction encode per step: seen[k] is the target before step k+1. Step 2 overflowed: no update.
    assert not torch.equal(seen[0], seen[1])
    assert torch.equal(seen[1], seen[2])
    assert not torch.equal(seen[2], seen[3])
    assert torch.isfinite(out_target["k"]).all() and len(history.rec) == 4


def test_stage2_loop_skips_the_overflowing_step_and_goes_on():
    toy = ToyLoraBackend()
    backend = OverflowOnce(toy, overflow_call=2)
    snapshots = []
    config = LoraConfig(steps=3, gradient_accumulation=1, learning_rate=0.05)
    train_lora(backend, LATENTS, CONDS, [toy.up, toy.down], config,
               on_step=lambda step, last, loss: snapshots.append(toy.down.detach().clone()))
    assert not torch.equal(snapshots[0], torch.zeros_like(snapshots[0]))
    assert torch.equal(snapshots[0], snapshots[1])  # step 2 skipped
    assert not torch.equal(snapshots[1], snapshots[2]) and torch.isfinite(snapshots[2]).all()
