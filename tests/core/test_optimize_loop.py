"""Algorithm 1's loop on a small differentiable stand-in for the host (no ComfyUI needed)."""
import math

import pytest
import torch

from comfyui_conceptprism.prism_core.training.config import TABLE2_CONFIGURATIONS, TokenConfig
from comfyui_conceptprism.prism_core.training.stage1 import (NonFiniteLossError, Prompt, TokenParameters, micro_step_losses,
                                                      optimize_tokens)
from comfyui_conceptprism.prism_core.training.schedule import draw_noise, plan_micro_steps
from comfyui_conceptprism.prism_core.formats.token_bank import TARGET_SLOT, residual_slot


class ToyBackend:
    """Text encoder: the prompt's slot vectors through a fixed linear map (mean over words);
    model: eps_hat = tanh(W z_t + context). Enough structure for gradients to flow both ways."""

    num_timesteps = 50
    loss_scaling = False

    def __init__(self, max_batch=8, poison=False):
        g = torch.Generator().manual_seed(0)
        self.text_map = torch.randn(6, 4, generator=g, requires_grad=True)  # a "frozen" weight that requires grad
        self.mix = torch.randn(4, 4, generator=g, requires_grad=True)
        self.words = {"with": torch.randn(6, generator=g)}
        self.max_batch, self.poison, self.calls = max_batch, poison, 0

    def encode(self, prompt: Prompt, vectors):
        rows = []
        for part in prompt.parts:
            rows.append(vectors[part]["k"] if part in vectors else self.words[part].view(1, -1))
        ctx = torch.cat(rows).mean(0, keepdim=True) @ self.text_map
        return {"c_crossattn": ctx}

    def encode_null(self):
        return {"c_crossattn": torch.zeros(1, 4)}

    def target(self, latents, timesteps, noise):
        return noise

    def predict(self, latents, timesteps, noise, cond):
        self.calls += 1
        sigma = torch.tensor([0.1 + t / 10 for t in timesteps]).view(-1, 1)
        out = torch.tanh((latents + sigma * noise) @ self.mix + cond["c_crossattn"])
        return out * math.inf if self.poison else out

    def check_interrupt(self):
        pass


def _initial(n_images=4, n_r=2):
    g = torch.Generator().manual_seed(1)
    return {"k": torch.randn(1, 6, generator=g)}, {"k": torch.randn(n_images, n_r, 6, generator=g)}


def _run(config, backend=None):
    backend = backend or ToyBackend()
    latents = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    target, residuals = _initial(n_r=config.residual_length)
    return optimize_tokens(backend, latents, target, residuals, config), backend


def test_only_token_vectors_receive_gradients_and_losses_fall():
    config = TokenConfig(steps=60, gradient_accumulation=2, learning_rate=0.05, beta=0.5)
    (target, residuals, history), backend = _run(config)
    assert backend.text_map.grad is None and backend.mix.grad is None
    assert not torch.equal(target["k"], _initial()[0]["k"])
    first, last = sum(history.rec[:10]) / 10, sum(history.rec[-10:]) / 10
    assert last < first
    assert len(history.rec) == len(history.excl) == 60


def test_chunk_size_does_not_change_the_result():
    config = TokenConfig(steps=5, gradient_accumulation=2, learning_rate=0.05)
    (t1, r1, h1), b1 = _run(config, ToyBackend(max_batch=1))
    (t8, r8, h8), b8 = _run(config, ToyBackend(max_batch=8))
    assert b1.calls > b8.calls
    assert torch.allclose(t1["k"], t8["k"], atol=1e-6) and torch.allclose(r1["k"], r8["k"], atol=1e-6)
    assert h1.rec == pytest.approx(h8.rec, rel=1e-5)


def test_same_seed_same_tokens():
    config = TokenConfig(steps=4, gradient_accumulation=2)
    (t1, r1, _), _ = _run(config)
    (t2, r2, _), _ = _run(config)
    assert torch.equal(t1["k"], t2["k"]) and torch.equal(r1["k"], r2["k"])


def test_table2_configurations_change_what_is_computed():
    for name, overrides in TABLE2_CONFIGURATIONS.items():
        config = TokenConfig(steps=2, gradient_accumulation=1, **overrides)
        (target, residuals, history), _ = _run(config)
        assert residuals["k"].shape[1] == config.residual_length
        excl_computed = not math.isnan(history.excl[0])
        assert excl_computed == (config.beta > 0), name


def test_non_finite_loss_names_the_step_and_the_fix():
    with pytest.raises(NonFiniteLossError, match=r"step 1 of 3.*learning_rate"):
        _run(TokenConfig(steps=3), ToyBackend(poison=True))


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="residual_length"):
        TokenConfig(residual_length=0, beta=0.05)
    with pytest.raises(ValueError, match="steps"):
        TokenConfig(steps=0)
    assert TokenConfig().anchors_for(3) == 2 and TokenConfig().anchors_for(6) == 3


@pytest.mark.parametrize("max_batch", [1, 2, 8])
def test_one_micro_steps_token_gradient_is_autograd_of_rec_plus_beta_excl(max_batch):
    """Oracle: Eq. (5) written out here with plain autograd, L = ||eps - eps(z_t(i), "<t> with <r_i>")||^2
    + beta * mean_j ||eps(z_t(j), "<r_i>") - eps(z_t(j), null)||^2, against the loop's chunked backward."""
    backend, beta = ToyBackend(max_batch=max_batch), 0.3
    latents = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    target, residuals = _initial()
    step = plan_micro_steps(4, 3, steps=1, accumulation=1, num_timesteps=backend.num_timesteps, seed=5)[0][0]
    params = TokenParameters.from_initial(target, residuals)
    micro_step_losses(backend, latents, params, step, backend.encode_null(), beta, 1.0)

    t, r = target["k"].clone().requires_grad_(), residuals["k"].clone().requires_grad_()
    i, anchors = step.image, list(step.anchors)
    noise = draw_noise(step, latents.shape[1:])
    words = {TARGET_SLOT: {"k": t}, residual_slot(i): {"k": r[i]}}
    rec_cond = backend.encode(Prompt((TARGET_SLOT, "with", residual_slot(i))), words)
    res_cond = backend.encode(Prompt((residual_slot(i),)), words)
    eps_rec = backend.predict(latents[[i]], step.timesteps[:1], noise[:1], rec_cond)
    l_rec = ((eps_rec - noise[:1]) ** 2).mean()
    l_excl = 0
    for k, j in enumerate(anchors, start=1):
        eps_res = backend.predict(latents[[j]], [step.timesteps[k]], noise[k:k + 1], res_cond)
        with torch.no_grad():
            eps_null = backend.predict(latents[[j]], [step.timesteps[k]], noise[k:k + 1], backend.encode_null())
        l_excl = l_excl + ((eps_res - eps_null) ** 2).mean() / len(anchors)
    grad_t, grad_r = torch.autograd.grad(l_rec + beta * l_excl, [t, r])
    torch.testing.assert_close(params.target["k"].grad, grad_t, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(params.residuals["k"].grad, grad_r, rtol=1e-5, atol=1e-7)
    assert len(anchors) == 3 and grad_r[i].abs().sum() > 0 and grad_r[[a for a in range(4) if a != i]].abs().sum() == 0
