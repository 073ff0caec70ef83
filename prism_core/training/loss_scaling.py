"""Dynamic loss scaling for float16 compute, shared by both stages.

In float16 the backward pass through the diffusion model underflows: the exclusion term's gradient
(beta = 0.05 times a difference of two near-equal predictions) is mostly below float16's smallest
normal number. The reference implementation trains in fp16 with a gradient scaler for this reason.
This is torch's own GradScaler (scale the loss, detect inf/NaN gradients, skip that update and
halve the scale, unscale before clipping), driven through a small interface because the stages
take their gradients with ``torch.autograd.grad``/``backward`` rather than ``loss.backward()``.
float32 and bfloat16 compute need no scaling (bfloat16 has float32's exponent range): the scaler
is then disabled and every call is a pass-through.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

log = logging.getLogger("ConceptPrism")

# Share of a run's steps that may be skipped before the run is reported as not what was asked for. A few skipped
# steps are the scaler finding its scale (it starts at 2**16 and halves on each overflow, as torch's GradScaler
# and every AMP trainer do); more than this means float16 cannot hold this model's gradients.
SKIPPED_WARNING_FRACTION = 0.05


class NothingTrainedError(RuntimeError):
    """Every update of a run was skipped: its result would be its starting point, reported as trained."""


_FIX = "set training_dtype to bfloat16 (float32's exponent range: it does not overflow) or float32"


def check_trained(stage: str, skipped: Sequence[int], steps: int, output: str) -> None:
    """Raise NothingTrainedError when all `steps` steps of a run were skipped (`skipped`: their step numbers), so its
    result would be its starting point; `output` (e.g. "tokens") names what the node would have put out."""
    if skipped and len(skipped) >= steps:
        raise NothingTrainedError(
            f"ConceptPrism {stage}: the float16 gradients overflowed at every one of the {steps} steps, so every update "
            f"was skipped and nothing was trained; no {output} were output (they would be their untrained start). To "
            f"fix it, {_FIX}.")


def skipped_warning(stage: str, skipped: Sequence[int], steps: int, output: str) -> str | None:
    """The warning for a run that applied fewer updates than asked (more than SKIPPED_WARNING_FRACTION of its
    `steps` skipped for float16 overflow), naming the steps and the fix; None when the run is what was asked."""
    if len(skipped) <= SKIPPED_WARNING_FRACTION * steps:
        return None
    shown = ", ".join(str(s) for s in skipped[:8]) + (", ..." if len(skipped) > 8 else "")
    return (f"ConceptPrism {stage}: the float16 gradients overflowed at {len(skipped)} of {steps} steps ({shown}) and "
            f"those updates were skipped: the {output} got {steps - len(skipped)} of the {steps} updates asked for. "
            f"The file header records it (skipped_steps). For every update, {_FIX}.")


class LossScaler:
    """Scale losses before backward; unscale, clip and step (or skip) after."""

    def __init__(self, enabled: bool, device: torch.device | str = "cpu") -> None:
        self.enabled = enabled
        self._scaler = torch.amp.GradScaler(torch.device(device).type, enabled=enabled)
        if enabled:
            self._scaler.scale(torch.ones((), device=device))  # creates the scale tensor on `device`
        self.skipped_steps: list[int] = []

    @property
    def factor(self) -> float:
        """The current loss scale (1.0 when disabled); multiply the loss by it before backward."""
        return float(self._scaler.get_scale()) if self.enabled else 1.0

    def step(self, optimizer: torch.optim.Optimizer, parameters: Sequence[torch.Tensor], max_grad_norm: float,
             step_number: int) -> bool:
        """Unscale the gradients, clip their norm to `max_grad_norm` (0 = no clip) and update, unless a
        gradient is inf/NaN: then skip the update and lower the scale. Returns True if it updated."""
        if not self.enabled:
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
            optimizer.step()
            return True
        self._scaler.unscale_(optimizer)
        finite = all(bool(torch.isfinite(p.grad).all()) for p in parameters if p.grad is not None)
        if max_grad_norm > 0 and finite:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        scale_before = self.factor
        self._scaler.step(optimizer)  # skips optimizer.step() when unscale_ found inf/NaN
        self._scaler.update()
        if not finite:
            self.skipped_steps.append(step_number)
            log.info("ConceptPrism: float16 gradients overflowed at step %d; update skipped, loss scale %g -> %g.",
                     step_number, scale_before, self.factor)
        return finite
