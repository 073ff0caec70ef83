"""Stage 1 on a tiny real FLUX.1 (dev and schnell shapes): flow-velocity losses equal an oracle written from
host primitives, sigma is uniform on (0, 1], token gradients equal finite differences with and without
gradient checkpointing, the host's forwards and RoPE come back after the node, the FLUX preset runs the
reference values, and FLUX.2 is refused."""
from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch

from host_setup import require_host

require_host()

import comfy.ldm.flux.math  # noqa: E402
import comfy.model_management  # noqa: E402

from host_checks import RES, module_state  # noqa: E402
from comfyui_conceptprism.nodes.optimize_tokens import OptimizePrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.concept_input.concept_set import ConceptSet  # noqa: E402
from comfyui_conceptprism.prism_core.training.config import TokenConfig  # noqa: E402
from comfyui_conceptprism.prism_core.training.stage1 import TokenParameters, micro_step_losses  # noqa: E402
from comfyui_conceptprism.prism_core.training.schedule import MicroStep, plan_micro_steps  # noqa: E402
from comfyui_conceptprism.prism_core.host import diffusion, text  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals import out_of_place  # noqa: E402
from comfyui_conceptprism.prism_core.host.runtime import RunOptions
from comfyui_conceptprism.prism_core.host.stage1 import learn_tokens  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1_backend import ComfyStage1Backend, encode_latents  # noqa: E402

GRID = 2 ** 24  # the plan's sigma grid, written here from its definition: sigma = (k + 1) / 2^24


def _index(sigma: float) -> int:
    return round(sigma * GRID) - 1


def _concept(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        images = torch.rand(n, RES, RES, 3, generator=g)
    captions = ("a red ball on green grass", "a red ball on a wooden table", "a red ball in the snow")[:n]
    return ConceptSet(images, tuple(f"{i}.png" for i in range(n)), captions, RES, "test")


def _oracle_velocity(model, z, sigma, eps, cond, pooled, guidance):
    """(v_hat, v) from apply_model's x0_hat with the host's own noising: x_t = sigma*eps + (1-sigma)*x0 and
    the flow velocity v = eps - x0 (both for the model's estimate and the truth)."""
    sampling = model.get_model_object("model_sampling")
    x_t = sampling.noise_scaling(sigma, eps, z)
    x0_hat = model.model.apply_model(x_t, sigma, c_crossattn=cond, y=pooled,
                                     guidance=torch.full((z.shape[0],), guidance)).float()
    s = sigma.view(-1, 1, 1, 1)
    return (x_t - x0_hat) / s, eps - z


def _micro_step_oracle(models, images, step, beta, guidance, t_word, r_word):
    # The base model loaded through the host: another test's LoRA clone may still be patched into the
    # shared modules, and apply_model below runs whatever the modules hold.
    comfy.model_management.load_models_gpu([models.model])
    with torch.no_grad():
        z = models.model.model.process_latent_in(models.vae.encode(images)).float()
        eps = torch.randn((len(step.timesteps), *z.shape[1:]), generator=torch.Generator().manual_seed(step.noise_seed))
        sigmas = torch.tensor([(k + 1) / GRID for k in step.timesteps], dtype=torch.float32)
        encode = lambda prompt: models.clip.encode_from_tokens(models.clip.tokenize(prompt), return_pooled=True)
        cond, pooled = encode(f"embedding:{t_word} with embedding:{r_word}")
        i = step.image
        prediction, target = _oracle_velocity(models.model, z[i:i + 1], sigmas[:1], eps[:1], cond, pooled, guidance)
        rec = ((prediction - target) ** 2).mean()
        res, null = encode(f"embedding:{r_word}"), encode("")
        gaps = []
        for k, j in enumerate(step.anchors):
            args = (z[j:j + 1], sigmas[1 + k:2 + k], eps[1 + k:2 + k])
            gap = _oracle_velocity(models.model, *args, *res, guidance)[0] - _oracle_velocity(models.model, *args, *null, guidance)[0]
            gaps.append((gap ** 2).mean())
        return float(rec), float(torch.stack(gaps).mean())


def _vectors(models, seed=3):
    widths = text.encoder_widths(models.clip)
    g = torch.Generator().manual_seed(seed)
    target = {k: torch.randn(1, w, generator=g) * 0.05 for k, w in widths.items()}
    residuals = {k: torch.randn(3, 2, w, generator=g) * 0.05 for k, w in widths.items()}
    return target, residuals


def _losses(models, latents, target, residuals, step, beta, guidance, checkpointing=False, frozen=()):
    lengths = text.slot_lengths_for(target, residuals)
    with ComfyStage1Backend(models.model, models.clip, lengths, RES, max_batch=2, checkpointing=checkpointing,
                            guidance=guidance) as backend:
        params = TokenParameters.from_initial(target, residuals, frozen)
        rec, excl = micro_step_losses(backend, latents, params, step, backend.encode_null(), beta, 1.0)
        grads = ({k: p.grad for k, p in params.target.items()}, {k: p.grad for k, p in params.residuals.items()})
    return rec, excl, grads


STEP = MicroStep(image=1, anchors=(2, 0), timesteps=(_index(0.3), _index(0.75), _index(0.05)), noise_seed=1234)


@pytest.mark.parametrize("family", ["flux", "flux-schnell"])
def test_rec_and_excl_equal_host_oracle_on_the_flow_velocity(family, tiny, embedding_root):
    models = tiny(family)
    target, residuals = _vectors(models)
    safetensors.torch.save_file({k: v.contiguous() for k, v in target.items()}, embedding_root / f"flux_t_{family}.safetensors")
    safetensors.torch.save_file({k: v[1].contiguous() for k, v in residuals.items()}, embedding_root / f"flux_r_{family}.safetensors")
    images = torch.rand(3, RES, RES, 3, generator=torch.Generator().manual_seed(5))
    beta = 0.5
    results = {}
    for guidance in (3.5, 1.0):
        with torch.inference_mode(False):
            latents = encode_latents(models.model, models.vae, images)
            rec, excl, _ = _losses(models, latents, target, residuals, STEP, beta, guidance)
        oracle = _micro_step_oracle(models, images, STEP, beta, guidance, f"flux_t_{family}", f"flux_r_{family}")
        assert rec == pytest.approx(oracle[0], rel=1e-4, abs=1e-6)
        assert excl == pytest.approx(oracle[1], rel=1e-4, abs=1e-7)
        results[guidance] = (rec, excl)
    # dev embeds guidance, schnell has no guidance embedding: the input must reach the model, and only dev reads it
    assert (results[3.5] != results[1.0]) == (family == "flux")


def test_drawn_sigmas_are_uniform_on_0_1(tiny):
    models = tiny("flux")
    backend = ComfyStage1Backend(models.model, models.clip, {}, RES)
    plan = plan_micro_steps(n_images=4, n_anchors=3, steps=500, accumulation=4, num_timesteps=backend.num_timesteps, seed=0)
    indices = [t for group in plan for m in group for t in m.timesteps]
    sampling = models.model.get_model_object("model_sampling")
    drawn = diffusion.plan_sigmas(sampling, "flow", indices).double().sort().values
    n = drawn.numel()

    def ks(sorted_values):  # Kolmogorov-Smirnov distance to U(0, 1)
        ranks = torch.arange(1, n + 1, dtype=torch.float64)
        return float(torch.maximum(ranks / n - sorted_values, sorted_values - (ranks - 1) / n).max())
    critical = 1.95 / math.sqrt(n)  # alpha = 0.001
    assert drawn.min() > 0 and drawn.max() <= 1
    assert ks(drawn) < critical, (ks(drawn), critical)
    # The check has power: FLUX's own (shifted) sigma table indexed uniformly is not uniform in sigma.
    table = sampling.sigmas.double()
    shifted = table[torch.tensor([k % table.numel() for k in indices])].sort().values
    assert ks(shifted) > critical


def _finite_difference(models, latents, target, residuals, where, coordinate, beta, h=2e-3):
    values = []
    for sign in (1, -1):
        t = {k: v.clone() for k, v in target.items()}
        r = {k: v.clone() for k, v in residuals.items()}
        (t if where == "target" else r)["t5xxl"].view(-1)[coordinate] += sign * h
        rec, excl, _ = _losses(models, latents, t, r, STEP, beta, 3.5)
        values.append(rec + beta * excl)
    return (values[0] - values[1]) / (2 * h)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_t5_token_gradients_equal_finite_differences(checkpointing, tiny):
    models = tiny("flux")
    target, residuals = _vectors(models, seed=8)
    images = torch.rand(3, RES, RES, 3, generator=torch.Generator().manual_seed(6))
    beta = 0.5
    with torch.inference_mode(False):
        latents = encode_latents(models.model, models.vae, images)
        _, _, (t_grads, r_grads) = _losses(models, latents, target, residuals, STEP, beta, 3.5, checkpointing, ("clip_l",))
        assert t_grads["clip_l"] is None and r_grads["clip_l"] is None  # fixed CLIP-L rows get no gradient
        checked = 0
        for where, grad in (("target", t_grads["t5xxl"]), ("residual", r_grads["t5xxl"])):
            flat = grad.reshape(-1)
            for coordinate in flat.abs().topk(2).indices.tolist():
                numeric = _finite_difference(models, latents, target, residuals, where, coordinate, beta)
                assert float(flat[coordinate]) == pytest.approx(numeric, rel=0.03), (where, coordinate)
                checked += 1
    assert checked == 4


def test_checkpointing_without_the_block_copies_gives_a_wrong_gradient(tiny, monkeypatch):
    """Power of the check above: the host's in-place residual adds under its checkpointing, left as they are,
    give a different (wrong) gradient or fail outright."""
    models = tiny("flux")
    target, residuals = _vectors(models, seed=8)
    images = torch.rand(3, RES, RES, 3, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode(False):
        latents = encode_latents(models.model, models.vae, images)
        right = _losses(models, latents, target, residuals, STEP, 0.5, 3.5, False, ("clip_l",))[2][0]["t5xxl"]
        from comfyui_conceptprism.prism_core.host.internals import training_guard
        monkeypatch.setattr(training_guard, "flux_blocks_on_copies", lambda model: 0)
        try:
            wrong = _losses(models, latents, target, residuals, STEP, 0.5, 3.5, True, ("clip_l",))[2][0]["t5xxl"]
        except RuntimeError as error:
            # Either autograd sees a saved tensor modified in place, or (ComfyUI 0.33.0's tiny FLUX) torch's
            # checkpoint finds that the recompute saves other tensors than the forward did: a stream input that
            # did not require grad when the block first ran does after `img += ...` wrote into it, so the
            # recompute saves that stream's activations too (16-token image tensors where the forward saved the
            # 256-token text stream's). Both are the in-place adds into the checkpoint's inputs.
            assert ("inplace" in str(error) or "modified" in str(error)
                    or "Recomputed values for the following tensors have different metadata" in str(error)), error
            return
    assert not torch.allclose(wrong, right, rtol=1e-3, atol=1e-7)


def _forwards(models):
    return (module_state(models.model.model), module_state(models.clip.cond_stage_model), comfy.ldm.flux.math.apply_rope)


def test_forwards_and_rope_restored_after_end_cancel_and_error(tiny):
    models = tiny("flux")
    before = _forwards(models)
    rope = comfy.ldm.flux.math.apply_rope
    config = TokenConfig(steps=3, gradient_accumulation=1, residual_length=1)
    seen = []

    def during(step, steps, rec, excl):
        seen.append(comfy.ldm.flux.math.apply_rope)
    with torch.inference_mode():
        learn_tokens(models.model, models.clip, models.vae, _concept(), config, RunOptions(gradient_checkpointing=True), on_step=during)
    assert seen and all(f is out_of_place.plain_apply_rope for f in seen)
    assert _forwards(models) == before

    def cancel(step, steps, rec, excl):
        comfy.model_management.interrupt_current_processing(True)
    try:
        with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
            learn_tokens(models.model, models.clip, models.vae, _concept(), config, on_step=cancel)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert _forwards(models) == before

    def fail(step, steps, rec, excl):
        raise RuntimeError("boom")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="boom"):
        learn_tokens(models.model, models.clip, models.vae, _concept(), config, on_step=fail)
    assert _forwards(models) == before and comfy.ldm.flux.math.apply_rope is rope


def test_plain_rope_matches_the_hosts_rope(tiny):
    """The differentiable RoPE computes what the host's does (v0.8.0: comfy-kitchen's op; v0.3.64: its own)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 10, 16, generator=g), torch.randn(2, 4, 10, 16, generator=g)
    pe = comfy.ldm.flux.math.rope(torch.arange(10, dtype=torch.float32).view(1, 10), 16, 10000).unsqueeze(1)
    host = comfy.ldm.flux.math.apply_rope(q, k, pe)
    plain = out_of_place.plain_apply_rope(q, k, pe)
    for a, b in zip(host, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_auto_preset_runs_the_reference_flux_values_and_keeps_clip_l_fixed(tiny):
    models = tiny("flux")
    widgets = OptimizePrismTokens.INPUT_TYPES()["required"]
    args = {k: v[1]["default"] for k, v in widgets.items() if "default" in v[1]}
    node = OptimizePrismTokens()
    runs = []
    for steps in (1, 2):
        with torch.inference_mode():
            runs.append(node.optimize(models.model, models.clip, models.vae, _concept(), **{**args, "steps": steps})[0])
    settings = runs[0].settings
    assert (settings["residual_length"], settings["beta"], settings["learning_rate"], settings["weight_decay"],
            settings["gradient_accumulation"]) == (1, 0.5, 1e-4, 1e-4, 1)
    assert settings["guidance"] == 3.5 and settings["prediction_target"] == "flow"
    assert list(settings["frozen_encoders"]) == ["clip_l"]
    assert runs[0].residuals["t5xxl"].shape[1] == 1
    assert torch.equal(runs[0].target["clip_l"], runs[1].target["clip_l"])  # fixed: the same at every step count
    assert not torch.equal(runs[0].target["t5xxl"], runs[1].target["t5xxl"])
    # preset "widgets" runs the values as set (the SD defaults here)
    with torch.inference_mode():
        as_set = node.optimize(models.model, models.clip, models.vae, _concept(), **{**args, "steps": 1}, preset="widgets")[0]
    assert as_set.settings["residual_length"] == args["residual_length"] and as_set.settings["beta"] == args["beta"]


def test_flux_model_with_an_sd_clip_is_refused(tiny):
    with torch.inference_mode(), pytest.raises(ValueError, match="DualCLIPLoader"):
        learn_tokens(tiny("flux").model, tiny("sd15").clip, tiny("flux").vae, _concept(), TokenConfig(steps=1))


def test_a_flux2_model_with_flux1_text_encoders_is_refused(tiny):
    """A FLUX.2 transformer (a Flux subclass) is not FLUX.1: with FLUX.1's CLIP-L + T5 it is refused, naming the
    encoder FLUX.2 Klein needs (test_klein.py trains Klein; FLUX.2-dev is refused by name there)."""
    import comfy.model_base
    import comfy.supported_models
    if not hasattr(comfy.model_base, "Flux2"):
        assert not hasattr(comfy.supported_models, "Flux2")  # v0.3.64: no FLUX.2 to mistake for FLUX.1 here
        return
    import comfy.model_patcher
    import tiny_models
    flux1 = tiny("flux")
    with torch.inference_mode():
        model = tiny_models.flux2_shaped()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    with torch.inference_mode(), pytest.raises(ValueError, match="FLUX.2 Klein MODEL needs its Qwen3 text encoder"):
        learn_tokens(patcher, flux1.clip, flux1.vae, _concept(), TokenConfig(steps=1))


def test_tokens_at_the_real_t5_width_work_as_embedding_words(embedding_root, folders):
    """T5-XXL's real width (4096) with its real vocabulary: the saved word in a stock CLIP Text Encode gives
    exactly Prism Conditioning's conditioning and pooled output (CLIP-L row included)."""
    import nodes as host_nodes
    import tiny_models
    from comfyui_conceptprism.nodes.conditioning import PrismConditioning
    from comfyui_conceptprism.nodes.token_files import SavePrismEmbedding
    from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens
    models = tiny_models.build("flux", 0, embedding_directory=str(embedding_root), t5_width=4096)
    widths = text.encoder_widths(models.clip)
    assert widths == {"clip_l": 768, "t5xxl": 4096}
    g = torch.Generator().manual_seed(2)
    tokens = PrismTokens({k: torch.randn(1, w, generator=g) * 0.05 for k, w in widths.items()},
                         {k: torch.randn(2, 1, w, generator=g) * 0.05 for k, w in widths.items()},
                         ["", ""], ["a", "b"], {}, LossHistory())
    word = SavePrismEmbedding().save(tokens, "test/flux4096")["result"][0]
    with torch.inference_mode():
        plain = host_nodes.CLIPTextEncode().encode(models.clip, f"a photo of {word} in the snow")[0]
        prism = PrismConditioning().encode(models.clip, tokens, "a photo of [V] in the snow", "[V]", "target", 0)[0]
    assert plain[0][0].shape == (1, 256, 4096)
    assert torch.equal(plain[0][0], prism[0][0])
    assert torch.equal(plain[0][1]["pooled_output"], prism[0][1]["pooled_output"])


def test_mismatched_model_clip_and_vae_are_refused_with_the_fix(tiny):
    flux, sd15 = tiny("flux"), tiny("sd15")
    with torch.inference_mode(), pytest.raises(ValueError, match="SD model, but the CLIP has FLUX"):
        learn_tokens(sd15.model, flux.clip, sd15.vae, _concept(), TokenConfig(steps=1))
    with torch.inference_mode(), pytest.raises(ValueError, match="4-channel latents, but this MODEL takes 16"):
        learn_tokens(flux.model, flux.clip, sd15.vae, _concept(), TokenConfig(steps=1))


def test_flux_previews_sample_at_cfg_1_with_the_nodes_guidance(tiny):
    """preset auto on FLUX.1: previews at cfg 1 (the default 7 is SD's) with the node's guidance on the prompt, as a
    stock FLUX graph (FluxGuidance + KSampler at cfg 1) samples."""
    from comfyui_conceptprism.nodes.preview_inputs import training_previews
    models = tiny("flux")
    previews = training_previews("Optimize Prism Tokens", "Stage 1", models.clip, models.vae, RES, 2, None, 1,
                                 "a photo of [V]", 2, "euler", "simple", 7.0, 0, 2.0, "auto")
    assert (previews.settings.cfg, previews.settings.guidance) == (1.0, 2.0)
    sd = training_previews("Optimize Prism Tokens", "Stage 1", models.clip, models.vae, RES, 2, None, 1,
                           "a photo of [V]", 2, "euler", "simple", 7.0, 0, None, "auto")
    assert (sd.settings.cfg, sd.settings.guidance) == (7.0, None)
    widgets = OptimizePrismTokens.INPUT_TYPES()["required"]
    args = {k: v[1]["default"] for k, v in widgets.items() if "default" in v[1]}
    with torch.inference_mode():
        tokens, images = OptimizePrismTokens().optimize(models.model, models.clip, models.vae, _concept(),
                                                        **{**args, "steps": 1}, preview_every=1, preview_steps=2,
                                                        guidance=2.0)
    assert images.shape[0] == 1 and torch.isfinite(images).all()


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
def test_reduced_precision_weights_train_as_their_float32_twin(stored):
    """As ComfyUI loads FLUX on a GPU (bfloat16/float16 storage): float32 compute on those weights gives the
    losses and token gradients of a float32 model holding exactly the rounded values."""
    import tiny_models
    reduced = tiny_models.build("flux", 4, unet_dtype=stored, clip_dtype=stored)
    # The twins' text encoders in float32: left at the host's text-encoder default (float16, also on the CPU)
    # they would hold the bfloat16 values rounded once more (below float16's normal range, |x| < 6.1e-5,
    # bfloat16 values move by up to 3e-8), and not be twins.
    twin = tiny_models.build("flux", 4, rounded_like=stored, clip_dtype=torch.float32)
    unrounded = tiny_models.build("flux", 4, clip_dtype=torch.float32)  # the check's power: unrounded values train differently
    assert reduced.model.model.diffusion_model.img_in.weight.dtype == stored
    target, residuals = _vectors(twin, seed=9)
    images = torch.rand(3, RES, RES, 3, generator=torch.Generator().manual_seed(7))
    results = []
    for models in (reduced, twin, unrounded):
        with torch.inference_mode(False):
            latents = encode_latents(twin.model, twin.vae, images)
            rec, excl, (t_grads, _) = _losses(models, latents, target, residuals, STEP, 0.5, 3.5)
        results.append((rec, excl, t_grads["t5xxl"].clone()))
    # measured: equal to the last bit on 0.3.75 and 0.33.0 once the twins' text encoders are float32
    assert results[0][:2] == pytest.approx(results[1][:2], rel=1e-6)
    torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-5, atol=1e-9)
    with pytest.raises(AssertionError):  # the same tolerance tells the rounded values from the unrounded ones
        torch.testing.assert_close(results[2][2], results[0][2], rtol=1e-5, atol=1e-9)
