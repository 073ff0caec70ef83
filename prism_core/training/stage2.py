"""Algorithm 2 (paper Sec. 3.4): a LoRA on the attention layers, trained with the Stage 1 tokens fixed.

Each micro-step takes image i with its fixed prompt "<t_target> with <t_res(i)>" (the residual
tokens stay in the prompt so that image-specific detail has somewhere to go other than the target
token) and the plain diffusion loss of Eq. (2) on the family's native target (eps, v) with t uniform
over the discrete schedule, exactly as Stage 1. A step is one AdamW update over `gradient_accumulation`
micro-steps; the micro-steps of one step share model calls (in chunks of at most `max_batch`
samples), which gives the same gradient as running them one by one.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import torch

from .config import LoraConfig
from .loss_scaling import LossScaler, check_trained
from .losses import NonFiniteLossError, per_sample_mse
from .batching import Cond, batch_conds, chunk_ranges
from .schedule import MicroStep, draw_noise, plan_micro_steps


class Stage2Backend(Protocol):
    num_timesteps: int
    max_batch: int
    loss_scaling: bool  # float16 compute: scale losses dynamically (loss_scaling.LossScaler)

    def predict(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The native prediction (eps_hat, v_hat) [B, C, H, W] of the model with the LoRA, differentiable
        w.r.t. the LoRA weights."""

    def target(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor) -> torch.Tensor:
        """The native target (eps, v) of those samples [B, C, H, W]; no model call."""

    def check_interrupt(self) -> None:
        """Raise if the user cancelled."""


def step_losses(backend: Stage2Backend, latents: torch.Tensor, conds: Sequence[Cond],
                micro_steps: Sequence[MicroStep], parameters: Sequence[torch.nn.Parameter],
                loss_scale: float = 1.0) -> list[float]:
    """Accumulate the gradient of loss_scale * mean over micro-steps of Eq. (2) into `parameters`.

    latents: [N, C, H, W]; conds[i]: image i's fixed conditioning (batch dim 1). Returns each
    micro-step's loss. Gradients reach only `parameters`, never the model's own weights.
    """
    images = [m.image for m in micro_steps]
    timesteps = [m.timesteps[0] for m in micro_steps]
    noise = torch.cat([draw_noise(m, latents.shape[1:])[:1] for m in micro_steps]).to(latents.device)
    losses = [math.nan] * len(micro_steps)
    for chunk in chunk_ranges(len(micro_steps), backend.max_batch):
        idx = list(chunk)
        backend.check_interrupt()
        batch = (latents[[images[i] for i in idx]], [timesteps[i] for i in idx], noise[idx])
        prediction = backend.predict(*batch, batch_conds([conds[images[i]] for i in idx]))
        mse = per_sample_mse(prediction, backend.target(*batch).to(prediction.device))
        for i, value in zip(idx, mse.detach().float().cpu().tolist()):
            losses[i] = value
        if not all(math.isfinite(losses[i]) for i in idx):
            return losses  # the caller raises with the step number; no backward through NaNs
        torch.autograd.backward(mse.sum() * (loss_scale / len(micro_steps)), inputs=list(parameters))
    return losses


def train_lora(
    backend: Stage2Backend,
    latents: torch.Tensor,
    conds: Sequence[Cond],
    parameters: Sequence[torch.nn.Parameter],
    config: LoraConfig,
    start_step: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    on_preview: Callable[[int], None] | None = None,
    on_skip: Callable[[int], None] | None = None,
) -> list[float]:
    """Run Algorithm 2 for `config.steps` steps after `start_step` (non-zero when resuming) and
    return the loss of each step (mean over its micro-steps).

    The sampling plan is the one a single run of start_step + steps would use, so a resumed run
    sees the images, timesteps and noise that the uninterrupted run would have seen (AdamW's moment
    estimates restart, since a LoRA file does not carry them). on_step(step, last_step, loss) and
    on_checkpoint(step) get absolute step numbers, and so does on_preview(step), called after every
    completed step (after on_step, before that step's checkpoint, so a Cancel during a preview writes
    no checkpoint of that step); it must leave the parameters and the optimizer alone. on_skip(step) is called
    for a step whose update was skipped because float16 gradients overflowed (before on_step); a run whose every
    step was skipped raises loss_scaling.NothingTrainedError at its end.
    """
    last_step = start_step + config.steps
    plan = plan_micro_steps(latents.shape[0], 0, last_step, config.gradient_accumulation,
                            backend.num_timesteps, config.seed)[start_step:]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = LossScaler(backend.loss_scaling, parameters[0].device)
    history: list[float] = []
    skipped: list[int] = []
    for offset, micro_steps in enumerate(plan):
        step = start_step + offset + 1
        optimizer.zero_grad(set_to_none=True)
        losses = step_losses(backend, latents, conds, micro_steps, parameters, scaler.factor)
        if not all(math.isfinite(x) for x in losses):
            # The first non-finite entry was computed (later chunks are skipped and left NaN).
            bad = next(m.image for m, x in zip(micro_steps, losses) if not math.isfinite(x))
            raise NonFiniteLossError(
                f"ConceptPrism Stage 2: the loss became non-finite ({losses}) at step {step} of {last_step} (on image "
                f"index {bad}; the images and latents were checked finite before training). "
                f"Lower learning_rate (e.g. to {config.learning_rate / 4:g}), or set training_dtype to float32 "
                "if you trained in float16. No LoRA was output.")
        if not scaler.step(optimizer, parameters, config.max_grad_norm, step):
            skipped.append(step)
            if on_skip is not None:
                on_skip(step)
        history.append(sum(losses) / len(losses))
        if on_step is not None:
            on_step(step, last_step, history[-1])
        if on_preview is not None:
            on_preview(step)
        if on_checkpoint is not None and config.checkpoint_every and step % config.checkpoint_every == 0 and step < last_step:
            on_checkpoint(step)
    # A LoRA that no update of this run reached is its start (zero, or the resumed file): refused, not returned.
    check_trained("Stage 2", skipped, config.steps, "LoRA weights")
    return history
