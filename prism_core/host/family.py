"""The model family, decided once per run from the MODEL (and CLIP) and asked by every node, loop and check.

A family is what the pack needs to know to train a MODEL and to hand the result back: its name (SD, FLUX.1,
Z-Image, FLUX.2 Klein), its native training target and timestep sampling, whether it reads FLUX.1's guidance input, its text encoders and their widths,
which presets and frozen encoders apply, and (where Stage 2 supports it) the LoRA family its files are written
for. `describe` decides all of it in one place; the stages and nodes take the `ModelFamily` it returns instead of
asking the model again. Adding a family is one more case here plus its tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import comfy.model_base
import comfy.model_sampling
import comfy.supported_models

from ..formats.lora_file import BaseFamily
from ..training.schedule import FLOW_SIGMA_LEVELS
from . import text
from .internals.model_facts import FLUX2_DEV_TEXT_INPUT, is_flux1, is_flux2, is_zimage, reads_guidance, text_input_width

TRAINED_FAMILIES = "SD1.x, SD2.x (incl. v-prediction), SDXL, FLUX.1 (dev, schnell), Z-Image and FLUX.2 Klein (4B, 9B)"

# FLUX.1's CLIP-L rows stay fixed by default (as the reference FLUX trainer): T5 carries the concept.
FLUX_FROZEN_ENCODERS = ("clip_l",)

# Stage 2's LoRA families of the SD model configs: (config class, name, kohya base name, modelspec architecture),
# checked in order (SDXL-derived configs first).
SD_LORA_FAMILIES = [
    (comfy.supported_models.SDXL, "sdxl", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
    (comfy.supported_models.SD20, "sd2", "sd_v2", "stable-diffusion-v2-512/lora"),
    (comfy.supported_models.SD15, "sd15", "sd_v1", "stable-diffusion-v1/lora"),
]


@dataclass(frozen=True)
class ModelFamily:
    """What one run knows about its MODEL (and CLIP), decided by `describe`.

    name: "sd" (SD1.x, SD2.x, SDXL), "flux1", "zimage" or "klein" (FLUX.2 Klein); target: the native training target, "eps", "v" or "flow" (losses.native_coefficients); schedule_levels: how
    many timestep indices a plan draws from; reads_guidance: FLUX.1-dev's guidance embedding is present;
    encoder_widths: {embedding key: input-embedding width} of the CLIP's text encoders (empty without a CLIP);
    lora: the family LoRA files are written for, None where Stage 2 has no entry (lora_refusal says why);
    text_input: the width of the text states a FLUX.2 transformer reads (3 x its Qwen3's width), None elsewhere."""

    name: str
    target: str
    schedule_levels: int
    reads_guidance: bool
    encoder_widths: dict[str, int] = field(default_factory=dict)
    lora: BaseFamily | None = None
    lora_refusal: str = ""
    text_input: int | None = None

    @property
    def title(self) -> str:
        """The family as people call it, for progress lines: "SD", "FLUX.1", "Z-Image", "FLUX.2 Klein"."""
        return {"sd": "SD", "flux1": "FLUX.1", "zimage": "Z-Image", "klein": "FLUX.2 Klein"}[self.name]

    @property
    def flux(self) -> bool:
        """FLUX.1 (dev or schnell)."""
        return self.name == "flux1"

    @property
    def presets(self) -> str:
        """The key of the family's reference values in config.family_preset: "flux" for the flow transformers
        (FLUX.1; Z-Image and FLUX.2 Klein, whose paper-free defaults follow the reference FLUX trainer's: flow DiTs
        conditioned on one large text encoder's states, as FLUX.1 on T5's) or "sd"."""
        return "flux" if self.name in ("flux1", "zimage", "klein") else "sd"

    @property
    def frozen_encoders(self) -> tuple[str, ...]:
        """Text encoders whose learned rows stay fixed by default (FLUX.1: CLIP-L)."""
        return FLUX_FROZEN_ENCODERS if self.flux else ()

    def guidance_input(self, guidance: float) -> float | None:
        """The guidance value the model's inputs carry: FLUX.1's and FLUX.2 Klein's (a model without a guidance
        embedding ignores it), None for SD and Z-Image."""
        return guidance if self.name in ("flux1", "klein") else None


def sampling_target(sampling: Any) -> str:
    """The native training target the class of the (possibly patched) model_sampling names: "eps" for EPS models,
    "v" for V_PREDICTION (SD2.x-768-v), "flow" (velocity eps - x0) for CONST sampling (describe accepts it for
    FLUX.1 only). Raises ValueError for parameterisations the pack does not train (EDM, x0, ...)."""
    if isinstance(sampling, comfy.model_sampling.CONST):
        return "flow"
    if isinstance(sampling, (comfy.model_sampling.EDM, comfy.model_sampling.X0)) or not isinstance(sampling, comfy.model_sampling.EPS):
        raise ValueError(
            f"ConceptPrism trains {TRAINED_FAMILIES}; this MODEL's sampling is "
            f"{type(sampling).__name__}. Load one of those models, and remove ModelSampling* patches that change "
            "the prediction type.")
    return "v" if isinstance(sampling, comfy.model_sampling.V_PREDICTION) else "eps"


def sd_lora_family(model: Any) -> BaseFamily | None:
    """The LoRA family of an SD model config (SD_LORA_FAMILIES; SD2.x-768-v by its V_PREDICTION model type), or
    None for any other config."""
    config = model.model.model_config
    v_prediction = model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    for config_class, name, kohya, modelspec in SD_LORA_FAMILIES:
        if isinstance(config, config_class):
            if name == "sd2" and v_prediction:
                modelspec = "stable-diffusion-v2-768-v/lora"
            return BaseFamily(name, v_prediction, kohya, modelspec)
    return None


def describe(model: Any, clip: Any | None = None, stage2: bool = False) -> ModelFamily:
    """The family of `model` (a MODEL patcher) with `clip`'s text encoders, decided once.

    Raises ValueError before any work for a model the pack does not train (sampling_target: EDM, x0; a flow model
    that is neither FLUX.1, Z-Image nor FLUX.2 Klein: FLUX.2-dev, SD3, ...), with `stage2` for a model Stage 2 has no LoRA layout for (named before
    the CLIP is checked), and for a CLIP whose text encoders are not the model's family's
    (text.check_text_encoders). The model's own questions come first, the CLIP's last, so each is asked once."""
    sampling = model.get_model_object("model_sampling")
    target = sampling_target(sampling)
    sd_lora = sd_lora_family(model)
    flux, zimage, guided = is_flux1(model), is_zimage(model), reads_guidance(model)
    text_input = text_input_width(model) if is_flux2(model) else None
    klein = text_input is not None and text_input != FLUX2_DEV_TEXT_INPUT
    config_name = type(model.model.model_config).__name__
    if text_input is not None and not klein:
        raise ValueError(f"ConceptPrism trains {TRAINED_FAMILIES}; this MODEL is FLUX.2-dev (its text input is Mistral "
                         "Small 3's), which it does not train: learning tokens backpropagates through its 24 B text encoder, "
                         "beyond one consumer card. Load a FLUX.2 Klein 4B or 9B diffusion model, or another family.")
    if target == "flow" and not (flux or zimage or klein):
        names = ", ".join(dict.fromkeys([config_name, type(model.model).__name__]))  # "ZImage, Lumina2"; "Flux2" once
        raise ValueError(
            f"ConceptPrism trains {TRAINED_FAMILIES}; this MODEL is a flow model it does not train yet ({names}: e.g. "
            "SD3, Lumina 2, Chroma or Z-Image's pixel-space model). Load a FLUX.1-dev, FLUX.1-schnell, Z-Image or FLUX.2 "
            "Klein diffusion model, or an SD checkpoint.")
    # FLUX.1: the LoRA family follows the guidance embedding (dev reads guidance, schnell does not).
    lora = (BaseFamily("flux1" if guided else "flux1-schnell", False, "flux1",
                       "flux-1-dev/lora" if guided else "flux-1-schnell/lora") if flux
            else BaseFamily("zimage", False, "zimage", "z-image/lora") if zimage
            else BaseFamily("flux2-klein", False, "flux2-klein", "flux-2-klein/lora") if klein else sd_lora)
    name = "flux1" if flux else "zimage" if zimage else "klein" if klein else "sd"
    refusal = "" if lora is not None else (
        f"ConceptPrism Stage 2 supports SD1.x, SD2.x, SDXL, FLUX.1 (dev, schnell), Z-Image and FLUX.2 Klein; this MODEL is {config_name}. "
        "Load one of those, or use the Stage 1 tokens (Prism Conditioning, "
        "Save Prism Embedding) without a LoRA.")
    if stage2 and lora is None:
        raise ValueError(refusal)
    widths = text.encoder_widths(clip) if clip is not None else {}
    if clip is not None:
        text.check_text_encoders(name, clip, text_input)
    # eps and v models draw t ~ U{0..T-1} of their discrete schedule (paper Sec. 4.1); flow models draw sigma ~
    # U(0, 1] on FLOW_SIGMA_LEVELS directly: FLUX's and Z-Image's stored sigmas are shifted (Z-Image: shift 3 in
    # the host's ZImage config), so a uniform index would not be a uniform sigma. Uniform sigma is the paper's
    # uniform t carried to flow matching, as for FLUX.1; the sampler's shift stays an inference setting.
    levels = FLOW_SIGMA_LEVELS if target == "flow" else int(sampling.sigmas.shape[0])
    return ModelFamily(name, target, levels, guided, widths, lora, refusal, text_input)
