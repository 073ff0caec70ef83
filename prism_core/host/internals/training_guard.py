"""Training through frozen host modules without changing them.

Three things stand between ComfyUI's models and a backward pass, all undone when training ends:
- weights created under the executor's inference_mode are inference tensors, which autograd
  cannot save. An identity weight wrapper on a *clone* of the ModelPatcher makes ``comfy.ops``
  copy each such weight per forward (`with_weight_copies`), so the base tensors stay untouched;
- the CLIP and T5 encoders and the FLUX blocks add residuals in place (``x += ...``), which breaks
  backward (and makes checkpointed recomputation wrong); v0.8.0's FLUX RoPE has no backward: the
  out_of_place module makes them autograd-safe for the duration with the host's arithmetic unchanged;
- optional gradient checkpointing patches the diffusion model's top-level blocks with the host's
  own helpers (`gradient_checkpointing`).
`restore_modules` snapshots every module attribute these touch and puts it back in ``finally``.

Newer hosts (upstream from about March 2026) load models on NVIDIA GPUs through a dynamic-VRAM
patcher (``ModelPatcherDynamic``) that streams weights on demand into reused buffers and ignores
``force_full_load``; autograd would save aliases of memory that is overwritten, so gradients would
be silently wrong. `static_patcher` / `static_clip` give such a MODEL/CLIP a plain, fully loadable
copy through the host's own ``clone(disable_dynamic=True)``, or refuse with what to do. (Read in
upstream ComfyUI at commit 0f1fa67a, 2026-08-15; unverified on a GPU: neither release the tests
run has a dynamic patcher, and on the CPU the host falls back to the plain one.)
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch

import comfy.model_management

from .out_of_place import (differentiable_rope, flux_blocks_on_copies, host_training_mode, out_of_place_text_layers,
                           text_layer_classes)


def uses_host_casts(module: torch.nn.Module) -> bool:
    """Whether `module` runs through the host's cast machinery (``comfy.ops``: ``cast_bias_weight`` applies its
    ``weight_function`` / ``bias_function`` lists), so weight wrappers reach it."""
    return hasattr(module, "weight_function")


def _copy_made_by_host(weight: torch.Tensor) -> torch.Tensor:
    # comfy.ops.cast_bias_weight has already copied the weight because a wrapper is present
    # (copy=has_function); the wrapper only needs to exist.
    return weight


def with_weight_copies(patcher: Any) -> Any:
    """A clone of `patcher` whose modules holding inference-tensor weights copy them per forward.

    Embedding tables are left alone: F.embedding saves only the ids for backward, never the table,
    and the learned vectors are spliced in after the lookup, so an inference-tensor table works as
    it is (copying the 49408-row vocabulary on every encoding cost ~5% of a Stage 1 step, bench/RESULTS.md).
    """
    clone = patcher.clone()
    # Weights another clone has patched in (e.g. a LoraLoader model sampled earlier) are ordinary tensors now,
    # but loading this clone puts the originals back from the shared backup, and those are inference tensors.
    patched_in = set(getattr(clone, "backup", {}))
    for name, module in clone.model.named_modules():
        if not uses_host_casts(module) or isinstance(module, torch.nn.Embedding):
            continue
        for kind in ("weight", "bias"):  # layer_norm saves its bias for backward too
            tensor = getattr(module, kind, None)
            key = f"{name}.{kind}"
            if isinstance(tensor, torch.Tensor) and (tensor.is_inference() or key in patched_in):
                clone.add_weight_wrapper(key, _copy_made_by_host)
    return clone


@contextlib.contextmanager
def inference_parameter_copies(*roots: torch.nn.Module) -> Iterator[int]:
    """While open, modules outside the host's cast machinery (no ``weight_function``: FLUX's RMSNorm ``scale``,
    T5's layer-norm ``weight``, CLIP's ``text_projection``) hold ordinary copies of their inference-tensor
    parameters, which autograd can save (the host's norms use them directly when the dtypes match). The copies
    are frozen and hold the same values; on exit each original Parameter object goes back where our copy still
    is (only those: the host swaps patched and original weights of other modules meanwhile). Yields the count."""
    replaced = []
    for root in roots:
        for module in root.modules():
            if uses_host_casts(module) or isinstance(module, torch.nn.Embedding):
                continue
            for name, parameter in list(module._parameters.items()):
                if isinstance(parameter, torch.Tensor) and parameter.is_inference():
                    copy = torch.nn.Parameter(parameter.clone(), requires_grad=False)
                    module._parameters[name] = copy
                    replaced.append((module, name, parameter, copy))
    try:
        yield len(replaced)
    finally:
        for module, name, original, copy in replaced:
            if module._parameters.get(name) is copy:
                module._parameters[name] = original


DYNAMIC_VRAM_MESSAGE = (
    "ConceptPrism: this {what} was loaded by ComfyUI's dynamic-VRAM loader (ModelPatcherDynamic), which streams "
    "weights on demand, so training gradients would not be reliable, and its loader offers no way to reload a fully "
    "loaded copy. Load it with a core loader (Load Checkpoint, Load Diffusion Model, Load CLIP), or restart ComfyUI "
    "with --disable-dynamic-vram.")


def is_dynamic(patcher: Any) -> bool:
    """True for a dynamic-VRAM patcher, decided by the host's own feature method (``is_dynamic()``, upstream
    comfy/model_patcher.py); hosts without it have none. Not by class: ModelPatcherDynamic constructs a plain
    ModelPatcher on a CPU load device."""
    method = getattr(patcher, "is_dynamic", None)
    return callable(method) and bool(method())


def _reloaded(patcher: Any, what: str) -> Any:
    """A non-dynamic patcher of the same weights: the host reloads the model from its loader's recorded
    arguments (``cached_patcher_init``); without them there is no safe path."""
    if getattr(patcher, "cached_patcher_init", None) is None:
        raise RuntimeError(DYNAMIC_VRAM_MESSAGE.format(what=what))
    clone = patcher.clone(disable_dynamic=True)
    if is_dynamic(clone):
        raise RuntimeError(DYNAMIC_VRAM_MESSAGE.format(what=what))
    return clone


def static_patcher(patcher: Any) -> Any:
    """`patcher` itself when it is an ordinary ModelPatcher, else a reloaded non-dynamic copy (a second
    copy of the weights for the duration of training). Raises RuntimeError when the host cannot make one."""
    return _reloaded(patcher, "MODEL") if is_dynamic(patcher) else patcher


def static_clip(clip: Any) -> Any:
    """`clip` itself when its patcher is ordinary, else a CLIP around a reloaded non-dynamic copy."""
    if not is_dynamic(clip.patcher):
        return clip
    _reloaded(clip.patcher, "CLIP")  # refuses before the host's CLIP.clone reloads anything
    copy = clip.clone(disable_dynamic=True)
    # The host's CLIP.clone(disable_dynamic=True) keeps the old cond_stage_model (upstream comfy/sd.py):
    # point it at the reloaded modules, or encoding would run the dynamic ones.
    copy.cond_stage_model = copy.patcher.model
    if is_dynamic(copy.patcher):
        raise RuntimeError(DYNAMIC_VRAM_MESSAGE.format(what="CLIP"))
    return copy


# comfy_cast_weights / prev_comfy_cast_weights: loading a clone with a compute dtype makes the host cast
# weights per forward on the shared modules (set_model_compute_dtype -> force_cast_weights).
_SNAPSHOT_ATTRIBUTES = ("weight_function", "bias_function", "forward", "org_forward", "comfy_cast_weights",
                        "prev_comfy_cast_weights")


@contextlib.contextmanager
def restore_modules(*roots: torch.nn.Module) -> Iterator[None]:
    """Put back every module's weight/bias function lists and instance-level forwards on exit."""
    saved = []
    for root in roots:
        for module in root.modules():
            state = {a: module.__dict__[a] for a in _SNAPSHOT_ATTRIBUTES if a in module.__dict__}
            saved.append((module, state, {a: list(v) for a, v in state.items() if isinstance(v, list)}))
    try:
        yield
    finally:
        for module, state, lists in saved:
            for attribute in _SNAPSHOT_ATTRIBUTES:
                if attribute in state:
                    value = state[attribute]
                    if attribute in lists:
                        value[:] = lists[attribute]
                    module.__dict__[attribute] = value
                else:
                    module.__dict__.pop(attribute, None)


def gradient_checkpointing(diffusion_model: torch.nn.Module, text_model: torch.nn.Module | None = None) -> None:
    """Checkpoint the model's top-level blocks, and each residual layer of the text encoder (whose learned rows
    Stage 1 backpropagates through: Qwen3-4B's 36 blocks for Z-Image, T5-XXL's 24), with the host trainer's
    helpers. Call inside `restore_modules`, after the out-of-place forwards are in (the checkpoint recomputes
    those)."""
    from comfy_extras.nodes_train import find_all_highest_child_module_with_forward, patch
    for module in find_all_highest_child_module_with_forward(diffusion_model):
        patch(module)
    if text_model is not None:
        for module in text_model.modules():
            if isinstance(module, text_layer_classes()):
                patch(module)


def load_as_executor(patchers: Sequence[Any]) -> None:
    """Load `patchers` fully (``comfy.model_management.load_models_gpu``) in inference mode, as the executor
    runs every node.

    Loading one clone makes the host unpatch whichever other clone of the same model is loaded (a preview's
    LoRA-patched clone, a LoraLoader model sampled earlier) and put the shared modules' original weights back
    (``ModelPatcher.unpatch_model`` -> ``comfy.utils.set_attr_param``). Since ComfyUI 0.33.0 (no later than
    2026-08) ``set_attr_param`` clones an inference tensor when it is called outside inference mode, so a load
    from training code (grad mode on) would leave the base model holding copies of its own weights, equal in
    value but not the tensors every other node shares. In inference mode the originals go back as they are,
    on every release; the training clones' own weights are copied per forward where they are inference
    tensors (`with_weight_copies`), so training is the same either way."""
    with torch.inference_mode():
        comfy.model_management.load_models_gpu(list(patchers), force_full_load=True)


@contextlib.contextmanager
def loaded_training_clones(model: Any, clip: Any | None = None, weight_wrappers: dict[str, Callable] | None = None,
                           checkpointing: bool = False, compute_dtype: torch.dtype = torch.float32
                           ) -> Iterator[tuple[Any, Any | None]]:
    """(model clone, CLIP clone or None), loaded for training; the incoming objects stay as they were.

    The model clone computes in `compute_dtype` whatever dtype its weights are stored in (the host's own
    ``set_model_compute_dtype``, as its Train LoRA node does: weights are cast per forward, so float16-
    stored checkpoints train in float32 by default, and weight wrappers such as LoRA adapters apply on the
    cast, compute-dtype weight). It copies inference-tensor weights per forward and carries
    `weight_wrappers` ({"diffusion_model.<module>.weight": wrapper}, e.g. trainable LoRA adapters)
    through the host's own ``add_weight_wrapper``. Every module attribute the clones touch is put back
    on exit. Call inside ``torch.inference_mode(False)``.
    """
    train_model = with_weight_copies(static_patcher(model))
    train_model.set_model_compute_dtype(compute_dtype)
    for key, wrapper in (weight_wrappers or {}).items():
        train_model.add_weight_wrapper(key, wrapper)
    train_clip = None
    # The clones' modules: the incoming ones, shared, unless a dynamic patcher had to be reloaded.
    roots = [train_model.model]
    if clip is not None:
        source = static_clip(clip)
        train_clip = source.clone()
        train_clip.patcher = with_weight_copies(source.patcher)
        roots.append(train_clip.cond_stage_model)
    with restore_modules(*roots), differentiable_rope(), host_training_mode(), inference_parameter_copies(*roots):
        if train_clip is not None:
            out_of_place_text_layers(train_clip.cond_stage_model)
        flux_blocks_on_copies(train_model.model.diffusion_model)  # before checkpointing wraps the blocks
        if checkpointing:
            gradient_checkpointing(train_model.model.diffusion_model,
                                   train_clip.cond_stage_model if train_clip is not None else None)
        patchers = [train_model] + ([train_clip.patcher] if train_clip is not None else [])
        load_as_executor(patchers)
        yield train_model, train_clip
