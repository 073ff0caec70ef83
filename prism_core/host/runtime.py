"""How a run runs (RunOptions) and what it tells the user: progress, cancel and on-node text through ComfyUI's
server, when there is one."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import comfy.utils

from ..training.loss_scaling import skipped_warning

log = logging.getLogger("ConceptPrism")


def step_reporter(total: int, node_id: str | None, label: str, loss_names: tuple[str, ...] = ("rec", "excl")
                  ) -> Callable[..., None]:
    """An on_step(step, steps, *losses) callback: moves the progress bar (which also raises on Cancel
    when a server is running) and shows the current losses, named by `loss_names`, on the node.
    NaN losses (not computed) are left out."""
    bar = comfy.utils.ProgressBar(total, node_id=node_id)

    def on_step(step: int, steps: int, *losses: float) -> None:
        bar.update_absolute(step, steps)
        shown = "".join(f"  {name} {value:.4f}" for name, value in zip(loss_names, losses) if value == value)
        message = f"{label} step {step}/{steps}{shown}"
        show_text(message, node_id)
        if step == 1 or step == steps or step % 20 == 0:
            log.info(message)

    return on_step


def show_text(message: str, node_id: str | None) -> None:
    if node_id is None:
        return
    try:
        from server import PromptServer
        PromptServer.instance.send_progress_text(message, node_id)
    except (ImportError, AttributeError):
        pass  # no server (tests, scripts): the log line is enough


@dataclass(frozen=True)
class RunOptions:
    """How to run, not what to learn: memory and precision controls, and FLUX.1's guidance input (the
    reference FLUX trainer feeds 3.5 to every branch; FLUX.1-schnell has no guidance embedding and ignores it)."""

    max_batch: int = 8
    training_dtype: str = "auto"
    gradient_checkpointing: bool = False
    guidance: float = 3.5


def report_skipped_steps(stage: str, skipped: list[int], steps: int, output: str, node_id: str | None) -> None:
    """Say loudly (a console warning and the node's text) when float16 overflow skipped a noticeable share of a
    run's updates (loss_scaling.skipped_warning): the result is then not the training asked for, and an INFO line
    per skipped step is easy to miss. A run with every update skipped was already refused by the loop."""
    message = skipped_warning(stage, skipped, steps, output)
    if message:
        log.warning(message)
        show_text(message, node_id)
