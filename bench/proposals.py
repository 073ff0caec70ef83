"""Prototypes of changes proposed for prism_core.host, applied by the bench only (monkeypatched while a
backend is entered), so their effect can be measured before anyone edits the pack.

Both replace `prism_core.host.internals.training_guard.with_weight_copies`, which today gives every module that
holds an inference-tensor weight an identity weight wrapper, so that ComfyUI's ops copy that weight
on every forward (the host copies whenever a wrapper is present):

- `skip_embeddings` ("pack_embfix"): the same, except for embedding tables. F.embedding never saves
  its weight for backward (the ids carry no gradient and the learned vectors are spliced in after
  the lookup), so an inference-tensor table is fine as it is; today the text encoder's whole
  vocabulary table (49408 x 768 floats for clip_l, 49408 x 1280 more for clip_g) is copied on every
  prompt encoding.
- `persistent_copies` ("pack_persist"): one ordinary (non-inference) copy of each such weight for
  the whole run, installed with the host's own object patches (`ModelPatcher.add_object_patch`, put
  back by `unpatch_model`), embeddings skipped: no per-forward copies at all, for one extra copy of
  the model's weights held during training. (A real change must also put the original tensors back
  when training ends, as `restore_modules` does for the wrapper lists; the bench does not reuse
  these model objects afterwards.)
"""
from __future__ import annotations

from typing import Any

import torch


def _inference_tensors(module: torch.nn.Module):
    for kind in ("weight", "bias"):  # layer_norm saves its bias for backward too
        tensor = getattr(module, kind, None)
        if isinstance(tensor, torch.Tensor) and tensor.is_inference():
            yield kind, tensor


def skip_embeddings(patcher: Any) -> Any:
    from ..prism_core.host.internals.training_guard import _copy_made_by_host
    clone = patcher.clone()
    for name, module in clone.model.named_modules():
        if not hasattr(module, "weight_function") or isinstance(module, torch.nn.Embedding):
            continue
        for kind, _ in _inference_tensors(module):
            clone.add_weight_wrapper(f"{name}.{kind}", _copy_made_by_host)
    return clone


def persistent_copies(patcher: Any) -> Any:
    clone = patcher.clone()
    with torch.inference_mode(False):
        for name, module in clone.model.named_modules():
            if isinstance(module, torch.nn.Embedding):
                continue
            for kind, tensor in _inference_tensors(module):
                clone.add_object_patch(f"{name}.{kind}", torch.nn.Parameter(tensor.clone(), requires_grad=False))
    return clone


PROPOSALS = {"pack_embfix": skip_embeddings, "pack_persist": persistent_copies}
