"""The host contract: one guard per ComfyUI internal the pack relies on (prism_core/host/internals/contract.py).

Each guard exercises the internal the way the pack uses it, with the host's own objects (tiny real models) and
an oracle from the host's own code where there is one, and fails with a message naming the symbol: a guard
that fails says which entry of contract.INTERNALS (and the README's table) to look at. Two guards are shown to
fail on a host whose symbol changed (monkeypatched), and the run-time refusal is shown through the executor.
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any, Iterator

import pytest
import safetensors.torch
import torch

from host_setup import require_host

require_host()

import comfy.clip_model  # noqa: E402
import comfy.ldm.flux.math  # noqa: E402
import comfy.ldm.modules.attention  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.text_encoders.t5  # noqa: E402
import comfy.utils  # noqa: E402
import execution  # noqa: E402
import nodes as host_nodes  # noqa: E402

from graph_helpers import CAPTURED, new_executor, register_test_nodes, stage1_graph, write_images  # noqa: E402
from host_setup import fake_server  # noqa: E402
from host_checks import RES, oracle_cond  # noqa: E402
from comfyui_conceptprism.prism_core.host import text  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals import (contract, embedding_lookup, host_helpers,  # noqa: E402
                                                            lora_adapters, model_facts, out_of_place,
                                                            text_encoders, training_guard)
from comfyui_conceptprism.prism_core.host.internals.embedding_lookup import SlotRow  # noqa: E402
from comfyui_conceptprism.prism_core.formats.lora_file import layer_tensors  # noqa: E402

INTERNALS = {internal.symbol: internal for internal in contract.INTERNALS}


@contextlib.contextmanager
def guarding(symbol: str) -> Iterator[None]:
    """Run a guard: the symbol's feature probe must find it as the pack expects, and any failure of the block
    (an assertion, or an error from inside the host) is reported as that internal having changed."""
    assert symbol in INTERNALS, f"{symbol} is not in contract.INTERNALS"
    try:
        problem = INTERNALS[symbol].probe()
        assert problem is None, problem
        yield
    except Exception as error:  # noqa: BLE001 - any failure here means the internal is not as the pack uses it
        raise AssertionError(f"host internal {symbol} changed (see contract.INTERNALS and the README's table): "
                             f"{type(error).__name__}: {error}") from error


def _first(root: torch.nn.Module, cls: type) -> Any:
    return next(m for m in root.modules() if isinstance(m, cls))


class _Recorder(torch.nn.Module):
    """Wraps a sub-module and records the extra arguments it is called with."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args[1:], dict(kwargs)))
        kwargs.pop("extra_from_a_newer_host", None)
        return self.inner(*args, **kwargs)


@contextlib.contextmanager
def _swapped(module: torch.nn.Module, name: str, replacement: torch.nn.Module) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


# --- text encoders ------------------------------------------------------------------------------------------

def check_load_embed(models: Any, embedding_root: Any) -> None:
    with guarding("comfy.sd1_clip.load_embed"):
        host = comfy.sd1_clip.load_embed
        safetensors.torch.save_file({"clip_l": torch.ones(2, 768)}, str(embedding_root / "prism_target.safetensors"))
        try:
            prompt = "a photo of embedding:prism_target, on the beach"
            ours = text.tokenize_with_slots(models.clip, prompt, {"prism_target": {"clip_l": 2}})
            file_tokens = models.clip.tokenize(prompt)
        finally:
            (embedding_root / "prism_target.safetensors").unlink()
        slots = [i for i, (t, *_) in enumerate(ours["l"][0]) if isinstance(t, SlotRow)]
        files = [i for i, (t, *_) in enumerate(file_tokens["l"][0]) if isinstance(t, torch.Tensor)]
        assert slots == files and len(slots) == 2, (slots, files)
        assert comfy.sd1_clip.load_embed is host and embedding_lookup.host_load_embed() is host


def test_load_embed(tiny, embedding_root):
    check_load_embed(tiny("sd15"), embedding_root)


def test_sd_tokenizer(tiny):
    with guarding("comfy.sd1_clip.SDTokenizer"):
        clip = tiny("sdxl").clip
        assert sorted(text_encoders.encoder_keys(clip)) == ["clip_g", "clip_l"]
        tokenizer = text_encoders.tokenizer_for(clip, "clip_l")
        chunk, real = text_encoders.literal_chunk(tokenizer, "a (red) embedding:cube")
        raw = tokenizer.tokenizer("a (red) embedding:cube")["input_ids"]
        assert [t for t, _ in chunk][real.start:real.stop] == raw[1:-1]  # the BPE ids, start and end stripped
        plain = text_encoders.tokenize_with_weights(clip, "a red cube")
        assert {k: [[t for t, *_ in c] for c in v] for k, v in plain.items()} == \
            {k: [[t for t, *_ in c] for c in v] for k, v in clip.tokenize("a red cube").items()}


def test_sd_clip_model(tiny):
    with guarding("comfy.sd1_clip.SDClipModel"):
        models = tiny("sdxl")
        tokens = models.clip.tokenize("a photo of a red ball")
        host_cond, host_pooled = models.clip.encode_from_tokens(tokens, return_pooled=True)
        models.clip.load_model()
        cond, pooled = text_encoders.encode_token_weights(models.clip, tokens)
        torch.testing.assert_close(cond, host_cond, rtol=0, atol=0)
        torch.testing.assert_close(pooled, host_pooled, rtol=0, atol=0)
        projected = text_encoders.projected_pooled(models.clip, tokens)
        assert projected is not None and projected.shape == host_pooled.shape
        # Learned vectors are spliced in as tensors in the token lists (process_tokens): a word's own input-embedding
        # rows spliced where the word stands encode exactly as the word does.
        word = {k: text_encoders.tokenizer_for(models.clip, k).tokenizer("red")["input_ids"][1] for k in ("clip_l", "clip_g")}
        spliced = {k: [[(text_encoders.input_embedding_table(models.clip, "clip_" + k).detach()[t].clone()
                         if t == word["clip_" + k] else t, *rest) for t, *rest in chunk] for chunk in chunks]
                   for k, chunks in tokens.items()}
        assert sum(isinstance(t, torch.Tensor) for chunks in spliced.values() for c in chunks for t, *_ in c) == 2
        cond_spliced, _ = text_encoders.encode_token_weights(models.clip, spliced)
        torch.testing.assert_close(cond_spliced, host_cond, rtol=1e-5, atol=1e-5)


def test_clip_object(tiny):
    with guarding("comfy.sd.CLIP"):
        clip = host_nodes.CLIPSetLastLayer().set_last_layer(tiny("sd15").clip, -2)[0]
        assert text_encoders.clip_layer_index(clip) == -2 and text.clip_layer(clip) == "-2"
        assert isinstance(clip.tokenizer_options, dict) and isinstance(clip.cond_stage_model, torch.nn.Module)
        host = clip.encode_from_tokens(clip.tokenize("a red ball"))
        clip.load_model()
        ours, _ = text_encoders.encode_token_weights(clip, clip.tokenize("a red ball"))
        torch.testing.assert_close(ours, host, rtol=0, atol=0)  # layer -2, as the host encodes it


def _out_of_place_equals_host(layer: torch.nn.Module, width: int, call: Any, attention: str) -> None:
    """The pack's out-of-place forward of `layer` computes the host's forward exactly and passes an argument
    the host adds on to the sub-module the host hands its arguments to."""
    x = torch.randn(1, 5, width, generator=torch.Generator().manual_seed(0))
    host_forward = type(layer).forward
    with torch.no_grad():
        host = call(lambda *a, **k: host_forward(layer, *a, **k), x.clone())
        out_of_place.out_of_place_text_layers(torch.nn.ModuleList([layer]))
        try:
            ours = call(layer.forward, x.clone())
            recorder = _Recorder(getattr(layer, attention))
            with _swapped(layer, attention, recorder):
                call(layer.forward, x.clone(), extra_from_a_newer_host=1)
        finally:
            del layer.forward
    for a, b in zip(host if isinstance(host, tuple) else (host,), ours if isinstance(ours, tuple) else (ours,)):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert recorder.calls and recorder.calls[-1][1].get("extra_from_a_newer_host") == 1, recorder.calls


def check_clip_layer(models: Any) -> None:
    with guarding("comfy.clip_model.CLIPLayer"):
        layer = _first(models.clip.cond_stage_model, comfy.clip_model.CLIPLayer)
        attention = comfy.ldm.modules.attention.optimized_attention_for_device(torch.device("cpu"), mask=False, small_input=True)
        _out_of_place_equals_host(layer, 768, lambda forward, x, **extra: forward(x, None, attention, **extra), "self_attn")


def test_clip_layer(tiny):
    check_clip_layer(tiny("sd15"))


def test_t5_layers(tiny):
    clip = tiny("flux").clip
    optimized = comfy.ldm.modules.attention.optimized_attention_for_device(torch.device("cpu"), mask=False, small_input=True)

    def call(forward: Any, x: torch.Tensor, **extra: Any) -> Any:
        if isinstance(layer, comfy.text_encoders.t5.T5LayerSelfAttention):
            return forward(x, mask=None, past_bias=None, optimized_attention=optimized, **extra)
        return forward(x, **extra)
    for symbol, cls, attention in (("comfy.text_encoders.t5.T5LayerFF", comfy.text_encoders.t5.T5LayerFF, "DenseReluDense"),
                                   ("comfy.text_encoders.t5.T5LayerSelfAttention",
                                    comfy.text_encoders.t5.T5LayerSelfAttention, "SelfAttention")):
        with guarding(symbol):
            layer = _first(clip.cond_stage_model, cls)
            width = layer.layer_norm.weight.shape[0]
            _out_of_place_equals_host(layer, width, call, attention)


# --- Z-Image ------------------------------------------------------------------------------------------------

def test_qwen3_block(zimage):
    """The out-of-place rewrite of Qwen3's block computes the host's block exactly on the inputs the host's own
    encoder gives it (its mask, RoPE and attention function), leaves the states it was given unwritten, returns what
    the host's returns (0.33.0: states and key/value cache) and hands an argument a newer host adds to attention."""
    import comfy.text_encoders.llama as llama
    with guarding("comfy.text_encoders.llama.TransformerBlock"):
        clip = zimage.clip
        block = _first(clip.cond_stage_model, llama.TransformerBlock)
        seen: list = []
        hook = block.register_forward_pre_hook(lambda m, a, k: seen.append(_copied(a, k)), with_kwargs=True)
        try:
            with torch.no_grad():
                clip.encode_from_tokens(clip.tokenize("a red ball on the grass"))
        finally:
            hook.remove()
        args, kwargs = seen[0]
        x = kwargs.pop("x") if "x" in kwargs else args.pop(0)
        host_forward = type(block).forward
        with torch.no_grad():
            host = host_forward(block, x.clone(), *args, **kwargs)
            out_of_place.out_of_place_text_layers(torch.nn.ModuleList([block]))
            try:
                given = x.clone()
                ours = block.forward(given, *args, **kwargs)
                recorder = _Recorder(block.self_attn)
                with _swapped(block, "self_attn", recorder):
                    block.forward(x.clone(), *args, **kwargs, extra_from_a_newer_host=1)
            finally:
                del block.forward
        assert type(ours) is type(host)
        for a, b in zip(host if isinstance(host, tuple) else (host,), ours if isinstance(ours, tuple) else (ours,)):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(b, a, rtol=0, atol=0)
        assert torch.equal(given, x)
        assert recorder.calls and recorder.calls[-1][1].get("extra_from_a_newer_host") == 1, recorder.calls


def test_training_switch(zimage):
    """While training, the host's switch is on where it has one and Z-Image's attention backpropagates; on a host
    with the switch, the same backward with it off fails (0.33.0 runs q/k norm + RoPE in comfy-kitchen's fused
    kernel, which has no backward); it is put back after."""
    with guarding("comfy.model_management.in_training"):
        models = zimage
        before = getattr(comfy.model_management, "in_training", None)
        cond = models.clip.encode_from_tokens(models.clip.tokenize("a red ball")).clone()
        z = torch.randn(1, 16, RES // 8, RES // 8, generator=torch.Generator().manual_seed(1))

        def gradient(switch_off: bool) -> torch.Tensor:
            with torch.inference_mode(False), training_guard.loaded_training_clones(models.model) as (model, _):
                assert getattr(comfy.model_management, "in_training", None) is (None if before is None else True)
                if switch_off:
                    comfy.model_management.in_training = False
                x = z.clone().requires_grad_(True)
                out = model.model.apply_model(x, torch.tensor([0.5]), c_crossattn=cond, num_tokens=cond.shape[1])
                # the gradient to x alone: a host that leaves its parameters trainable (v0.8.0) gets no .grad on them
                return torch.autograd.grad(out.float().square().mean(), x)[0]
        grad = gradient(False)
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert getattr(comfy.model_management, "in_training", None) == before
        if before is not None:
            with pytest.raises(Exception):  # noqa: B017 - whatever the fused kernel raises without a backward
                gradient(True)
            assert comfy.model_management.in_training == before


# --- FLUX ---------------------------------------------------------------------------------------------------

def _copied(args: tuple, kwargs: dict) -> tuple[list, dict]:
    return ([a.clone() if isinstance(a, torch.Tensor) else a for a in args],
            {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})


def _flux_block_inputs(models: Any) -> dict[str, tuple]:
    """{block class name: (block, args, kwargs)} of the first double and single block in one host forward."""
    seen: dict[str, tuple] = {}

    def capture(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.setdefault(type(module).__name__, (module, *_copied(args, kwargs)))
    hooks = [m.register_forward_pre_hook(capture, with_kwargs=True)
             for m in models.model.model.diffusion_model.modules() if type(m).__name__ in out_of_place.FLUX_STREAMS]
    try:
        cond, _ = oracle_cond(models, "a red ball")
        pooled = models.clip.encode_from_tokens(models.clip.tokenize("a red ball"), return_pooled=True)[1]
        z = torch.randn(1, 16, RES // 8, RES // 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            models.model.model.apply_model(z, torch.tensor([0.5]), c_crossattn=cond, y=pooled, guidance=torch.tensor([3.5]))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_flux_blocks(tiny):
    with guarding("comfy.ldm.flux.layers.DoubleStreamBlock / SingleStreamBlock"):
        models = tiny("flux")
        captured = _flux_block_inputs(models)
        assert set(captured) == set(out_of_place.FLUX_STREAMS), captured.keys()
        diffusion_model = models.model.model.diffusion_model
        for name, (block, args, kwargs) in captured.items():
            with torch.no_grad():
                host = block(*_copied(args, kwargs)[0], **_copied(args, kwargs)[1])
                with training_guard.restore_modules(diffusion_model):
                    assert out_of_place.flux_blocks_on_copies(diffusion_model) > 0
                    given_args, given_kwargs = _copied(args, kwargs)
                    ours = block(*given_args, **given_kwargs)
            for a, b in zip(host if isinstance(host, tuple) else (host,), ours if isinstance(ours, tuple) else (ours,)):
                torch.testing.assert_close(b, a, rtol=0, atol=0)
            # the residual streams the block was given are not written to
            for given, before in zip([*given_args, *given_kwargs.values()], [*args, *kwargs.values()]):
                if isinstance(given, torch.Tensor):
                    assert torch.equal(given, before), name
            assert "forward" not in block.__dict__  # restored


def test_flux_rope(tiny):
    with guarding("comfy.ldm.flux.math.apply_rope"):
        g = torch.Generator().manual_seed(0)
        q, k = torch.randn(1, 2, 6, 8, generator=g, requires_grad=True), torch.randn(1, 2, 6, 8, generator=g)
        pe = comfy.ldm.flux.math.rope(torch.arange(6, dtype=torch.float32).view(1, 6), 8, 10000).unsqueeze(1)
        host = comfy.ldm.flux.math.apply_rope
        with torch.no_grad():
            expected = host(q, k, pe)
        with out_of_place.differentiable_rope():
            assert comfy.ldm.flux.math.apply_rope is out_of_place.plain_apply_rope
            v = torch.randn(1, 2, 6, 8, generator=g)
            out = comfy.ldm.flux.math.attention(q, k, v, pe)  # the host's attention, through the stand-in
            out.sum().backward()
            ours = comfy.ldm.flux.math.apply_rope(q.detach(), k, pe)
        assert comfy.ldm.flux.math.apply_rope is host and q.grad is not None and torch.isfinite(q.grad).all()
        for a, b in zip(expected, ours):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_flux_identity(tiny):
    with guarding("comfy.supported_models.Flux.unet_config"):
        import tiny_models
        assert model_facts.is_flux1(tiny("flux").model) and model_facts.is_flux1(tiny("flux-schnell").model)
        assert not model_facts.is_flux1(tiny("sd15").model)
        if hasattr(comfy.supported_models, "Flux2"):  # releases with FLUX.2 (v0.8.0 on): a Flux subclass, not FLUX.1
            flux2 = tiny_models.flux2_shaped()
            assert not model_facts.is_flux1(comfy.model_patcher.ModelPatcher(flux2, torch.device("cpu"), torch.device("cpu")))


def test_model_inputs(tiny):
    with guarding("comfy.conds.CONDRegular.cond"):
        from comfyui_conceptprism.prism_core.host.diffusion import model_inputs
        models = tiny("sdxl")
        cond, extra = oracle_cond(models, "a red ball")
        pooled = models.clip.encode_from_tokens(models.clip.tokenize("a red ball"), return_pooled=True)[1]
        inputs = model_inputs(models.model, cond, pooled, RES, torch.device("cpu"))
        assert set(inputs) == {"c_crossattn", "y"} and torch.equal(inputs["c_crossattn"], cond)
        torch.testing.assert_close(inputs["y"], extra["y"], rtol=0, atol=0)  # the host's own encode_adm


def test_flux_guidance(tiny):
    with guarding("comfy.ldm.flux.model.FluxParams.guidance_embed"):
        assert model_facts.reads_guidance(tiny("flux").model) is True
        assert model_facts.reads_guidance(tiny("flux-schnell").model) is False
        assert model_facts.reads_guidance(tiny("sd15").model) is False


# --- training clones ----------------------------------------------------------------------------------------

def test_checkpointing_helpers(tiny):
    with guarding("comfy_extras.nodes_train.find_all_highest_child_module_with_forward / patch"):
        models = tiny("sd15")
        cond, extra = oracle_cond(models, "a red ball")
        z = torch.randn(1, 4, RES // 8, RES // 8, generator=torch.Generator().manual_seed(3))
        results = []
        for checkpointing in (False, True):
            with torch.inference_mode(False), training_guard.loaded_training_clones(
                    models.model, checkpointing=checkpointing) as (clone, _):
                patched = [m for m in clone.model.diffusion_model.modules() if "forward" in m.__dict__]
                assert bool(patched) is checkpointing
                leaf = cond.detach().clone().requires_grad_(True)
                out = clone.model.apply_model(z, torch.tensor([2.0]), c_crossattn=leaf, **extra)
                grad, = torch.autograd.grad(out.pow(2).sum(), [leaf])
                results.append((out.detach(), grad))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
        torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-6, atol=1e-7)
        assert not [m for m in models.model.model.diffusion_model.modules() if "forward" in m.__dict__]


def test_weight_wrappers(tiny):
    with guarding("comfy.model_patcher.ModelPatcher.add_weight_wrapper"):
        models = tiny("sd15")
        layer = next(n for n, m in models.model.model.named_modules() if n.endswith("attn2.to_k"))
        calls = []

        def doubled(w: torch.Tensor) -> torch.Tensor:
            calls.append(w.dtype)
            return w * 2
        module = models.model.model.get_submodule(layer)
        base = module.weight
        with torch.inference_mode(False), training_guard.loaded_training_clones(
                models.model, weight_wrappers={f"{layer}.weight": doubled}, compute_dtype=torch.float32) as (clone, _):
            x = torch.randn(1, 3, module.in_features, requires_grad=True)
            out = module(x)
            out.sum().backward()
            expected = torch.nn.functional.linear(x.detach(), base.detach().float() * 2,
                                                  None if module.bias is None else module.bias.detach().float())
            torch.testing.assert_close(out.detach(), expected, rtol=1e-6, atol=1e-6)
            assert calls == [torch.float32] and x.grad is not None
        assert module.weight is base and base.is_inference()  # the shared module holds its own tensor again


def test_dynamic_clone(tiny):
    with guarding("comfy.model_patcher.ModelPatcher.clone(disable_dynamic=True)"):
        models = tiny("sd15")
        assert training_guard.is_dynamic(models.model) is False  # the CPU host loads with the plain patcher
        assert training_guard.static_patcher(models.model) is models.model
        assert training_guard.static_clip(models.clip) is models.clip
        if hasattr(comfy.model_patcher.ModelPatcher, "is_dynamic"):  # a host with dynamic VRAM: the reload path
            clone = models.model.clone(disable_dynamic=True)
            assert not training_guard.is_dynamic(clone) and clone.model is models.model.model


def test_dtype_choice(tiny):
    with guarding("comfy.model_management.should_use_fp16 / should_use_bf16"):
        flux, sd = tiny("flux").model, tiny("sd15").model
        assert model_facts.supported_dtypes(sd) == tuple(sd.model.model_config.supported_inference_dtypes)
        assert model_facts.supported_dtypes(flux)[0] == torch.bfloat16  # FLUX.1's config lists bfloat16 first
        cpu = torch.device("cpu")
        assert model_facts.device_computes(cpu, torch.float32) is True
        for dtype, host in ((torch.float16, comfy.model_management.should_use_fp16),
                            (torch.bfloat16, comfy.model_management.should_use_bf16)):
            assert model_facts.device_computes(cpu, dtype) is bool(host(cpu, prioritize_performance=False))
        calls = []
        original = comfy.model_management.should_use_bf16

        def spy(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
            calls.append((device, prioritize_performance))
            return True
        comfy.model_management.should_use_bf16 = spy
        try:
            assert model_facts.device_computes(torch.device("cuda"), torch.bfloat16) is True
        finally:
            comfy.model_management.should_use_bf16 = original
        assert calls == [(torch.device("cuda"), False)]  # asked whether the card computes it, not what is fastest


# --- Stage 2 adapters ---------------------------------------------------------------------------------------

def test_move_protocol(tiny):
    with guarding("comfy.model_patcher.move_weight_functions"):
        adapter = lora_adapters.new_adapter((8, 8), 2, 2.0)
        moved = []

        class Moving(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.adapter = adapter

            def __call__(self, w: torch.Tensor) -> torch.Tensor:
                return self.adapter(w)

            def move_to(self, device: torch.device) -> int:
                moved.append(device)
                return lora_adapters.move_trainable(self, device)
        module = torch.nn.Linear(8, 8)
        module.weight_function, module.bias_function = [Moving()], []
        with torch.inference_mode():  # as the executor moves models
            memory = comfy.model_patcher.move_weight_functions(module, torch.device("cpu"))
        assert moved == [torch.device("cpu")] and memory == sum(p.numel() * 4 for p in adapter.parameters())
        assert not any(p.is_inference() for p in adapter.parameters())  # still trainable after the host moved it


def test_lora_adapters(tiny):
    with guarding("comfy.weight_adapter.LoRAAdapter"):
        torch.manual_seed(0)
        adapter = lora_adapters.new_adapter((12, 10), 4, 4.0)
        w = torch.randn(12, 10)
        torch.testing.assert_close(adapter(w), w, rtol=0, atol=0)  # update 0 at the start
        with torch.no_grad():
            adapter.lora_down.weight.normal_()
        tensors = layer_tensors("lora_unet_x", adapter.lora_up.weight.detach(), adapter.lora_down.weight.detach(), 4.0)
        used: set[str] = set()
        loaded = lora_adapters.adapter_from_file("lora_unet_x", tensors, 4.0, used)
        assert {"lora_unet_x.lora_up.weight", "lora_unet_x.lora_down.weight"} <= used
        assert loaded.lora_up.weight.requires_grad and loaded.lora_up.weight.dtype == torch.float32
        torch.testing.assert_close(loaded(w), adapter(w), rtol=0, atol=0)
        # The trainable matrices are the adapter's up and down weights, and nothing else it holds trains.
        parameters = lora_adapters.trainable_parameters({"x": loaded})
        assert [p.data_ptr() for p in parameters] == [loaded.lora_up.weight.data_ptr(), loaded.lora_down.weight.data_ptr()]
        assert {id(p) for p in loaded.parameters() if p.requires_grad} == {id(p) for p in parameters}


def test_lora_keys(tiny):
    with guarding("comfy.lora.model_lora_keys_unet / comfy.utils.flux_to_diffusers"):
        keys = lora_adapters.lora_key_map(tiny("sd15").model)
        attention = [k for k, v in keys.items() if v.endswith("attn2.to_k.weight") and k.startswith("lora_unet_")]
        assert attention and all(keys[k] in dict(tiny("sd15").model.model.named_parameters()) for k in attention)
        flux = tiny("flux").model
        diffusers = lora_adapters.flux_diffusers_map(flux)
        to_q = diffusers["transformer_blocks.0.attn.to_q.weight"]
        weight_key, (dim, offset, size) = to_q
        assert weight_key == "diffusion_model.double_blocks.0.img_attn.qkv.weight" and (dim, offset) == (0, 0)
        assert size * 3 == dict(flux.model.named_parameters())[weight_key].shape[0]


# --- other nodes' helpers -----------------------------------------------------------------------------------

def test_image_encoders():
    with guarding("comfy.clip_vision.IMAGE_ENCODERS"):
        import tiny_models
        from comfyui_conceptprism.prism_core.host.internals.host_helpers import vision_kind
        assert host_helpers.dinov2_class() is not None
        assert vision_kind(tiny_models.clip_vision("dinov2")) == "dinov2"
        assert vision_kind(tiny_models.clip_vision("clip")) == "clip"
    with guarding("comfy.clip_model.CLIPVisionModelProjection"):
        assert vision_kind(tiny_models.clip_vision("clip")) == "clip"


def test_validate_node_input():
    with guarding("comfy_execution.validation.validate_node_input"):
        assert host_helpers.link_type_matches("IMAGE", "IMAGE")
        assert not host_helpers.link_type_matches("MASK", "IMAGE")
        assert host_helpers.link_type_matches("IMAGE", "IMAGE,MASK")  # the host's comma lists


# --- the contract itself ------------------------------------------------------------------------------------

def test_every_internal_has_its_guard_and_passes_its_probe():
    defined = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    missing = sorted({i.guard for i in contract.INTERNALS} - defined)
    assert not missing, f"contract.INTERNALS names guards this file lacks: {missing}"
    assert contract.problems(*contract.USES) == [], contract.refusal("test", contract.problems(*contract.USES))
    assert contract.comfyui_version() != "unknown"


def test_the_load_embed_guard_fails_when_the_hosts_lookup_changes(tiny, embedding_root, monkeypatch):
    """A host whose load_embed takes another call (here: no size and key) fails the guard, naming the symbol."""
    def changed(embedding_name, embedding_directory):
        return None
    monkeypatch.setattr(comfy.sd1_clip, "load_embed", changed)
    with pytest.raises(AssertionError, match=r"comfy\.sd1_clip\.load_embed changed"):
        check_load_embed(tiny("sd15"), embedding_root)


def test_the_clip_layer_guard_fails_when_the_hosts_forward_changes(tiny, monkeypatch):
    """A host whose CLIPLayer.forward computes more (here: a layer scale on the attention branch) fails the guard:
    the pack's out-of-place rewrite would silently compute the old layer."""
    def forward(self, x, mask=None, optimized_attention=None):
        x += self.self_attn(self.layer_norm1(x), mask, optimized_attention) * getattr(self, "layer_scale", 0.5)
        x += self.mlp(self.layer_norm2(x))
        return x
    monkeypatch.setattr(comfy.clip_model.CLIPLayer, "forward", forward)
    with pytest.raises(AssertionError, match=r"comfy\.clip_model\.CLIPLayer changed"):
        check_clip_layer(tiny("sd15"))


def _changed_load_embed(monkeypatch) -> None:
    def changed(embedding_name, embedding_directory):
        return None
    changed.__module__ = "comfy.sd1_clip"  # ComfyUI's own, changed (not another custom node's replacement)
    monkeypatch.setattr(comfy.sd1_clip, "load_embed", changed)


def _check_refusal(message: str) -> None:
    assert f"ComfyUI {contract.comfyui_version()}" in message and "comfy.sd1_clip.load_embed" in message
    assert contract.advice(contract.comfyui_version(), False) in message and "update conceptprism" in message.lower()
    assert "Traceback" not in message


def test_a_changed_internal_is_refused_when_the_graph_is_validated(tiny, tmp_path, monkeypatch):
    """Queued on a host whose load_embed changed: the host's own validation refuses Optimize Prism Tokens with the
    contract's message (version, symbol, what to do), before any node runs (no model is loaded)."""
    register_test_nodes(tiny)
    graph = stage1_graph(write_images(tmp_path / "concept", 3), steps=2)
    _changed_load_embed(monkeypatch)
    valid = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), graph, None))
    assert not valid[0]
    node_errors = valid[3]["3"]["errors"]
    assert node_errors and node_errors[0]["type"] == "custom_validation_failed", node_errors
    _check_refusal(node_errors[0]["details"])  # "gradient_checkpointing - <the refusal>": the host names an input


def test_a_changed_internal_is_refused_through_the_executor_before_any_work(tiny, tmp_path, monkeypatch):
    """The node's own run-time check, through the executor (the graph was validated before the host changed):
    the executor reports the refusal, no training step ran, nothing downstream ran."""
    register_test_nodes(tiny)
    graph = stage1_graph(write_images(tmp_path / "concept", 3), steps=2)
    valid = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), graph, None))
    assert valid[0], valid
    _changed_load_embed(monkeypatch)
    progress = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: progress.append(node_id))
    CAPTURED.clear()
    server = fake_server()
    executor = new_executor(server)
    try:
        executor.execute(graph, str(uuid.uuid4()), {"client_id": server.client_id}, valid[2])
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert not executor.success
    errors = [data for event, data in server.messages if event == "execution_error"]
    assert errors and errors[0]["node_type"] == "ConceptPrismOptimizePrismTokens", server.messages
    _check_refusal(errors[0]["exception_message"])
    assert errors[0]["exception_type"].endswith("HostContractError")
    assert "3" not in progress and not CAPTURED  # no step of Stage 1, no sampling after it


def test_the_advice_fits_the_release():
    newest, oldest = contract.CHECKED_RELEASES[-1], contract.CHECKED_RELEASES[0]
    newer = contract.advice("99.0.0", False)
    assert "Update ConceptPrism" in newer and f"run ComfyUI {newest}" in newer
    assert "Update ComfyUI" in contract.advice("0.3.1", False) and oldest in contract.advice("0.3.1", False)
    assert "differs from the released" in contract.advice(newest, False)
    assert "Another custom node" in contract.advice(newest, True)


def test_a_symbol_another_custom_node_replaced_is_named(monkeypatch):
    def replaced(embedding_name, embedding_directory):  # the call form of some other pack's wrapper
        return None
    replaced.__module__ = "custom_nodes.some_other_pack.hooks"
    monkeypatch.setattr(comfy.sd1_clip, "load_embed", replaced)
    with pytest.raises(contract.HostContractError) as refused:
        contract.require("Prism Conditioning", contract.TOKENS)
    assert "custom_nodes.some_other_pack.hooks, another custom node" in str(refused.value)
    assert "Another custom node replaced it" in str(refused.value)


def _deletable(internal: contract.Internal) -> tuple[Any, str] | None:
    """(owner, attribute name) of the internal's first symbol when it is an attribute a host could lack; None for
    an instance attribute or a dataclass field (CONDRegular.cond, FluxParams.guidance_embed), which their probes
    read from the class's code instead."""
    parent_name, attribute = internal.symbol.split(" / ")[0].split("(")[0].rsplit(".", 1)
    parent = contract._resolve(parent_name)
    if not hasattr(parent, attribute) or attribute in getattr(parent, "__dataclass_fields__", {}):
        return None
    return parent, attribute


@pytest.mark.parametrize("internal", [i for i in contract.INTERNALS if _deletable(i)], ids=lambda i: i.symbol)
def test_a_host_without_the_internal_still_loads_the_pack_and_refuses_by_name(internal, monkeypatch):
    """Each internal deleted from the host: the pack's nodes still import (ComfyUI lists them), and the uses that
    need it are refused naming it, instead of an import failure that hides every node."""
    import importlib
    import sys
    parent, attribute = _deletable(internal)
    monkeypatch.delattr(parent, attribute)
    pack = {name: module for name, module in sys.modules.items() if name.startswith("comfyui_conceptprism.")}
    for name in pack:
        monkeypatch.delitem(sys.modules, name)
    nodes = importlib.import_module("comfyui_conceptprism.nodes")
    assert len(nodes.NODE_CLASS_MAPPINGS) >= 10
    fresh = importlib.import_module("comfyui_conceptprism.prism_core.host.internals.contract")
    found = [i.symbol for i, _ in fresh.problems(*internal.uses)]
    assert internal.symbol in found, (internal.symbol, found)
    for name in [n for n in sys.modules if n.startswith("comfyui_conceptprism.")]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    for name, module in pack.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_a_layer_whose_arithmetic_changed_is_refused_on_the_first_step(tiny, monkeypatch):
    """The name probe cannot see a changed formula; the first call of the out-of-place CLIP layer compares it with
    the host's own forward on the user's model and refuses (before any training step), naming the symbol."""
    from comfyui_conceptprism.prism_core.training.config import TokenConfig
    from comfyui_conceptprism.prism_core.concept_input.concept_set import ConceptSet
    from comfyui_conceptprism.prism_core.host.stage1 import learn_tokens

    def forward(self, x, mask=None, optimized_attention=None):  # same names read, another formula
        x += 0.5 * self.self_attn(self.layer_norm1(x), mask, optimized_attention)
        x += self.mlp(self.layer_norm2(x))
        return x
    monkeypatch.setattr(comfy.clip_model.CLIPLayer, "forward", forward)
    assert contract.problems(contract.TEXT_TRAINING) == []  # the probe alone passes it
    models = tiny("sd15")
    steps = []
    with torch.inference_mode():
        concept = ConceptSet(torch.rand(2, RES, RES, 3, generator=torch.Generator().manual_seed(0)),
                             ("0.png", "1.png"), ("", ""), RES, "test")
        with pytest.raises(contract.HostContractError, match=r"comfy\.clip_model\.CLIPLayer.*checked on this model"):
            learn_tokens(models.model, models.clip, models.vae, concept, TokenConfig(steps=2, gradient_accumulation=1),
                         on_step=lambda *a: steps.append(a))
    assert not steps and not [m for m in models.clip.cond_stage_model.modules() if "forward" in m.__dict__]

