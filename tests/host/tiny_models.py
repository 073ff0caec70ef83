"""Tiny real ComfyUI models, built in-process with explicit initialisation (comfy ops skip it).

One per family the pack supports: SD1.5-family eps (clip_l), SD2-family v-prediction (clip_h),
SDXL-family eps (clip_l + clip_g, with the pooled/size `y` input). Text encoders keep their real
widths (768, 1024, 1280) with 2-3 layers, so width assumptions cannot hide; UNets are small.
Built under ``torch.inference_mode()`` like the executor's loaders, so their weights are
inference tensors exactly as in a real run.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import torch

import comfy.ldm.flux.model
import comfy.model_base
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.text_encoders.sd2_clip
import comfy.sdxl_clip
import comfy.text_encoders.flux
import comfy.supported_models
import comfy.supported_models_base
import comfy.model_management


@dataclass
class TinyModels:
    family: str
    model: comfy.model_patcher.ModelPatcher
    clip: comfy.sd.CLIP
    vae: comfy.sd.VAE


def _init_(module: torch.nn.Module, seed: int, rounded_like: torch.dtype | None = None) -> None:
    """Seeded values, written into parameters of any dtype (float16/bfloat16 storage rounds them).
    rounded_like: round float32 parameters through that dtype, so a float32 twin holds exactly the
    values a model stored in that dtype holds."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                value = torch.randn(p.shape, generator=generator) / fan_in ** 0.5
            elif name.endswith("weight"):
                value = torch.ones(p.shape)
            else:
                value = torch.randn(p.shape, generator=generator) * 0.02
            p.copy_(value.to(rounded_like).float() if rounded_like is not None else value)


def _clip_config(width: int, layers: int, heads: int) -> dict:
    return {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": heads,
            "num_hidden_layers": layers, "projection_dim": width}


def _unet(config_class, unet_config: dict, model_class, dtype: torch.dtype, **kwargs):
    config = config_class({**config_class.unet_config, **unet_config})
    # As ComfyUI's loader on a GPU: weights stored in `dtype`, no manual cast (compute follows storage).
    config.set_inference_dtype(dtype, None)
    return model_class(config, **kwargs)


def _vae(seed: int, channels: int = 4) -> comfy.sd.VAE:
    ddconfig = {"double_z": True, "z_channels": channels, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the host warns about every key of the (deliberately) empty state dict
    try:
        vae = comfy.sd.VAE(sd={}, config={"params": {"ddconfig": ddconfig, "embed_dim": channels}}, dtype=torch.float32)
    finally:
        logger.setLevel(level)
    _init_(vae.first_stage_model, seed)
    return vae


def _t5_config(width: int) -> dict:
    """T5-XXL's config (comfy/text_encoders/t5_config_xxl.json) with a small width: 1 layer, 2 heads of 16,
    the real vocabulary, gated GELU as in XXL."""
    return {"d_model": width, "d_ff": 2 * min(width, 128), "d_kv": 16, "num_heads": 2, "num_layers": 1}


def _flux(family: str, dtype: torch.dtype, t5_width: int):
    """A tiny FLUX.1 transformer (hidden 64, 4 heads, axes_dim [4, 6, 6] summing to the head width 16, 1 double + 1 single
    block, vec_in_dim 768 = CLIP-L's pooled width). The T5 width is read by the model from context_in_dim."""
    dev = family == "flux"
    config_class = comfy.supported_models.Flux if dev else comfy.supported_models.FluxSchnell
    unet_config = {"image_model": "flux", "guidance_embed": dev, "in_channels": 16, "out_channels": 16,
                   "vec_in_dim": 768, "context_in_dim": t5_width, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 4,
                   "depth": 1, "depth_single_blocks": 1, "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2,
                   "qkv_bias": True, "txt_ids_dims": []}
    config = config_class(_accepted_by_host(unet_config))
    # fp8 storage: the host's loader always pairs it with a manual-cast compute dtype (float32 on the CPU)
    manual_cast = torch.float32 if dtype.itemsize == 1 else None
    config.set_inference_dtype(dtype, manual_cast)
    return config.get_model({})


def _accepted_by_host(unet_config: dict) -> dict:
    """The FLUX config keys this host's FluxParams takes (plus image_model, read by the config class): built from
    what the host's class accepts, not a version. txt_ids_dims, say, exists from v0.8.0 on (FLUX.1: []) and not
    in v0.3.75's FluxParams; a FLUX.2-shaped model built without it takes the host's default."""
    fields = comfy.ldm.flux.model.FluxParams.__dataclass_fields__
    return {k: v for k, v in unet_config.items() if k in fields or k == "image_model"}


def flux2_shaped() -> comfy.model_base.BaseModel:
    """A tiny FLUX.2-shaped model (hosts with supported_models.Flux2, v0.8.0 on): the host's FLUX.2 config and
    model class with small sizes, as model_detection would describe a FLUX.2 checkpoint. Only for refusal tests."""
    config = comfy.supported_models.Flux2(_accepted_by_host({
        "image_model": "flux2", "axes_dim": [4, 4, 4, 4], "num_heads": 4, "mlp_ratio": 3.0, "theta": 2000,
        "in_channels": 128, "out_channels": 128, "global_modulation": True, "mlp_silu_act": True, "qkv_bias": False,
        "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0, "txt_ids_dims": [3], "patch_size": 1,
        "vec_in_dim": 768, "context_in_dim": 64, "hidden_size": 64, "depth": 1, "depth_single_blocks": 1,
        "guidance_embed": True}))
    config.set_inference_dtype(torch.float32, None)
    return config.get_model({})


def klein_shaped(seed: int = 0, dtype: torch.dtype = torch.float32, text_width: int = 64, guidance: bool = False,
                 context_in_dim: int | None = None) -> comfy.model_base.BaseModel:
    """A tiny FLUX.2 Klein transformer (hosts with FLUX.2 Klein, 0.33.0 on): the host's FLUX.2 config as model
    detection describes a FLUX.2 checkpoint (global modulation, SiLU-gated MLP, no biases, patch size 1, 128 latent
    channels), hidden 64 in 4 heads, 1 double + 1 single block, a text input of 3 x `text_width` (Klein stacks three
    of its Qwen3's layers; `context_in_dim` overrides it), no pooled input, a guidance embedding with `guidance`;
    weights stored in `dtype` (fp8 with float32 manual cast). Not initialised (`build` does)."""
    config = comfy.supported_models.Flux2(_accepted_by_host({
        "image_model": "flux2", "axes_dim": [4, 4, 4, 4], "num_heads": 4, "mlp_ratio": 3.0, "theta": 2000,
        "in_channels": 128, "out_channels": 128, "global_modulation": True, "mlp_silu_act": True, "qkv_bias": False,
        "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0, "txt_ids_dims": [3], "patch_size": 1,
        "vec_in_dim": None, "context_in_dim": context_in_dim or 3 * text_width, "hidden_size": 64, "depth": 1,
        "depth_single_blocks": 1, "guidance_embed": guidance}))
    config.set_inference_dtype(dtype, torch.float32 if dtype.itemsize == 1 else None)
    return config.get_model({})


def _klein_clip(name: str, width: int, embedding_directory: str | None, clip_options: dict) -> comfy.sd.CLIP:
    """FLUX.2 Klein's text encoder as Load CLIP (type flux2) builds it: Qwen3 (4B: key qwen3_4b, 9B: qwen3_8b) at
    `width` with 28 layers (Klein conditions on layers 9, 18 and 27), its KleinTokenizer and chat template, prompts
    padded to 512 tokens."""
    flux_text = importlib.import_module("comfy.text_encoders.flux")
    tokenizer = flux_text.KleinTokenizer if name == "qwen3_4b" else flux_text.KleinTokenizer8B
    config = {**_qwen3_config(width), "num_hidden_layers": 28}
    return comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(tokenizer, flux_text.klein_te(model_type=name)),
                         embedding_directory=embedding_directory, model_options={**clip_options, f"{name}_model_config": config})


def zimage_shaped(seed: int = 0, dtype: torch.dtype = torch.float32, cap_feat_dim: int = 64) -> comfy.model_base.BaseModel:
    """A tiny Z-Image transformer (hosts with supported_models.ZImage, 0.3.75 on): the host's Z-Image config and
    its Lumina2 / NextDiT classes with small sizes (dim 256, the least its modulation takes, 8 heads of
    8 + 12 + 12 rope dims, a `cap_feat_dim`-wide caption input = the text encoder's width, 2 blocks and one
    refiner block per stream), weights stored in `dtype` (fp8: with float32 manual cast, as the host's loader
    pairs it), not yet initialised (`build` does, `_init_`)."""
    config = comfy.supported_models.ZImage({
        **comfy.supported_models.ZImage.unet_config, "patch_size": 2, "in_channels": 16, "dim": 256,
        "cap_feat_dim": cap_feat_dim, "n_layers": 2, "n_refiner_layers": 1, "qk_norm": True, "n_heads": 8, "n_kv_heads": 8,
        "axes_dims": [8, 12, 12], "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0,
        "multiple_of": 32, "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32})
    config.set_inference_dtype(dtype, torch.float32 if dtype.itemsize == 1 else None)
    return config.get_model({})


def lumina2_shaped(seed: int = 0) -> comfy.model_base.BaseModel:
    """A tiny Lumina Image 2.0 transformer (the host's Lumina2 config, Z-Image's parent, on every release): NextDiT
    with the sizes of `zimage_shaped` and only the settings this host's NextDiT takes (Z-Image's own came with
    0.3.75), initialised. Only for refusal tests: the pack does not train it."""
    import inspect
    import comfy.ldm.lumina.model
    accepted = inspect.signature(comfy.ldm.lumina.model.NextDiT.__init__).parameters
    wanted = {"patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": 64, "n_layers": 2, "n_refiner_layers": 1,
              "qk_norm": True, "n_heads": 8, "n_kv_heads": 8, "axes_dims": [8, 12, 12], "axes_lens": [1536, 512, 512],
              "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "multiple_of": 32}
    config = comfy.supported_models.Lumina2({**comfy.supported_models.Lumina2.unet_config,
                                             **{k: v for k, v in wanted.items() if k in accepted}})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    _init_(model.diffusion_model, seed)
    return model


def _qwen3_config(width: int) -> dict:
    """Qwen3-4B's text-model config (comfy/text_encoders/llama.py Qwen3_4BConfig) with a small width: 3 layers
    (the host conditions on the second to last), 2 query heads sharing 1 key/value head; its head width (128),
    RoPE and the real 151,936-row vocabulary stay."""
    return {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 3, "num_attention_heads": 2,
            "num_key_value_heads": 1}


def _unet_common(context_dim: int, channels: int) -> dict:
    return {"in_channels": 4, "out_channels": 4, "model_channels": channels, "num_res_blocks": [1, 1],
            "channel_mult": [1, 2], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
            "transformer_depth_middle": 1, "context_dim": context_dim, "image_size": 32, "use_spatial_transformer": True,
            }


def build(family: str, seed: int = 0, embedding_directory: str | None = None, unet_dtype: torch.dtype = torch.float32,
          clip_dtype: torch.dtype | None = None, rounded_like: torch.dtype | None = None, t5_width: int = 64, qwen_width: int = 64) -> TinyModels:
    """Tiny models of `family`. unet_dtype / clip_dtype: how weights are stored (clip_dtype None: the host's
    default text-encoder dtype, float16 even on the CPU). rounded_like: with float32 storage, hold exactly
    the values a model stored in that dtype holds (a float32 twin of a float16/bfloat16 build).
    Families: "sd15", "sd2v", "sdxl", "flux" (FLUX.1-dev shaped: guidance embedding, ModelSamplingFlux) and
    "flux-schnell" (no guidance embedding, discrete flow sampling), "zimage" (Z-Image: NextDiT + Qwen3 with the
    real tokenizer and chat template), "klein4b" / "klein9b" (FLUX.2 Klein with its Qwen3 4B / 8B shaped at widths
    64 / 96; "klein4b-guided": with a guidance embedding); t5_width / qwen_width: the FLUX T5's / Z-Image Qwen3's width (their
    vocabularies stay the real 32,128 / 151,936 rows)."""
    clip_options = {"dtype": clip_dtype} if clip_dtype is not None else {}
    with torch.inference_mode():
        if family == "sd15":
            unet = _unet(comfy.supported_models.SD15, {**_unet_common(768, 32), "num_heads": 4, "num_head_channels": -1,
                                                      "use_linear_in_transformer": False}, comfy.model_base.BaseModel, unet_dtype)
            clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                                 embedding_directory=embedding_directory,
                                 model_options={**clip_options, "clip_l_model_config": _clip_config(768, 2, 12)})
        elif family == "sd2v":
            unet = _unet(comfy.supported_models.SD20, {**_unet_common(1024, 64), "num_heads": -1, "num_head_channels": 64},
                         comfy.model_base.BaseModel, unet_dtype, model_type=comfy.model_base.ModelType.V_PREDICTION)
            clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd2_clip.SD2Tokenizer, comfy.text_encoders.sd2_clip.SD2ClipModel),
                                 embedding_directory=embedding_directory,
                                 model_options={**clip_options, "clip_h_model_config": _clip_config(1024, 3, 16)})
        elif family == "sdxl":
            unet = _unet(comfy.supported_models.SDXL, {**_unet_common(2048, 64), "num_heads": -1, "num_head_channels": 64,
                                                      "adm_in_channels": 1280 + 1536, "num_classes": "sequential"},
                         comfy.model_base.SDXL, unet_dtype)
            clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel),
                                 embedding_directory=embedding_directory,
                                 model_options={**clip_options, "clip_l_model_config": _clip_config(768, 3, 12),
                                                "clip_g_model_config": _clip_config(1280, 3, 20)})
        elif family in ("flux", "flux-schnell"):
            unet = _flux(family, unet_dtype, t5_width)
            clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.FluxClipModel),
                                 embedding_directory=embedding_directory,
                                 model_options={**clip_options, "clip_l_model_config": _clip_config(768, 2, 12),
                                                "t5xxl_model_config": _t5_config(t5_width)})
        elif family == "zimage":
            z_image = importlib.import_module("comfy.text_encoders.z_image")  # 0.3.75 on
            unet = zimage_shaped(seed, unet_dtype, cap_feat_dim=qwen_width)
            clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(z_image.ZImageTokenizer, z_image.te()),
                                 embedding_directory=embedding_directory,
                                 model_options={**clip_options, "qwen3_4b_model_config": _qwen3_config(qwen_width)})
        elif family in ("klein4b", "klein9b", "klein4b-guided"):
            name, width = ("qwen3_4b", 64) if family.startswith("klein4b") else ("qwen3_8b", 96)
            unet = klein_shaped(seed, unet_dtype, width, guidance=family.endswith("guided"))
            clip = _klein_clip(name, width, embedding_directory, clip_options)
        else:
            raise ValueError(family)
        _init_(unet.diffusion_model, seed, rounded_like)
        _init_(clip.cond_stage_model, seed + 1, rounded_like)
        device = comfy.model_management.get_torch_device()
        model = comfy.model_patcher.ModelPatcher(unet, load_device=device, offload_device=device)
        vae = _vae(seed + 2, model.model.latent_format.latent_channels)
    return TinyModels(family, model, clip, vae)


# CLIP vision and DINOv2 as CLIPVisionLoader builds them (comfy.clip_vision.ClipVisionModel from a JSON
# config), from the host's own configs with small sizes. DINOv2 keeps the host's fixed 518 px input
# (its position table is built for 37 x 37 patches), so its preprocessing is the real one.
# The host's own config files, the first one this release ships: ComfyUI recognises DINOv2-large from about
# 0.3.6x on; 0.3.52 ships (and loads) only DINOv2-giant, whose blocks use a SwiGLU feed-forward.
VISION_CONFIGS = {"clip": ("clip_vision_config_h.json",),
                  "dinov2": ("image_encoders/dino2_large.json", "image_encoders/dino2_giant.json")}


def clip_vision(kind: str, seed: int = 0, projection_dim: int = 1024, config_dir: str | None = None):
    """A tiny ClipVisionModel: kind 'clip' (ViT-H's config, 2 layers of 64, 56 px, projection to
    `projection_dim`, the text width it pairs with) or 'dinov2' (DINOv2-large's config, or giant's where the host
    has no large, 2 layers of 48)."""
    import json
    import os
    import tempfile

    import comfy.clip_vision

    host_configs = os.path.dirname(os.path.realpath(comfy.clip_vision.__file__))
    name = next(n for n in VISION_CONFIGS[kind] if os.path.isfile(os.path.join(host_configs, n)))
    with open(os.path.join(host_configs, name)) as f:
        config = json.load(f)
    if kind == "clip":
        config.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, image_size=56,
                      projection_dim=projection_dim)
    else:
        config.update(hidden_size=48, num_attention_heads=4, num_hidden_layers=2)
    descriptor, path = tempfile.mkstemp(prefix=f"tiny_{kind}_", suffix=".json", dir=config_dir)
    with os.fdopen(descriptor, "w") as f:
        json.dump(config, f)
    try:
        with torch.inference_mode():
            model = comfy.clip_vision.ClipVisionModel(path)
            _init_(model.model, seed)
            with torch.no_grad():  # DINOv2's layer scales start at 1 (its config's layerscale_value), not near 0
                for name, p in model.model.named_parameters():
                    if name.endswith("lambda1"):
                        p.fill_(1.0)
    finally:
        os.unlink(path)
    return model
