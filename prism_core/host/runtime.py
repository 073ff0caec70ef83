"""Progress, cancel and on-node text through ComfyUI's server, when there is one."""
from __future__ import annotations

import logging
from typing import Callable

import comfy.utils

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
