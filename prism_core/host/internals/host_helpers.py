"""Helpers of other host modules the pack borrows: the link type check, and which kind of vision model a CLIP_VISION is.
contract.py detects both by feature; tests/host/test_host_contract.py guards them."""
from __future__ import annotations

from typing import Any

import comfy.clip_vision


def link_type_matches(received: str, declared: Any) -> bool:
    """Whether an output of type `received` may connect to an input declared as `declared`, by the host's own
    rule (``comfy_execution.validation.validate_node_input``: "*", comma lists, ...)."""
    from comfy_execution.validation import validate_node_input
    return bool(validate_node_input(received, declared))


def dinov2_class() -> type | None:
    """The class the host builds a DINOv2 CLIP_VISION's model from (``comfy.clip_vision.IMAGE_ENCODERS``),
    or None on a host without DINOv2."""
    return getattr(comfy.clip_vision, "IMAGE_ENCODERS", {}).get("dinov2")


def vision_kind(clip_vision: Any) -> str:
    """'clip', 'siglip' or 'dinov2' for a CLIP_VISION, by what the host built; 'unknown' otherwise."""
    model = getattr(clip_vision, "model", None)
    if model is None or not hasattr(clip_vision, "encode_image"):
        return "unknown"
    dinov2 = dinov2_class()
    if dinov2 is not None and isinstance(model, dinov2):
        return "dinov2"
    if getattr(clip_vision, "return_all_hidden_states", False):
        return "siglip"  # the host sets this for SigLIP alone
    return "clip" if hasattr(model, "visual_projection") else "unknown"
