"""Training where users train: weights stored in float16/bfloat16 (as ComfyUI loads checkpoints on a GPU),
proved against float32 twins holding the very same rounded values.

- training_dtype float32 computes the diffusion model in float32 whatever the storage: Stage 1's and
  Stage 2's first-step losses and gradients equal the twin's (the text encoders compute in float32
  through the host's manual cast already, in both builds);
- float16 compute with dynamic loss scaling at SD's real latent size gives finite, non-zero gradients
  (the cosines of the exclusion-only gradient per compute dtype are measured by `bench/run.py precision`);
- a LoRA update of 1e-4 of ||W|| on reduced-precision weights is applied at float32 precision.
"""
from __future__ import annotations

import pytest
import torch

from host_setup import require_host

require_host()

import tiny_models  # noqa: E402
from conftest import FAMILIES  # noqa: E402
from host_checks import RES, stage2_run  # noqa: E402
from comfyui_conceptprism.prism_core.training.stage2 import step_losses  # noqa: E402
from comfyui_conceptprism.prism_core.training.stage1 import TokenParameters, micro_step_losses  # noqa: E402
from comfyui_conceptprism.prism_core.training.schedule import MicroStep  # noqa: E402
from comfyui_conceptprism.prism_core.host import lora_layers, lora_targets, text  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals.lora_adapters import trainable_parameters  # noqa: E402
from comfyui_conceptprism.prism_core.host.lora_targets import stage2_targets  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals import training_guard  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1_backend import ComfyStage1Backend, encode_latents  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage2 import ComfyStage2Backend  # noqa: E402

STORED = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_BUILDS: dict = {}


def stored_and_twin(family: str, stored: str):
    """(models stored in `stored`, float32 twin with the same values), built once per module."""
    key = (family, stored)
    if key not in _BUILDS:
        dtype = STORED[stored]
        _BUILDS[key] = (tiny_models.build(family, 7, unet_dtype=dtype, clip_dtype=dtype),
                        tiny_models.build(family, 7, unet_dtype=torch.float32, clip_dtype=torch.float32, rounded_like=dtype))
    return _BUILDS[key]


def _vectors(clip, n_images=3):
    widths = text.encoder_widths(clip)
    g = torch.Generator().manual_seed(3)
    return ({k: torch.randn(1, w, generator=g) * 0.02 for k, w in widths.items()},
            {k: torch.randn(n_images, 4, w, generator=g) * 0.02 for k, w in widths.items()})


def _images(res=RES, n=3):
    return torch.rand(n, res, res, 3, generator=torch.Generator().manual_seed(4))


def stage1_first_step(models, training_dtype="float32", images=None, scale=1.0):
    """(rec, excl, {key: target grad}, {key: residual grad}) of one micro-step with anchors."""
    target, residuals = _vectors(models.clip)
    images = _images() if images is None else images
    step = MicroStep(image=1, anchors=(2, 0), timesteps=(10, 500, 990), noise_seed=1234)
    with torch.inference_mode(False):
        latents = encode_latents(models.model, models.vae, images)
        lengths = text.slot_lengths_for(target, residuals)
        with ComfyStage1Backend(models.model, models.clip, lengths, images.shape[1], max_batch=4,
                                training_dtype=training_dtype) as backend:
            params = TokenParameters.from_initial(target, residuals)
            rec, excl = micro_step_losses(backend, latents, params, step, backend.encode_null(), 0.05, scale)
    return (rec, excl, {k: p.grad.clone() / scale for k, p in params.target.items()},
            {k: p.grad.clone() / scale for k, p in params.residuals.items()})


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str):
    rel = float((a - b).norm() / b.norm())
    assert rel <= 1e-6, f"{what}: relative difference {rel:.2e}"


@pytest.mark.parametrize("stored", list(STORED))
@pytest.mark.parametrize("family", FAMILIES)
def test_stage1_float32_compute_on_reduced_precision_weights_equals_the_float32_twin(family, stored):
    reduced, twin = stored_and_twin(family, stored)
    assert next(reduced.model.model.diffusion_model.parameters()).dtype == STORED[stored]
    got, want = stage1_first_step(reduced), stage1_first_step(twin)
    assert got[0] == pytest.approx(want[0], rel=1e-6) and got[1] == pytest.approx(want[1], rel=1e-6)
    for i in (2, 3):
        for key in want[i]:
            assert want[i][key].abs().sum() > 0
            _assert_close(got[i][key], want[i][key], f"{family} {stored} {key}")


def _stage2_first_step(models, training_dtype="float32"):
    adapters = lora_layers.trainable_adapters(stage2_targets(models.model), 4, 4.0, seed=5)
    with torch.no_grad():  # a non-zero update, so the gradient reaches both factors
        for adapter in adapters.values():
            adapter.lora_down.weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(6))
    target, _ = _vectors(models.clip)
    g = torch.Generator().manual_seed(8)
    with torch.inference_mode(False):
        conds = [{"c_crossattn": torch.randn(1, 77, sum(v.shape[1] for v in target.values()), generator=g)}
                 for _ in range(3)]
        if models.family == "sdxl":
            for c in conds:
                c["y"] = torch.randn(1, 2816, generator=g)
        latents = encode_latents(models.model, models.vae, _images())
        steps = [MicroStep(1, (), (500,), 77), MicroStep(2, (), (100,), 78)]
        with ComfyStage2Backend(models.model, adapters, *stage2_run(models.model), max_batch=2, training_dtype=training_dtype) as backend:
            params = trainable_parameters(adapters)
            losses = step_losses(backend, latents, conds, steps, params)
    return losses, [p.grad.clone() for p in params]


@pytest.mark.parametrize("stored", list(STORED))
@pytest.mark.parametrize("family", FAMILIES)
def test_stage2_float32_compute_on_reduced_precision_weights_equals_the_float32_twin(family, stored):
    reduced, twin = stored_and_twin(family, stored)
    (got_losses, got_grads), (want_losses, want_grads) = _stage2_first_step(reduced), _stage2_first_step(twin)
    assert got_losses == pytest.approx(want_losses, rel=1e-6)
    assert sum(float(g.abs().sum()) for g in want_grads) > 0
    _assert_close(torch.cat([g.flatten() for g in got_grads]), torch.cat([g.flatten() for g in want_grads]),
                  f"{family} {stored} adapter gradients")


def test_float16_with_loss_scaling_at_sd_latent_size_gives_finite_gradients():
    """SD's real latent size (4x64x64, 512 px) on the fp16-stored tiny SD1.5 model: one micro-step with
    anchors in float16 compute, its loss scaled as the default accumulation (4) scales it, gives finite,
    non-zero token gradients pointing where the float32 ones do. (The cosines per compute dtype of the
    exclusion-only gradient, and the first exclusion loss, are a measurement: bench/run.py precision.)"""
    reduced, _ = stored_and_twin("sd15", "float16")
    images = _images(res=512)
    _, _, want_target, want_residual = stage1_first_step(reduced, "float32", images)
    _, _, got_target, got_residual = stage1_first_step(reduced, "float16", images, scale=2.0 ** 16 / 4)
    got = torch.cat([g.flatten() for g in [*got_target.values(), *got_residual.values()]]).double()
    want = torch.cat([g.flatten() for g in [*want_target.values(), *want_residual.values()]]).double()
    assert torch.isfinite(got).all() and got.abs().sum() > 0
    assert all(g.abs().sum() > 0 for g in [*got_target.values(), *got_residual.values()])
    assert float(torch.nn.functional.cosine_similarity(got, want, dim=0)) > 0.99


@pytest.mark.parametrize("stored", list(STORED))
def test_small_lora_update_on_reduced_precision_weights_applies_at_float32(stored):
    """A rank-4 update of 1e-4 ||W|| on a float16/bfloat16-stored attention projection, float32 compute:
    the layer's output changes by s * up (down x) to 1e-2 relative (rounding it against W in the stored
    dtype would lose it: float16's spacing near |W| entries is ~1e-3 of them)."""
    reduced, _ = stored_and_twin("sd15", stored)
    name = lora_targets.attention_projections(reduced.model)[0]
    weight = reduced.model.model.get_submodule(name).weight
    adapter = lora_layers.trainable_adapters({name: stage2_targets(reduced.model)[name]}, 4, 4.0, seed=1)[name]
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        adapter.lora_up.weight.copy_(torch.randn(adapter.lora_up.weight.shape, generator=g))
        adapter.lora_down.weight.copy_(torch.randn(adapter.lora_down.weight.shape, generator=g))
        delta = adapter.lora_up.weight @ adapter.lora_down.weight
        adapter.lora_up.weight.mul_(1e-4 * weight.float().norm() / delta.norm())
        expected_delta = (float(adapter.alpha) / 4) * (adapter.lora_up.weight @ adapter.lora_down.weight)
    x = torch.randn(2, 5, weight.shape[1], generator=g)

    def output(wrappers):
        with torch.inference_mode(False), torch.no_grad():
            with training_guard.loaded_training_clones(reduced.model, None, wrappers, compute_dtype=torch.float32) as (clone, _):
                return clone.model.get_submodule(name)(x.to(clone.load_device)).float().cpu()
    change = output({f"{name}.weight": adapter}) - output({})
    want = x @ expected_delta.T
    rel = float((change - want).norm() / want.norm())
    assert rel < 1e-2, rel


def test_auto_precision_follows_the_hosts_choice_for_the_device(monkeypatch):
    """auto: float32 on the CPU; on a GPU, loss-scaled float16 where the host would run float16, else
    bfloat16 where it supports that, else float32 (the host's should_use_fp16/bf16 stand in for a GPU here)."""
    import comfy.model_management as mm
    from comfyui_conceptprism.prism_core.host.diffusion import compute_dtype
    cuda = torch.device("cuda", 0)
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert compute_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    for fp16, bf16, want in ((True, True, torch.float16), (False, True, torch.bfloat16), (False, False, torch.float32)):
        monkeypatch.setattr(mm, "should_use_fp16", lambda *a, **k: fp16)
        monkeypatch.setattr(mm, "should_use_bf16", lambda *a, **k: bf16)
        assert compute_dtype("auto", cuda) == want


@pytest.mark.parametrize("family", FAMILIES + ["flux", "flux-schnell"])
def test_auto_precision_follows_the_dtypes_the_host_allows_for_the_model(family, tiny, monkeypatch):
    """auto walks the host's allowed compute dtypes for this model in the host's order (its model config's
    supported_inference_dtypes, as comfy.model_management.unet_dtype does): on a card with float16 and bfloat16,
    SD models train in float16 (listed first by the host's BASE config) and FLUX.1 in bfloat16, as ComfyUI samples
    it (its Flux config lists bfloat16 first); without bfloat16, both in float16; without either, float32. The
    host's own should_use_fp16/should_use_bf16 stand in for a CUDA device: yes for cuda:0 only."""
    import comfy.model_management as mm
    from comfyui_conceptprism.prism_core.host.diffusion import compute_dtype
    on_gpu = tiny(family).model.clone()  # a clone: the fixture's patcher keeps its CPU load device
    on_gpu.load_device = torch.device("cuda", 0)
    flux = family.startswith("flux")
    asked: list[torch.device] = []
    for fp16, bf16, want in ((True, True, torch.bfloat16 if flux else torch.float16),
                             (True, False, torch.float16), (False, True, torch.bfloat16), (False, False, torch.float32)):
        def host_says(answer: bool):
            def should_use(device=None, *args, **kwargs) -> bool:
                asked.append(device)
                return answer and device is not None and device.type == "cuda"
            return should_use
        monkeypatch.setattr(mm, "should_use_fp16", host_says(fp16))
        monkeypatch.setattr(mm, "should_use_bf16", host_says(bf16))
        assert compute_dtype("auto", on_gpu) == want, (fp16, bf16)
        assert compute_dtype("float32", on_gpu) == torch.float32  # an explicit choice is never overridden
    assert asked and set(asked) == {torch.device("cuda", 0)}  # the model's load device was what the host was asked
    # The CPU stays float32 (reduced precision is slower there), whatever the model allows.
    assert compute_dtype("auto", tiny(family).model) == torch.float32
