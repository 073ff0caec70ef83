"""Dynamic loss scaling (float16 compute): skip the update on overflow, lower the scale, unscale before clip."""
import logging
import math

import pytest
import torch

from comfyui_conceptprism.prism_core.training.config import LoraConfig, TokenConfig
from comfyui_conceptprism.prism_core.training.loss_scaling import LossScaler
from comfyui_conceptprism.prism_core.training.stage2 import train_lora
from comfyui_conceptprism.prism_core.training.stage1 import optimize_tokens
from comfyui_conceptprism.prism_core.formats.token_bank import TARGET_SLOT

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


class OverflowAlways(OverflowOnce):
    """Every gradient-carrying model call overflows in its backward pass: no update can ever be applied."""

    def __init__(self, backend):
        super().__init__(backend, overflow_call=None)

    def predict(self, latents, timesteps, noise, cond):
        out = self.backend.predict(latents, timesteps, noise, cond)
        if torch.is_grad_enabled() and out.requires_grad:
            out.register_hook(lambda g: g * math.inf)
        return out


def test_stage1_loop_records_skipped_steps_and_refuses_a_run_that_trained_nothing():
    from comfyui_conceptprism.prism_core.training.loss_scaling import NothingTrainedError
    config = TokenConfig(steps=3, gradient_accumulation=1, learning_rate=0.05)
    latents = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    target, residuals = _initial(n_r=config.residual_length)
    _, _, history = optimize_tokens(OverflowOnce(ToyBackend(), overflow_call=2), latents, target, residuals, config)
    assert history.skipped == [2]
    with pytest.raises(NothingTrainedError, match="overflowed at every one of the 3 steps.*no tokens were output"):
        optimize_tokens(OverflowAlways(ToyBackend()), latents, target, residuals, config)


def test_stage2_loop_reports_skipped_steps_and_refuses_a_run_that_trained_nothing():
    from comfyui_conceptprism.prism_core.training.loss_scaling import NothingTrainedError
    toy = ToyLoraBackend()
    skipped = []
    config = LoraConfig(steps=3, gradient_accumulation=1, learning_rate=0.05)
    train_lora(OverflowOnce(toy, overflow_call=2), LATENTS, CONDS, [toy.up, toy.down], config, on_skip=skipped.append)
    assert skipped == [2]
    toy = ToyLoraBackend()
    with pytest.raises(NothingTrainedError, match="Stage 2: .*every one of the 3 steps"):
        train_lora(OverflowAlways(toy), LATENTS, CONDS, [toy.up, toy.down], config, start_step=5)


def test_skipped_steps_warn_only_past_the_scalers_calibration_share():
    from comfyui_conceptprism.prism_core.training.loss_scaling import skipped_warning
    assert skipped_warning("Stage 1", [], 200, "tokens") is None
    assert skipped_warning("Stage 1", list(range(1, 11)), 200, "tokens") is None  # 5%: the scale settling
    message = skipped_warning("Stage 1", list(range(1, 12)), 200, "tokens")
    assert message and "11 of 200 steps (1, 2, 3, 4, 5, 6, 7, 8, ...)" in message and "189 of the 200" in message
    assert "bfloat16" in message


def test_resume_compares_only_settings_both_runs_record():
    """A file that recorded guidance (FLUX.1-schnell before guidance was recorded only where read) resumed by a run
    that does not record it is not warned about; two recorded values that differ are."""
    import json
    from comfyui_conceptprism.prism_core.formats.resume import check_resume
    images = {"names": ["a"], "resolution": 64, "pixels_sha256": ["x"]}
    run = {"seed": 0, "gradient_accumulation": 1, "learning_rate": 1e-4, "weight_decay": 1e-4, "max_grad_norm": 1.0,
           "training_dtype": "float32", "guidance": 3.5, "first_step": 1, "last_step": 2}
    metadata = {"conceptprism.tokens": json.dumps({"sha256": "t"}), "conceptprism.images": json.dumps(images),
                "conceptprism.runs": json.dumps([run])}
    settings = {k: v for k, v in run.items() if k not in ("guidance", "first_step", "last_step")}
    assert check_resume(metadata, "f", "t", images, settings) == []
    assert "guidance 1.0 (was 3.5)" in check_resume(metadata, "f", "t", images, {**settings, "guidance": 1.0})[0]
