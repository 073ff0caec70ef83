"""Algorithm 1 (paper Sec. 3.2): optimise the target token and the per-image residual tokens on
L = L_rec + beta * L_excl (Eq. 5; the terms are prism_core.training.losses' reconstruction_loss, Eq. 2, and
exclusion_loss, Eq. 4, each called here on its samples).

The loop is host-agnostic: a `Stage1Backend` encodes prompts into conditioning and predicts the
model family's native target (eps, v); `prism_core.host.stage1_backend` implements it on ComfyUI's
MODEL and CLIP. Per micro-step:
  - the reconstruction sample (image i, prompt "<target> with <residual i>") and the K anchor
    samples (image j in J, prompt "<residual i>") share model calls (all carry gradients);
  - the K null predictions (image j, empty prompt, the same z_t(j)) run without gradient;
  - samples go through the model in chunks of at most `max_batch`, each chunk's gradient is
    taken with respect to detached copies of the conditioning, and one final backward pass
    pushes the summed conditioning gradient through the text encoder into the token vectors.
    Peak memory then depends on the chunk size, not on |J|, and no gradient ever reaches the
    model's own parameters (the backward pass is restricted to the token vectors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from .config import TokenConfig
from .loss_scaling import LossScaler, check_trained
from .batching import Cond, batch_conds, batch_ranges, chunk_ranges
from .losses import NonFiniteLossError, exclusion_loss, prism_loss, reconstruction_loss
from .prompts import Prompt, SlotVectors, reconstruction_prompt, residual_prompt
from .schedule import MicroStep, draw_noise, plan_micro_steps
from ..formats.token_bank import TARGET_SLOT, LossHistory, residual_slot

class Stage1Backend(Protocol):
    num_timesteps: int
    max_batch: int
    loss_scaling: bool  # float16 compute: scale losses dynamically (loss_scaling.LossScaler)

    def encode(self, prompt: Prompt, vectors: SlotVectors) -> Cond:
        """Differentiable text encoding of `prompt` with the slots filled from `vectors`."""

    def encode_null(self) -> Cond:
        """The empty prompt's conditioning (no gradient)."""

    def predict(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Noise z_t from (latents [B,C,H,W], noise [B,C,H,W], timesteps [B]) and return the model's prediction
        of its native target (eps_hat or v_hat) [B,C,H,W] float32."""

    def target(self, latents: torch.Tensor, timesteps: Sequence[int], noise: torch.Tensor) -> torch.Tensor:
        """The native target (eps, or v) of those samples [B,C,H,W] float32; no model call."""

    def check_interrupt(self) -> None:
        """Raise if the user cancelled."""


@dataclass
class TokenParameters:
    """The trainable vectors, float32 whatever the model's dtype."""

    target: dict[str, torch.nn.Parameter]
    residuals: dict[str, torch.nn.Parameter]

    @classmethod
    def from_initial(cls, target: dict[str, torch.Tensor], residuals: dict[str, torch.Tensor],
                     frozen: tuple[str, ...] = ()) -> "TokenParameters":
        """Trainable copies of the initial vectors; the rows of text encoders in `frozen` keep their values
        (requires_grad False). Raises ValueError when every encoder is frozen."""
        if not set(target) - set(frozen):
            raise ValueError(f"frozen_encoders {list(frozen)} leaves no text encoder to train (these tokens have {sorted(target)}).")
        as_param = lambda k, t: torch.nn.Parameter(t.detach().clone().float(), requires_grad=k not in frozen)
        return cls({k: as_param(k, v) for k, v in target.items()}, {k: as_param(k, v) for k, v in residuals.items()})

    def all(self) -> list[torch.nn.Parameter]:
        """The trained tensors (frozen encoders' rows and empty residuals left out)."""
        return [p for p in self.target.values() if p.requires_grad] + [
            p for p in self.residuals.values() if p.shape[1] > 0 and p.requires_grad]

    def slots(self, image: int) -> SlotVectors:
        return {
            TARGET_SLOT: dict(self.target),
            residual_slot(image): {k: v[image] for k, v in self.residuals.items()},
        }

    def detached(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return ({k: v.detach().cpu().clone() for k, v in self.target.items()},
                {k: v.detach().cpu().clone() for k, v in self.residuals.items()})


def micro_step_losses(
    backend: Stage1Backend, latents: torch.Tensor, params: TokenParameters, step: MicroStep,
    null: Cond, beta: float, scale: float,
) -> tuple[float, float]:
    """Accumulate the gradient of scale * L (Eq. 5: L_rec + beta * L_excl) into `params` for one micro-step (`scale` carries
    the micro-step's share of the step and, in float16, the loss scale).

    latents: [N, C, H, W] (already in the model's latent space). Returns (L_rec, L_excl) as floats
    (L_excl is NaN when the exclusion term is off).
    """
    has_residual = next(iter(params.residuals.values())).shape[1] > 0
    anchors = step.anchors if (has_residual and beta > 0) else ()
    n = 1 + len(anchors)
    images = [step.image, *anchors]
    noise = draw_noise(step, latents.shape[1:])[:n].to(latents.device)
    timesteps = list(step.timesteps[:n])
    vectors = params.slots(step.image)

    prompt_conds = [backend.encode(reconstruction_prompt(step.image, has_residual), vectors)]
    if anchors:
        prompt_conds.append(backend.encode(residual_prompt(step.image), vectors))
    # constants (Z-Image's num_tokens, an int) pass as they are
    leaves = [{k: v.detach().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v for k, v in c.items()}
              for c in prompt_conds]
    sample_conds = [leaves[0]] + [leaves[-1]] * len(anchors)

    targets = backend.target(latents[images[:1]], timesteps[:1], noise[:1]).float()
    if anchors:
        with torch.no_grad():
            null_predictions = []
            for chunk in chunk_ranges(len(anchors), backend.max_batch):
                idx = [1 + c for c in chunk]
                null_predictions.append(backend.predict(
                    latents[[images[i] for i in idx]], [timesteps[i] for i in idx], noise[idx],
                    batch_conds([null] * len(idx))))
            targets = torch.cat([targets, torch.cat(null_predictions).float().to(targets.device)])

    # Eq. (5) is a sum over samples, so each chunk of samples contributes its part of L on its own: the
    # reconstruction sample's L_rec (Eq. 2), and its anchors' share of the mean in L_excl (Eq. 4).
    rec_value, excl_sum = math.nan, 0.0
    leaf_tensors = [t for leaf in leaves for t in leaf.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    leaf_grads = [torch.zeros_like(t) for t in leaf_tensors]
    for chunk in batch_ranges(sample_conds, backend.max_batch):
        idx = list(chunk)
        prediction = backend.predict(latents[[images[i] for i in idx]], [timesteps[i] for i in idx],
                                     noise[idx], batch_conds([sample_conds[i] for i in idx]))
        chunk_targets = targets[idx].to(prediction.device)
        rows = [k for k, i in enumerate(idx) if i > 0]  # anchor rows of this chunk
        rec = reconstruction_loss(prediction[:1], chunk_targets[:1]) if idx[0] == 0 else prediction.new_zeros(())
        excl = (exclusion_loss(prediction[rows], chunk_targets[rows]) * (len(rows) / len(anchors))
                if rows else prediction.new_zeros(()))
        if idx[0] == 0:
            rec_value = float(rec.detach().float())
        excl_sum += float(excl.detach().float())
        grads = torch.autograd.grad(prism_loss(rec, excl, beta) * scale, leaf_tensors, allow_unused=True)
        for total, grad in zip(leaf_grads, grads):
            if grad is not None:
                total += grad

    rec = rec_value
    # NaN stands for "not computed" when there are no anchors; a non-finite computed value is +inf.
    excl = excl_sum if anchors else math.nan
    if anchors and not math.isfinite(excl):
        excl = math.inf
    if not math.isfinite(rec) or math.isinf(excl):
        return rec, excl  # the caller raises with the step number; no backward through NaNs
    sources = [t for c in prompt_conds for t in c.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    torch.autograd.backward(sources, leaf_grads, inputs=params.all())
    return rec, excl


def optimize_tokens(
    backend: Stage1Backend,
    latents: torch.Tensor,
    initial_target: dict[str, torch.Tensor],
    initial_residuals: dict[str, torch.Tensor],
    config: TokenConfig,
    on_step: Callable[[int, int, float, float], None] | None = None,
    on_preview: Callable[[int, Callable[[], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], LossHistory]:
    """Run Algorithm 1 and return (target, residuals, history).

    latents: [N, C, H, W], one per reference image, encoded once per run. initial_target[key]:
    [n_t, D]; initial_residuals[key]: [N, n_r, D]. A step is one AdamW update made of
    `config.gradient_accumulation` micro-steps, each on one image (loss divided by their count).
    With float16 compute (backend.loss_scaling) the losses are scaled dynamically; a step whose
    gradients overflow is skipped and the scale lowered (loss_scaling.LossScaler); the history lists the skipped
    steps, and a run whose every step was skipped raises loss_scaling.NothingTrainedError.
    on_preview(step, snapshot), if given, is called after every completed step (after on_step);
    snapshot() returns detached CPU copies (target, residuals) of the vectors as they are now. It must
    leave the training state alone (prism_core.host.previews renders with it).
    """
    n_images = latents.shape[0]
    params = TokenParameters.from_initial(initial_target, initial_residuals, config.frozen_encoders or ())
    trainable = params.all()
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    plan = plan_micro_steps(n_images, config.anchors_for(n_images), config.steps,
                            config.gradient_accumulation, backend.num_timesteps, config.seed)
    null = backend.encode_null()
    scaler = LossScaler(backend.loss_scaling, trainable[0].device)
    history = LossHistory()
    for step_index, micro_steps in enumerate(plan):
        optimizer.zero_grad(set_to_none=True)
        recs, excls = [], []
        for micro_step in micro_steps:
            backend.check_interrupt()
            rec, excl = micro_step_losses(backend, latents, params, micro_step, null, config.beta,
                                          scaler.factor / len(micro_steps))
            if not math.isfinite(rec) or math.isinf(excl):
                raise NonFiniteLossError(
                    f"ConceptPrism Stage 1: the loss became non-finite (rec={rec}, excl={excl}) at step {step_index + 1} of {config.steps} "
                    f"(image index {micro_step.image}; the images and latents were checked finite before training). Lower learning_rate (e.g. to {config.learning_rate / 4:g}), or set "
                    "training_dtype to float32 if you trained in float16. No tokens were output.")
            recs.append(rec)
            excls.append(excl)
        if not scaler.step(optimizer, trainable, config.max_grad_norm, step_index + 1):
            history.skipped.append(step_index + 1)
        history.append(sum(recs) / len(recs), sum(excls) / len(excls))
        if on_step is not None:
            on_step(step_index + 1, config.steps, history.rec[-1], history.excl[-1])
        if on_preview is not None:
            on_preview(step_index + 1, params.detached)
    # Tokens that no update reached are the initial vectors: refused, not returned as if trained.
    check_trained("Stage 1", history.skipped, config.steps, "tokens")
    target, residuals = params.detached()
    return target, residuals, history
