"""PrismConditioning: CONDITIONING from a prompt in which a placeholder stands for the learned token."""
from __future__ import annotations

from ..prism_core.host.internals.contract import TOKENS, require
from ..prism_core.host.stock_nodes import MODES, placeholder_conditioning
from .types import CATEGORY, PRISM_TOKENS


class PrismConditioning:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("Conditioning for KSampler, exactly like CLIP Text Encode's, with the learned vectors in place of the placeholder.",)
    FUNCTION = "encode"
    DESCRIPTION = "Encodes a prompt with the learned concept token. Use it wherever a CLIP Text Encode output goes."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The text encoder the tokens were learned with (same model family)."}),
                "tokens": (PRISM_TOKENS, {"tooltip": "From Optimize Prism Tokens or Load Prism Tokens."}),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "a photo of [V] on the beach", "tooltip": "The prompt. Each placeholder is replaced by the learned token; everything else (weights, embedding:name) works as in CLIP Text Encode."}),
                "placeholder": ("STRING", {"default": "[V]", "tooltip": "The text in the prompt that stands for the learned token."}),
                "mode": (list(MODES), {"default": "target", "tooltip": "target: the concept token (normal use). target with residual: '<target> with <residual i>', the training prompt of image i. residual only: '<residual i>' alone, which should draw image i's scene without the concept (paper Fig. 7)."}),
                "residual_index": ("INT", {"default": 0, "min": 0, "max": 63, "tooltip": "Which image's residual token the residual modes use (0 = first image, in concept-set order)."}),
            }
        }

    def encode(self, clip, tokens, text, placeholder, mode, residual_index):
        require("Prism Conditioning", TOKENS)
        if not placeholder:
            raise ValueError("PrismConditioning: 'placeholder' is empty; set it to the text that stands for the learned token, e.g. [V].")
        if placeholder not in text:
            raise ValueError(f"PrismConditioning: the prompt does not contain the placeholder '{placeholder}'. Write it where the concept goes, e.g. 'a photo of {placeholder} on the beach'.")
        return (placeholder_conditioning(clip, tokens, text, placeholder, mode, residual_index),)
