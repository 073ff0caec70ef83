"""What stock graphs do with a concept, done with the host's own nodes and functions, in one place for the
nodes, the previews and the sweep: a prompt with learned tokens at a placeholder (Prism Conditioning), a LoRA
applied as LoraLoaderModelOnly applies a file, and an image rendered as EmptyLatentImage -> KSampler -> VAEDecode.
So a preview or a sweep image is the image a graph of those nodes draws."""
from __future__ import annotations

from typing import Any

import torch

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
import nodes as host_nodes

from ..formats.token_bank import TARGET_SLOT, PrismTokens, residual_slot
from . import text

MODES = ("target", "target with residual", "residual only")


def placeholder_conditioning(clip: Any, tokens: PrismTokens, prompt: str, placeholder: str, mode: str = "target",
                             residual_index: int = 0, where: str | None = "Prism Conditioning") -> Any:
    """CONDITIONING of `prompt` with the learned tokens at `placeholder`: the target token (mode "target"), the target
    with residual `residual_index` ("target with residual") or the residual alone ("residual only"), encoded by
    the host's own encode_from_tokens_scheduled. Raises ValueError for tokens of another family, or a residual
    mode with tokens that have none; warns (as `where`; None: no warning, e.g. for previews of the run itself)
    when the CLIP uses another layer than the tokens were learned with."""
    widths = {k: v.shape[1] for k, v in tokens.target.items()}
    text.check_family(clip, tokens.encoder_keys, widths, "These ConceptPrism tokens", tokens.settings.get("family"))
    if where is not None:
        text.warn_on_other_clip_layer(clip, tokens, where)
    if mode != "target" and tokens.residual_length == 0:
        raise ValueError(f"PrismConditioning: mode '{mode}' needs residual tokens, but these tokens were learned with "
                         "residual_length 0. Use mode 'target'.")
    parts = {"target": (TARGET_SLOT,), "target with residual": (TARGET_SLOT, "with", residual_slot(residual_index)),
             "residual only": (residual_slot(residual_index),)}[mode]
    return clip.encode_from_tokens_scheduled(text.bank_tokens(clip, tokens, prompt, parts, placeholder))


def apply_lora(model: Any, weights: dict[str, torch.Tensor], strength: float = 1.0) -> Any:
    """A clone of `model` with the LoRA `weights` (file keys -> tensors) patched in at model strength `strength`,
    exactly as LoraLoaderModelOnly patches a file (``comfy.sd.load_lora_for_models``)."""
    patched, _ = comfy.sd.load_lora_for_models(model, None, dict(weights), strength, 0)
    return patched


def apply_lora_file(model: Any, lora_name: str | None) -> Any:
    """`model` with a loras-folder file applied at model strength 1 (`apply_lora`); the incoming model itself when
    lora_name is None."""
    if lora_name is None:
        return model
    path = folder_paths.get_full_path_or_raise("loras", lora_name)
    return apply_lora(model, comfy.utils.load_torch_file(path, safe_load=True))


def render(model: Any, vae: Any, positive: Any, negative: Any, width: int, height: int, seed: int, steps: int,
           cfg: float, sampler_name: str, scheduler: str) -> torch.Tensor:
    """IMAGE [1, height, width, 3]: EmptyLatentImage -> KSampler -> VAEDecode with the host's own nodes (the same
    noise from the seed, sampler, scheduler and cfg). Raises the host's interrupt exception on Cancel."""
    latent = host_nodes.EmptyLatentImage().generate(width, height, 1)[0]
    samples = host_nodes.KSampler().sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent)[0]
    comfy.model_management.throw_exception_if_processing_interrupted()
    return host_nodes.VAEDecode().decode(vae, samples)[0]
