"""Forwards that let autograd through the host's in-place residual adds, for the duration of training.

The host's text encoders and FLUX blocks add residuals in place (``x += ...``: comfy/clip_model.py ~51,
comfy/text_encoders/t5.py ~68 and ~177, comfy/ldm/flux/layers.py ~200-260 and ~258/346). Autograd saved the
tensor being added to (a norm read it), so backward either fails ("modified by an inplace operation") or,
under gradient checkpointing, recomputes a block from an input that was overwritten and returns a wrong
gradient (62% off, measured on ComfyUI v0.3.64 by comparing with finite differences). Everything here computes the host's arithmetic unchanged:
- CLIP and T5 layers and Qwen3's blocks (Z-Image's encoder, comfy/text_encoders/llama.py, whose 0.33.0 form adds
  its MLP residual into its input with ``torch.add(..., out=...)``) get out-of-place forwards (the host's residual
  blocks, rewritten with ``+``);
- FLUX blocks keep the host's own forward (it changes between releases), but each works on copies of its
  residual-stream inputs, and each norm that reads the residual stream normalises a copy, so no tensor
  autograd saved (or checkpointing keeps for its recompute) is ever written to;
- v0.8.0 routes FLUX RoPE through comfy-kitchen's ``apply_rope``, a custom op with no autograd formula:
  `differentiable_rope` swaps in the host's own plain-torch formula (its math.py fallback) meanwhile; 0.33.0 has
  a switch of its own for this (``in_training``), which `host_training_mode` turns on.
Instance attributes are put back by training_guard.restore_modules, the RoPE function by its context manager.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterator

import torch

import comfy.clip_model
import comfy.model_management
import comfy.text_encoders.llama
import comfy.text_encoders.t5


# Each forward takes whatever the host passes after the hidden states and hands it on, unchanged, to the
# sub-module the host's forward hands it to, so a release that adds an argument (as newer ones do to other
# modules) still runs. contract.py checks by feature that each host forward reads exactly the sub-modules
# these rewrites use.
def _clip_layer_forward(layer: comfy.clip_model.CLIPLayer) -> Callable:
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = x + layer.self_attn(layer.layer_norm1(x), *args, **kwargs)
        return x + layer.mlp(layer.layer_norm2(x))
    return forward


def _t5_feed_forward(layer: comfy.text_encoders.t5.T5LayerFF) -> Callable:
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x + layer.DenseReluDense(layer.layer_norm(x), *args, **kwargs)
    return forward


def _t5_self_attention(layer: comfy.text_encoders.t5.T5LayerSelfAttention) -> Callable:
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        output, past_bias = layer.SelfAttention(layer.layer_norm(x), *args, **kwargs)
        return x + output, past_bias
    return forward


def _llama_block(layer: comfy.text_encoders.llama.TransformerBlock) -> Callable:
    # Qwen3's block (Z-Image's and FLUX.2 Klein's encoder). 0.3.75's returns the states; 0.33.0's writes the MLP residual into its
    # input (torch.add(residual, x, out=output)) and returns (states, key/value cache) as its attention does. The
    # host calls it with keywords named as its parameters, which its attention takes under the same names.
    names = list(inspect.signature(type(layer).forward).parameters)[2:]  # after self, x

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        named = {**dict(zip(names, args)), **kwargs}
        attention = layer.self_attn(hidden_states=layer.input_layernorm(x), **named)
        attention, rest = (attention[0], attention[1:]) if isinstance(attention, tuple) else (attention, None)
        x = x + attention
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x if rest is None else (x, *rest)
    return forward


def _text_layers() -> list[tuple[type, Callable]]:
    """(host layer class, out-of-place forward maker), read when used: a host without one of the classes still
    loads the pack (contract.require refuses the nodes that need it)."""
    classes = ((comfy.clip_model, "CLIPLayer", _clip_layer_forward), (comfy.text_encoders.t5, "T5LayerFF", _t5_feed_forward),
               (comfy.text_encoders.t5, "T5LayerSelfAttention", _t5_self_attention),
               (comfy.text_encoders.llama, "TransformerBlock", _llama_block))
    return [(getattr(module, name), make) for module, name, make in classes if hasattr(module, name)]


def text_layer_classes() -> tuple[type, ...]:
    """The host's text-encoder residual layer classes this module rewrites (CLIPLayer, T5's two, Qwen3's block)."""
    return tuple(layer_class for layer_class, _ in _text_layers())


def _close(expected: Any, got: Any) -> bool:
    """Equal up to rounding (the same arithmetic in another order, or a kernel that is not bit-reproducible): a
    changed formula (a scale, another norm) is far outside this."""
    pairs = zip(expected, got) if isinstance(expected, tuple) else [(expected, got)]
    for a, b in pairs:
        if isinstance(a, torch.Tensor):
            a, b = a.float(), b.float()
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-3 * max(1.0, float(a.abs().max()))):
                return False
    return True


def _refuse(layer: torch.nn.Module, problem: str) -> Exception:
    from . import contract
    symbol = f"{type(layer).__module__}.{type(layer).__name__}"
    internal = next(i for i in contract.INTERNALS if i.symbol == symbol)
    owner = contract._owner(symbol)
    if owner:
        problem += f" (here it comes from {owner}, another custom node)"
    return contract.HostContractError(contract.refusal("Optimize Prism Tokens", [(internal, problem)]))


def _checked_first_call(layer: torch.nn.Module, ours: Callable) -> Callable:
    """`ours`, which on its first call also runs the host's own forward on copies of the same arguments (no grad)
    and raises contract.HostContractError unless the two agree: a release whose layer computes something the
    rewrite does not (a scale, another norm) is refused before the first training step, on the user's model."""
    host_forward = type(layer).forward
    checked = False

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        nonlocal checked
        if not checked:
            checked = True
            try:
                with torch.no_grad():
                    expected = host_forward(layer, x.detach().clone(), *args, **kwargs)
                    got = ours(x.detach().clone(), *args, **kwargs)
            except Exception as error:  # noqa: BLE001 - the host's call form is not what the rewrite hands on
                raise _refuse(layer, f"calling it as the host does failed in the rewrite ({type(error).__name__}: {error})") from error
            if not _close(expected, got):
                raise _refuse(layer, "its forward computes something the pack's out-of-place rewrite does not "
                                     "(checked on this model)")
        return ours(x, *args, **kwargs)
    return forward


def out_of_place_text_layers(text_model: torch.nn.Module) -> None:
    """Give each CLIP and T5 residual layer an out-of-place forward (same arithmetic as the host's, checked against
    the host's own forward on the first call of the first layer of each kind). Call inside
    training_guard.restore_modules."""
    first = set()
    for module in text_model.modules():
        for layer_class, make_forward in _text_layers():
            if isinstance(module, layer_class):
                forward = make_forward(module)
                module.forward = forward if layer_class in first else _checked_first_call(module, forward)
                first.add(layer_class)


# The residual-stream tensors each FLUX block adds to in place, by argument name and position, and the norms
# that read them (comfy/ldm/flux/layers.py, the same names in v0.3.64 and v0.8.0).
FLUX_STREAMS = {"DoubleStreamBlock": ("img", "txt"), "SingleStreamBlock": ("x",)}
FLUX_RESIDUAL_NORMS = ("img_norm1", "img_norm2", "txt_norm1", "txt_norm2", "pre_norm")


def _on_copies(forward: Callable, streams: tuple[str, ...]) -> Callable:
    def on_copies(*args: Any, **kwargs: Any) -> Any:
        args = tuple(a.clone() if i < len(streams) and isinstance(a, torch.Tensor) else a for i, a in enumerate(args))
        kwargs = {k: v.clone() if k in streams and isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return forward(*args, **kwargs)
    return on_copies


def flux_blocks_on_copies(diffusion_model: torch.nn.Module) -> int:
    """Make the FLUX blocks' in-place residual adds safe for autograd (see the module docstring). Call
    inside training_guard.restore_modules, before gradient checkpointing wraps the blocks (so the checkpoint
    keeps the untouched inputs). Returns how many blocks were changed (0 for other models)."""
    changed = 0
    for module in diffusion_model.modules():
        streams = FLUX_STREAMS.get(type(module).__name__)
        if streams is None or not type(module).__module__.startswith("comfy.ldm.flux"):
            continue
        module.forward = _on_copies(module.forward, streams)
        for name in FLUX_RESIDUAL_NORMS:
            norm = getattr(module, name, None)
            if norm is not None:
                norm.forward = _on_copies(norm.forward, ("x", "input"))
        changed += 1
    return changed


def _apply_rope1(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    # The host's plain-torch RoPE (comfy/ldm/flux/math.py: v0.3.64's apply_rope1, v0.8.0's fallback), with the
    # in-place addcmul_ on its fresh product written out of place.
    x_ = x.to(dtype=freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    x_out = torch.addcmul(freqs_cis[..., 0] * x_[..., 0], freqs_cis[..., 1], x_[..., 1])
    return x_out.reshape(*x.shape).type_as(x)


def plain_apply_rope(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on queries and keys [B, H, L, D] with the frequency tensor [B?, 1, L, D/2, 2, 2], differentiable."""
    return _apply_rope1(xq, freqs_cis), _apply_rope1(xk, freqs_cis)


# What training replaced, for previews rendered meanwhile (`sampling_as_the_host`).
_switch_before: Any = False
_host_rope: Callable | None = None
_rope_modules: list[Any] = []


@contextlib.contextmanager
def host_training_mode() -> Iterator[None]:
    """While open, the host's own training switch is on where it has one (``comfy.model_management.in_training``,
    which its Train LoRA node sets; ComfyUI 0.33.0 reads it to run RoPE and Z-Image's q/k norm + RoPE in plain
    torch instead of comfy-kitchen's fused kernels, which have no backward); put back on exit, also after an error
    or Cancel. Hosts without the switch (0.3.75 and before) compute those in plain torch anyway."""
    if not hasattr(comfy.model_management, "in_training"):
        yield
        return
    global _switch_before
    saved = _switch_before = comfy.model_management.in_training
    comfy.model_management.in_training = True
    try:
        yield
    finally:
        comfy.model_management.in_training = saved


def _rope_holders(function: Callable) -> list[Any]:
    """The host's model modules that hold `function` under the name apply_rope: FLUX's math module, and those that
    imported it by name (v0.8.0's Lumina / Z-Image attention: ``from comfy.ldm.flux.math import apply_rope``)."""
    import sys
    return [module for name, module in list(sys.modules.items())
            if name.startswith("comfy.ldm.") and getattr(module, "apply_rope", None) is function]


def _set_rope(holders: list[Any], function: Callable) -> None:
    for module in holders:
        module.apply_rope = function


@contextlib.contextmanager
def differentiable_rope() -> Iterator[None]:
    """While open, FLUX-style attention (FLUX.1, FLUX.2, Z-Image's) applies RoPE with `plain_apply_rope` (autograd
    works) instead of the host's choice, which on v0.8.0 is comfy-kitchen's custom op without a backward, in every
    host module that holds it; put back on exit, also after an error or Cancel."""
    global _host_rope, _rope_modules
    import comfy.ldm.flux.math as flux_math
    saved = _host_rope = flux_math.apply_rope
    holders = _rope_modules = _rope_holders(saved)
    _set_rope(holders, plain_apply_rope)
    try:
        yield
    finally:
        _set_rope([m for m in holders if getattr(m, "apply_rope", None) is plain_apply_rope], saved)


@contextlib.contextmanager
def sampling_as_the_host() -> Iterator[None]:
    """While open (inside training, for a preview), the host's training switch and its RoPE are as they were before
    training, so a preview samples as a stock graph does (on a GPU, comfy-kitchen's fused kernels where the host
    uses them); training's are put back on exit."""
    switch = getattr(comfy.model_management, "in_training", None)
    swapped = [m for m in _rope_modules if getattr(m, "apply_rope", None) is plain_apply_rope] if _host_rope else []
    if switch is not None:
        comfy.model_management.in_training = _switch_before
    _set_rope(swapped, _host_rope)
    try:
        yield
    finally:
        if switch is not None:
            comfy.model_management.in_training = switch
        _set_rope(swapped, plain_apply_rope)
