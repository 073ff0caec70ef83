"""What the host knows about a loaded model beyond its public surface: whether it is FLUX.1 or Z-Image (its
config's class and image model), the compute dtypes its config allows, which of them a device runs, whether a FLUX transformer reads a
guidance input, and the tensors its conditioning objects wrap. contract.py detects each
by feature; tests/host/test_host_contract.py guards them."""
from __future__ import annotations

from typing import Any

import torch

import comfy.model_base
import comfy.model_management
import comfy.supported_models

# The host's own default order (comfy.supported_models_base.BASE.supported_inference_dtypes), for a model
# config that does not say.
HOST_DEFAULT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def supported_dtypes(model: Any) -> tuple[torch.dtype, ...]:
    """The compute dtypes the host allows for this MODEL, in the host's order of preference: its model config's
    ``supported_inference_dtypes`` (SD1.x/SDXL: float16, bfloat16, float32; FLUX.1: bfloat16, float16, float32),
    which is what ``comfy.model_management.unet_dtype`` / ``unet_manual_cast`` walk when the host picks the
    dtype it samples the model in. A torch.device (no model at hand) gets the host's default order."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    listed = getattr(config, "supported_inference_dtypes", None)
    return tuple(listed) if listed else HOST_DEFAULT_DTYPES


def device_computes(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the host would run `dtype` on `device` (``should_use_fp16`` / ``should_use_bf16`` with
    ``prioritize_performance=False``: whether the device computes the dtype, not whether it is the fastest
    choice for inference); float32 always."""
    if dtype == torch.float16:
        return bool(comfy.model_management.should_use_fp16(device, prioritize_performance=False))
    if dtype == torch.bfloat16:
        return bool(comfy.model_management.should_use_bf16(device, prioritize_performance=False))
    return dtype == torch.float32


def reads_guidance(model: Any) -> bool:
    """Whether the MODEL's diffusion model reads a guidance input: FLUX.1-dev's transformer has a guidance
    embedding (`params.guidance_embed`, the `guidance_in` MLP), FLUX.1-schnell's and SD's have none. Decided by
    that feature, not by a file or family name, so a renamed or merged checkpoint is judged by what it computes.
    Only a model that reads guidance records it (token bank, LoRA header) and has it compared (Stage 2 against
    Stage 1, resume against the file): for the others the value changes nothing."""
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", None)
    params = getattr(diffusion_model, "params", None)
    if params is not None and hasattr(params, "guidance_embed"):
        return bool(params.guidance_embed)
    embedder = getattr(diffusion_model, "guidance_in", None)  # hosts whose transformer keeps no params
    return embedder is not None and not isinstance(embedder, torch.nn.Identity)


def _unet_config(patcher: Any) -> dict[str, Any]:
    # the transformer/UNet settings the host's model config holds (image_model, context_in_dim, ...)
    return getattr(getattr(patcher.model, "model_config", None), "unet_config", {})


def is_flux1(patcher: Any) -> bool:
    """FLUX.1 dev or schnell: the host's model_base.Flux running its FLUX.1 transformer (unet_config
    image_model "flux"). FLUX.2 (v0.8.0's model_base.Flux2, a subclass with image_model "flux2" and a Mistral
    text encoder), Chroma and other Flux-derived models are not FLUX.1."""
    model = patcher.model
    return isinstance(model, comfy.model_base.Flux) and type(model).__name__ == "Flux" and _unet_config(patcher).get("image_model") == "flux"


def is_zimage(patcher: Any) -> bool:
    """Z-Image (Turbo, Base): the host's Z-Image config (``comfy.supported_models.ZImage``, ComfyUI 0.3.75 on) on its
    model_base.Lumina2 with the NextDiT of image model "lumina2". Lumina Image 2.0 (the parent config, a Gemma
    encoder), Z-Image's pixel-space variant (image model "zimage_pixel") and hosts without Z-Image are not."""
    config_class = getattr(comfy.supported_models, "ZImage", None)
    model = patcher.model
    return (config_class is not None and isinstance(getattr(model, "model_config", None), config_class)
            and type(model).__name__ == "Lumina2" and _unet_config(patcher).get("image_model") == "lumina2")


# FLUX.2-dev's text input: three stacked layers of Mistral-Small 3's 5120-wide states (comfy/text_encoders/flux.py).
FLUX2_DEV_TEXT_INPUT = 3 * 5120


def is_flux2(patcher: Any) -> bool:
    """A FLUX.2 transformer (model_base.Flux2, image_model "flux2", ComfyUI after v0.8.0): Klein 4B / 9B or
    FLUX.2-dev; `text_input_width` tells them apart."""
    model = patcher.model
    flux2 = getattr(comfy.model_base, "Flux2", None)
    return flux2 is not None and isinstance(model, flux2) and _unet_config(patcher).get("image_model") == "flux2"


def text_input_width(patcher: Any) -> int | None:
    """The width of the text states a FLUX transformer reads (its config's context_in_dim, which the host's model
    detection takes from the checkpoint's txt_in weight): FLUX.2 Klein 3 x 2560 (4B) or 3 x 4096 (9B),
    FLUX.2-dev 3 x 5120 (FLUX2_DEV_TEXT_INPUT)."""
    return _unet_config(patcher).get("context_in_dim")


def condition_tensors(extras: dict[str, Any]) -> dict[str, Any]:
    """{model input name: tensor} of ``BaseModel.extra_conds``' result (``comfy.conds.CONDRegular`` objects
    holding their tensor as ``.cond``; a ``CONDConstant`` holds a plain value, e.g. Z-Image's num_tokens, an int)."""
    return {key: value.cond for key, value in extras.items()}
