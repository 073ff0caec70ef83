"""PrismLossGraph: Stage 1 and Stage 2 loss curves as an IMAGE."""
from __future__ import annotations

import torch

from ..prism_core.pictures.loss_plot import Curve, draw_curves
from .types import CATEGORY, LOSS_MAP, PRISM_TOKENS


class PrismLossGraph:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("graph",)
    OUTPUT_TOOLTIPS = ("One panel per curve (raw per-step values faint, moving average dark); connect Preview Image or Save Image.",)
    FUNCTION = "draw"
    DESCRIPTION = "Draws the Stage 1 reconstruction and exclusion losses and the Stage 2 loss, per optimizer step."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {
            "tokens": (PRISM_TOKENS, {"tooltip": "Stage 1 tokens: their reconstruction (Eq. 2) and exclusion (Eq. 4) curves."}),
            "lora_loss": (LOSS_MAP, {"tooltip": "The loss output of Prism LoRA Train (or the host's Train LoRA)."}),
        }}

    def draw(self, tokens=None, lora_loss=None):
        curves = []
        if tokens is not None:
            curves.append(Curve("Stage 1 reconstruction L_rec", tokens.history.rec))
            if any(x == x for x in tokens.history.excl):
                curves.append(Curve("Stage 1 exclusion L_excl", tokens.history.excl))
        if lora_loss is not None:
            curves.append(Curve("Stage 2 LoRA loss", list(lora_loss.get("loss", []))))
        return (torch.from_numpy(draw_curves(curves))[None],)
