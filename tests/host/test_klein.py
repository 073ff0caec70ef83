"""Both stages on tiny real FLUX.2 Klein models (4B- and 9B-shaped: the host's FLUX.2 transformer and its Qwen3 4B /
8B text encoders at small widths with the 28 layers Klein stacks 9, 18 and 27 of, the real tokenizer, chat template
and 512-token padding), with the FLUX.1 proofs: host-oracle losses, token gradients through the LLM equal finite
differences with and without checkpointing, LoraLoader parity and strength 0, the incoming MODEL and CLIP
untouched, Cancel, bfloat16 and fp8 twins; FLUX.2-dev refused. Releases without Klein skip."""
from __future__ import annotations

import functools
import logging

import pytest
import torch

from host_setup import require_host

require_host()

import comfy.lora  # noqa: E402
import comfy.model_management  # noqa: E402
import nodes as host_nodes  # noqa: E402

from host_checks import RES, randomised_adapters, stage2_flow_steps, stage2_losses, WORD, host_outputs, llm_cond, module_state, random_concept, widget_defaults  # noqa: E402
from comfyui_conceptprism.nodes.conditioning import PrismConditioning  # noqa: E402
from comfyui_conceptprism.nodes.lora_files import SavePrismLoRA  # noqa: E402
from comfyui_conceptprism.nodes.lora_train import PrismLoRATrain  # noqa: E402
from comfyui_conceptprism.nodes.optimize_tokens import OptimizePrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.formats.lora_file import LoraWeights, read_lora  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.training.config import LoraConfig, TokenConfig  # noqa: E402
from comfyui_conceptprism.prism_core.training.schedule import MicroStep  # noqa: E402
from comfyui_conceptprism.prism_core.training.stage1 import TokenParameters, micro_step_losses  # noqa: E402
from comfyui_conceptprism.prism_core.host import lora_layers, text  # noqa: E402
from comfyui_conceptprism.prism_core.host.diffusion import encode_latents  # noqa: E402
from comfyui_conceptprism.prism_core.host.family import describe  # noqa: E402
from comfyui_conceptprism.prism_core.host.lora_targets import stage2_targets  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1 import learn_tokens  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1_backend import ComfyStage1Backend  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage2 import train_concept_lora  # noqa: E402
from comfyui_conceptprism.prism_core.host.stock_nodes import apply_lora  # noqa: E402

GRID = 2 ** 24  # the plan's sigma grid, from its definition: sigma = (k + 1) / 2^24
KEYS = {"klein4b": "qwen3_4b", "klein4b-guided": "qwen3_4b", "klein9b": "qwen3_8b"}
STEP = MicroStep(image=1, anchors=(2, 0), timesteps=(round(0.3 * GRID) - 1, round(0.75 * GRID) - 1, round(0.05 * GRID) - 1),
                 noise_seed=1234)
STEPS = stage2_flow_steps()  # the micro-steps stage2_losses runs
_stage2_losses = functools.partial(stage2_losses, guidance=3.5)  # the run's guidance


def _has_klein() -> bool:
    import comfy.text_encoders.flux as flux_text
    return hasattr(flux_text, "KleinTokenizer")


@pytest.fixture
def klein(tiny):
    def get(family: str = "klein4b"):
        if not _has_klein():
            pytest.skip("this ComfyUI release has no FLUX.2 Klein")
        return tiny(family)
    return get


def _vectors(models, key, seed=3, n=3, residual_rows=1):
    width = text.encoder_widths(models.clip)[key]
    g = torch.Generator().manual_seed(seed)
    return {key: torch.randn(1, width, generator=g) * 0.05}, {key: torch.randn(n, residual_rows, width, generator=g) * 0.05}


def _bank(models, key, seed=7):
    target, residuals = _vectors(models, key, seed)
    return PrismTokens(target, residuals, [""] * 3, [f"{i}.png" for i in range(3)], {"beta": 0.5}, LossHistory([1.0], [0.1]))


def _velocity(model, z, sigma, eps, cond, guidance):
    """(v_hat, v): apply_model's x0_hat with the host's own noising, both as the flow velocity eps - x0."""
    sampling = model.get_model_object("model_sampling")
    x_t = sampling.noise_scaling(sigma, eps, z)
    x0_hat = model.model.apply_model(x_t, sigma, c_crossattn=cond, guidance=torch.full((z.shape[0],), guidance)).float()
    return (x_t - x0_hat) / sigma.view(-1, 1, 1, 1), eps - z


def _losses(models, latents, target, residuals, step, beta, guidance=3.5, checkpointing=False):
    lengths = text.slot_lengths_for(target, residuals)
    family = describe(models.model, models.clip)
    with ComfyStage1Backend(models.model, models.clip, lengths, RES, max_batch=2, checkpointing=checkpointing,
                            guidance=family.guidance_input(guidance), family=family) as backend:
        params = TokenParameters.from_initial(target, residuals)
        rec, excl = micro_step_losses(backend, latents, params, step, backend.encode_null(), beta, 1.0)
        grads = ({k: p.grad for k, p in params.target.items()}, {k: p.grad for k, p in params.residuals.items()})
    return rec, excl, grads


@pytest.mark.parametrize("family", ["klein4b", "klein9b", "klein4b-guided"])
def test_family_and_stage1_losses_equal_the_host_oracle(family, klein):
    """Klein is a flow model on the velocity; the guidance input reaches the model and only a checkpoint with a
    guidance embedding reads it (as ComfyUI tells base and distilled apart: by guidance_in)."""
    models, key = klein(family), KEYS[family]
    described = describe(models.model, models.clip)
    assert (described.name, described.target, described.lora.name) == ("klein", "flow", "flux2-klein")
    assert described.reads_guidance == family.endswith("guided")
    target, residuals = _vectors(models, key)
    images = torch.rand(3, RES, RES, 3, generator=torch.Generator().manual_seed(5))
    results = {}
    for guidance in (3.5, 1.0):
        with torch.inference_mode(False):
            latents = encode_latents(models.model, models.vae, images)
            rec, excl, _ = _losses(models, latents, target, residuals, STEP, 0.5, guidance)
        comfy.model_management.load_models_gpu([models.model])
        with torch.no_grad():
            z = models.model.model.process_latent_in(models.vae.encode(images)).float()
            eps = torch.randn((3, *z.shape[1:]), generator=torch.Generator().manual_seed(STEP.noise_seed))
            sigmas = torch.tensor([(k + 1) / GRID for k in STEP.timesteps], dtype=torch.float32)
            i = STEP.image
            cond = llm_cond(models.clip, f"{WORD} with {WORD}", [target[key], residuals[key][i]], key)[0]
            prediction, velocity = _velocity(models.model, z[i:i + 1], sigmas[:1], eps[:1], cond, guidance)
            oracle_rec = float(((prediction - velocity) ** 2).mean())
            res, null = llm_cond(models.clip, WORD, [residuals[key][i]], key)[0], llm_cond(models.clip, "", [], key)[0]
            gaps = []
            for k, j in enumerate(STEP.anchors):
                args = (z[j:j + 1], sigmas[1 + k:2 + k], eps[1 + k:2 + k])
                gap = _velocity(models.model, *args, res, guidance)[0] - _velocity(models.model, *args, null, guidance)[0]
                gaps.append((gap ** 2).mean())
            oracle_excl = float(torch.stack(gaps).mean())
        assert rec == pytest.approx(oracle_rec, rel=1e-4, abs=1e-6) and excl == pytest.approx(oracle_excl, rel=1e-4, abs=1e-7)
        results[guidance] = (rec, excl)
    assert (results[3.5] != results[1.0]) == family.endswith("guided")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_token_gradients_through_the_llm_equal_finite_differences(checkpointing, klein):
    models, key = klein("klein4b"), "qwen3_4b"
    target, residuals = _vectors(models, key, seed=8)
    images = torch.rand(3, RES, RES, 3, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode(False):
        latents = encode_latents(models.model, models.vae, images)
        _, _, (t_grads, r_grads) = _losses(models, latents, target, residuals, STEP, 0.5, checkpointing=checkpointing)
        for where, grad in (("target", t_grads[key]), ("residual", r_grads[key])):
            flat = grad.reshape(-1)
            coordinate = int(flat.abs().argmax())
            values = []
            for sign in (1, -1):
                t, r = {k: v.clone() for k, v in target.items()}, {k: v.clone() for k, v in residuals.items()}
                (t if where == "target" else r)[key].view(-1)[coordinate] += sign * 2e-3
                rec, excl, _ = _losses(models, latents, t, r, STEP, 0.5)
                values.append(rec + 0.5 * excl)
            assert float(flat[coordinate]) == pytest.approx((values[0] - values[1]) / 4e-3, rel=0.03), where






def test_stage2_loss_equals_the_hosts_patching_of_the_file_and_gradients_equal_finite_differences(klein):
    models, key = klein("klein4b"), "qwen3_4b"
    tokens, concept = _bank(models, key), random_concept()
    adapters = randomised_adapters(models.model)
    names = {k: stage2_targets(models.model)[k].file_name for k in adapters}
    weights = LoraWeights(lora_layers.adapter_tensors(adapters, names), {})
    key_map = comfy.lora.model_lora_keys_unet(models.model.model, {})
    targets = [key_map[name] for name in weights.layer_names()]
    adapted = {t[0] if isinstance(t, tuple) else t for t in targets}
    assert adapted == {"diffusion_model.double_blocks.0.img_attn.qkv.weight", "diffusion_model.double_blocks.0.txt_attn.qkv.weight",
                       "diffusion_model.double_blocks.0.img_attn.proj.weight", "diffusion_model.double_blocks.0.txt_attn.proj.weight",
                       "diffusion_model.single_blocks.0.linear1.weight"}
    losses, params = _stage2_losses(models.model, models, adapters, tokens, concept, checkpointing=True)
    patched = apply_lora(models.model, weights)
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        z = models.model.model.process_latent_in(models.vae.encode(concept.images.clone())).float()
        for k, step in enumerate(STEPS):
            eps = torch.randn((1, *z.shape[1:]), generator=torch.Generator().manual_seed(step.noise_seed))
            cond = llm_cond(models.clip, f"{WORD} with {WORD}", [tokens.target[key], tokens.residuals[key][step.image]], key)[0]
            sigma = torch.tensor([(step.timesteps[0] + 1) / GRID])
            prediction, velocity = _velocity(patched, z[step.image:step.image + 1], sigma, eps, cond, 3.5)
            assert losses[k] == pytest.approx(float(((prediction - velocity) ** 2).mean()), rel=1e-4, abs=1e-6), k
    # in the single block and in the double block, the adapter weight with the largest gradient (the tiny model's
    # attention is nearly uniform: some gradients are below what a float32 difference resolves)
    def largest(prefix: str) -> tuple[str, str]:
        return max(((name, which) for name in adapters if name.startswith(prefix) for which in ("lora_down", "lora_up")),
                   key=lambda pick: float(getattr(adapters[pick[0]], pick[1]).weight.grad.abs().max()))
    picks = dict([largest("single_transformer_blocks."), largest("transformer_blocks.")])
    grads = {name: getattr(adapters[name], which).weight.grad.clone().reshape(-1) for name, which in picks.items()}
    for name, which in picks.items():
        weight = getattr(adapters[name], which).weight
        coordinate = int(grads[name].abs().argmax())
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                weight.view(-1)[coordinate] += sign * 1e-2
            values.append(sum(_stage2_losses(models.model, models, adapters, tokens, concept)[0]) / len(STEPS))
            with torch.no_grad():
                weight.view(-1)[coordinate] -= sign * 1e-2
        assert float(grads[name][coordinate]) == pytest.approx((values[0] - values[1]) / 2e-2, rel=0.03), name


def test_nodes_loraloader_parity_strength_zero_untouched_inputs_and_cancel(klein, lora_dir, caplog):
    models = klein("klein4b")
    concept = random_concept()
    before = host_outputs(models.model, models.clip)
    state, clip_state = module_state(models.model.model), module_state(models.clip.cond_stage_model)
    with torch.inference_mode():
        tokens = OptimizePrismTokens().optimize(models.model, models.clip, models.vae, concept,
                                                **{**widget_defaults(OptimizePrismTokens), "steps": 1})[0]
        out_model, lora, loss, _ = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens,
                                                          **{**widget_defaults(PrismLoRATrain), "steps": 2, "learning_rate": 1e-2,
                                                             "gradient_accumulation": 1, "preset": "widgets"})
    assert tokens.settings["residual_length"] == 1 and tokens.settings["learning_rate"] == 1e-4  # preset auto: FLUX values
    assert module_state(models.model.model) == state and module_state(models.clip.cond_stage_model) == clip_state
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))
    name = SavePrismLoRA().save(lora, "tests/klein", "float32")["result"][0]
    assert read_lora(lora_dir / name).metadata["conceptprism.family"] == "flux2-klein"
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        model_only = host_nodes.LoraLoaderModelOnly().load_lora_model_only(models.model, name, 1.0)[0]
        zero = host_nodes.LoraLoaderModelOnly().load_lora_model_only(models.model, name, 0.0)[0]
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage() or "NOT LOADED" in r.getMessage()]
    trained, loaded = host_outputs(out_model, models.clip, seed=11), host_outputs(model_only, models.clip, seed=11)
    base = host_outputs(models.model, models.clip, seed=11)
    assert torch.equal(trained[2], loaded[2]) and not torch.equal(trained[2], base[2])
    assert torch.equal(host_outputs(zero, models.clip, seed=11)[2], base[2])

    def cancel(*args):
        comfy.model_management.interrupt_current_processing(True)
    files = sorted(lora_dir.rglob("*"))
    before = host_outputs(models.model, models.clip)  # the base loaded again (the LoRA clones above patched the modules)
    state = module_state(models.model.model)
    for run in (lambda: learn_tokens(models.model, models.clip, models.vae, concept, TokenConfig(steps=3), on_step=cancel),
                lambda: train_concept_lora(models.model, models.clip, models.vae, concept, tokens, LoraConfig(steps=3),
                                           describe(models.model, stage2=True), on_step=cancel)):
        try:
            with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
                run()
        finally:
            comfy.model_management.interrupt_current_processing(False)
    assert sorted(lora_dir.rglob("*")) == files and module_state(models.model.model) == state
    assert module_state(models.clip.cond_stage_model) == clip_state
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float8_e4m3fn], ids=["bfloat16", "fp8"])
def test_reduced_precision_weights_and_encoder_train_as_their_float32_twin(stored, klein):
    """Transformer and Qwen3 stored in bfloat16, or both in fp8 (manual cast), compute Stage 1's losses and token
    gradients as a float32 model holding exactly the rounded values."""
    import tiny_models
    klein("klein4b")  # skips without Klein
    reduced = tiny_models.build("klein4b", 4, unet_dtype=stored, clip_dtype=stored)
    twin = tiny_models.build("klein4b", 4, rounded_like=stored, clip_dtype=torch.float32)
    unrounded = tiny_models.build("klein4b", 4, clip_dtype=torch.float32)
    assert reduced.model.model.diffusion_model.double_blocks[0].img_attn.qkv.weight.dtype == stored
    assert reduced.clip.cond_stage_model.qwen3_4b.transformer.get_input_embeddings().weight.dtype == stored
    target, residuals = _vectors(twin, "qwen3_4b", seed=9)
    images = torch.rand(3, RES, RES, 3, generator=torch.Generator().manual_seed(7))
    results = []
    for models in (reduced, twin, unrounded):
        with torch.inference_mode(False):
            latents = encode_latents(twin.model, twin.vae, images)
            rec, excl, (t_grads, _) = _losses(models, latents, target, residuals, STEP, 0.5)
        results.append((rec, excl, t_grads["qwen3_4b"].clone()))
    assert results[0][:2] == pytest.approx(results[1][:2], rel=1e-5)
    torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-4, atol=1e-8)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(results[2][2], results[0][2], rtol=1e-4, atol=1e-8)


def test_prism_conditioning_and_the_embedding_word_in_a_stock_clip_text_encode(klein, folders):
    """Prism Conditioning is the oracle's conditioning (the learned row in the host's template, padded to 512). A stock
    CLIP Text Encode reads `embedding:` where the release's Klein tokenizer does (0.33.0): equal to Prism
    Conditioning up to and including the learned row (Qwen3 is causal), after which the host re-spaces the text."""
    from comfyui_conceptprism.nodes.token_files import SavePrismEmbedding
    models, key = klein("klein4b"), "qwen3_4b"
    tokens = _bank(models, key, seed=5)
    with torch.inference_mode():
        prism = PrismConditioning().encode(models.clip, tokens, "a photo of [V] in the snow", "[V]", "target", 0)[0][0][0]
        oracle = llm_cond(models.clip, f"a photo of {WORD} in the snow", [tokens.target[key]], key)[0]
        word = SavePrismEmbedding().save(tokens, "test/klein")["result"][0]
        plain = host_nodes.CLIPTextEncode().encode(models.clip, f"a photo of {word} in the snow")[0][0][0]
        other = PrismConditioning().encode(models.clip, _bank(models, key, seed=6), "a photo of [V] in the snow", "[V]", "target", 0)[0][0][0]
    assert torch.equal(prism, oracle) and prism.shape == (1, 512, 192)
    assert getattr(models.clip.tokenizer, key).embedding_directory is not None  # Klein's tokenizer reads embeddings
    prefix = [t for t, *_ in models.clip.tokenize("a photo of ")[key][0]].index(151645)  # up to "<|im_end|>"
    torch.testing.assert_close(plain[:, :prefix + 1], prism[:, :prefix + 1], rtol=1e-5, atol=1e-5)
    assert (plain[:, prefix] - other[:, prefix]).abs().max() > 0.1


def test_flux2_dev_and_mismatched_encoders_are_refused(klein):
    """FLUX.2-dev (its text input three Mistral-Small layers wide) is refused by name; a Klein model with the other
    size's Qwen3, or with Z-Image's, is refused with the encoder to load."""
    import comfy.model_patcher
    import tiny_models
    small, large = klein("klein4b"), klein("klein9b")
    with torch.inference_mode():
        dev = tiny_models.klein_shaped(context_in_dim=3 * 5120)
    patcher = comfy.model_patcher.ModelPatcher(dev, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    with pytest.raises(ValueError, match="FLUX.2-dev"):
        describe(patcher)
    with pytest.raises(ValueError, match=r"reads text states 288 wide, but the CLIP's Qwen3 is 64 wide.*qwen_3_8b"):
        describe(large.model, small.clip)
    with torch.inference_mode():  # a real 9B's text input (3 x 4096) is named by its size
        nine = tiny_models.klein_shaped(context_in_dim=3 * 4096)
    nine = comfy.model_patcher.ModelPatcher(nine, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"\(Klein 9B\) reads text states 12288 wide"):
        describe(nine, small.clip)
    # a Stage 2 run (its node describes the model alone) refuses the same pairing before any work
    with torch.inference_mode(), pytest.raises(ValueError, match="reads text states 288 wide"):
        train_concept_lora(large.model, small.clip, large.vae, random_concept(), _bank(small, "qwen3_4b"), LoraConfig(steps=1),
                           describe(large.model, stage2=True))
    zimage = tiny_models.build("zimage", 0)
    with pytest.raises(ValueError, match="type flux2"):
        describe(small.model, zimage.clip)
    # tokens learned for Z-Image (the same qwen3_4b key and width) are refused in a Klein CLIP, and the reverse
    for learned, clip, loaded in (("zimage", small.clip, "FLUX.2 Klein"), ("klein", zimage.clip, "Z-Image")):
        tokens = _bank(small, "qwen3_4b")
        tokens.settings["family"] = learned
        with torch.inference_mode(), pytest.raises(ValueError, match=f"loaded for {loaded}"):
            PrismConditioning().encode(clip, tokens, "a photo of [V]", "[V]", "target", 0)
