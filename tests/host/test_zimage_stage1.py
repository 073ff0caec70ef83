"""Stage 1 on a tiny real Z-Image (NextDiT + Qwen3 with the real tokenizer and chat template, built from the host's
own classes): the prompt keeps the host's template, flow-velocity losses equal an oracle written from host
primitives, token gradients through the LLM equal finite differences with and without gradient checkpointing, the
host's forwards and training switch come back after the node (also after Cancel and an error), the residual
initialisation rule, bfloat16-stored weights train as their float32 twin, and the learned word in a stock CLIP Text
Encode where the release's tokenizer reads it."""
from __future__ import annotations

import pytest
import torch

from host_setup import require_host

require_host()

import comfy.model_management  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.text_encoders.llama  # noqa: E402

from host_checks import RES, WORD, module_state, random_concept, llm_cond as oracle_cond  # noqa: E402
from comfyui_conceptprism.prism_core.training.config import TokenConfig  # noqa: E402
from comfyui_conceptprism.prism_core.training.stage1 import TokenParameters, micro_step_losses  # noqa: E402
from comfyui_conceptprism.prism_core.training.schedule import MicroStep  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.host import text  # noqa: E402
from comfyui_conceptprism.prism_core.host.family import describe  # noqa: E402
from comfyui_conceptprism.prism_core.host.runtime import RunOptions  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1 import learn_tokens  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1_backend import ComfyStage1Backend, encode_latents  # noqa: E402

GRID = 2 ** 24  # the plan's sigma grid, written here from its definition: sigma = (k + 1) / 2^24
KEY = "qwen3_4b"


def _index(sigma: float) -> int:
    return round(sigma * GRID) - 1


STEP = MicroStep(image=1, anchors=(2, 0), timesteps=(_index(0.3), _index(0.75), _index(0.05)), noise_seed=1234)


def _vectors(models, seed=3, residual_rows=2):
    width = text.encoder_widths(models.clip)[KEY]
    g = torch.Generator().manual_seed(seed)
    return ({KEY: torch.randn(1, width, generator=g) * 0.05},
            {KEY: torch.randn(3, residual_rows, width, generator=g) * 0.05})


def _velocity(model, z, sigma, eps, cond, length):
    """(v_hat, v): apply_model's x0_hat with the host's own noising x_t = sigma*eps + (1-sigma)*x0, both as the
    flow velocity eps - x0."""
    sampling = model.get_model_object("model_sampling")
    x_t = sampling.noise_scaling(sigma, eps, z)
    x0_hat = model.model.apply_model(x_t, sigma, c_crossattn=cond, num_tokens=length).float()
    return (x_t - x0_hat) / sigma.view(-1, 1, 1, 1), eps - z


def _oracle_losses(models, images, target, residuals, step):
    comfy.model_management.load_models_gpu([models.model])
    with torch.no_grad():
        z = models.model.model.process_latent_in(models.vae.encode(images)).float()
        eps = torch.randn((len(step.timesteps), *z.shape[1:]), generator=torch.Generator().manual_seed(step.noise_seed))
        sigmas = torch.tensor([(k + 1) / GRID for k in step.timesteps], dtype=torch.float32)
        i = step.image
        rec_cond = oracle_cond(models.clip, f"{WORD} with {WORD}", [target[KEY], residuals[KEY][i]])
        prediction, velocity = _velocity(models.model, z[i:i + 1], sigmas[:1], eps[:1], *rec_cond)
        rec = ((prediction - velocity) ** 2).mean()
        res_cond, null_cond = oracle_cond(models.clip, WORD, [residuals[KEY][i]]), oracle_cond(models.clip, "", [])
        gaps = []
        for k, j in enumerate(step.anchors):
            args = (z[j:j + 1], sigmas[1 + k:2 + k], eps[1 + k:2 + k])
            gap = _velocity(models.model, *args, *res_cond)[0] - _velocity(models.model, *args, *null_cond)[0]
            gaps.append((gap ** 2).mean())
    return float(rec), float(torch.stack(gaps).mean())


def _losses(models, latents, target, residuals, step, beta, checkpointing=False):
    lengths = text.slot_lengths_for(target, residuals)
    with ComfyStage1Backend(models.model, models.clip, lengths, RES, max_batch=2, checkpointing=checkpointing,
                            family=describe(models.model, models.clip)) as backend:
        params = TokenParameters.from_initial(target, residuals)
        rec, excl = micro_step_losses(backend, latents, params, step, backend.encode_null(), beta, 1.0)
        grads = ({k: p.grad for k, p in params.target.items()}, {k: p.grad for k, p in params.residuals.items()})
    return rec, excl, grads


def test_the_family_is_z_image_with_a_flow_target_and_uniform_sigma(zimage):
    family = describe(zimage.model, zimage.clip)
    assert (family.name, family.target, family.reads_guidance, family.encoder_widths) == ("zimage", "flow", False, {KEY: 64})
    assert family.schedule_levels == GRID and family.lora.name == "zimage"


def test_the_prompt_keeps_the_hosts_template_with_the_learned_rows_where_the_word_stands(zimage):
    """The pack's tokens of a prompt with learned words are the host's tokens of the same text with a single
    special token where each word stands (template, spacing and the words around it as the host makes them),
    with the word's rows in its place."""
    clip = zimage.clip
    lengths = {"prism_target": {KEY: 1}, "prism_residual_0": {KEY: 2}}
    for prompt in ("a photo of embedding:prism_target in the snow", "embedding:prism_target with embedding:prism_residual_0",
                   "a photo of embedding:prism_target.", "embedding:prism_targets on a table, a embedding:prism_target-shaped lamp",
                   "a photo of embedding:prism_target next to embedding:not_a_file"):
        ours = text.tokenize_with_slots(clip, prompt, lengths)[KEY][0]
        host = clip.tokenize(prompt.replace("embedding:prism_residual_0", WORD).replace("embedding:prism_target", WORD))[KEY][0]
        word = clip.tokenizer.qwen3_4b.tokenizer.convert_tokens_to_ids(WORD)
        expected = []
        slots = iter([("prism_residual_0", 2) if "residual" in part else ("prism_target", 1)
                      for part in prompt.split("embedding:")[1:] if part.startswith("prism_")])
        for token, *_ in host:
            if token == word:
                slot, rows = next(slots)
                expected += [(slot, r) for r in range(rows)]
            else:
                expected.append(token)
        got = [(t.slot, t.row) if isinstance(t, text.SlotRow) else t for t, *_ in ours]
        assert got == expected, (prompt, got, expected)
        # other embedding: words as clip.tokenize treats them (as text where the release reads none)
        plain = [t for t, *_ in clip.tokenize("x")[KEY][0]]  # the template around one word
        if "not_a_file" not in prompt:  # (the host's own embedding parse of another word re-spaces what follows it)
            assert got[:3] == plain[:3] and got[-5:] == plain[-5:]  # "<|im_start|>user\n" ... "<|im_end|>\n<|im_start|>assistant\n"


def test_rec_and_excl_equal_the_host_oracle_on_the_flow_velocity(zimage):
    target, residuals = _vectors(zimage)
    images = torch.rand(3, RES, RES, 3, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode(False):
        latents = encode_latents(zimage.model, zimage.vae, images)
        rec, excl, (t_grads, r_grads) = _losses(zimage, latents, target, residuals, STEP, 0.5)
    oracle = _oracle_losses(zimage, images, target, residuals, STEP)
    assert rec == pytest.approx(oracle[0], rel=1e-4, abs=1e-6)
    assert excl == pytest.approx(oracle[1], rel=1e-4, abs=1e-7)
    assert torch.isfinite(t_grads[KEY]).all() and t_grads[KEY].abs().sum() > 0
    assert r_grads[KEY][1].abs().sum() > 0 and r_grads[KEY][[0, 2]].abs().sum() == 0  # only image 1's residual


def _finite_difference(models, latents, target, residuals, where, coordinate, beta, h=2e-3):
    values = []
    for sign in (1, -1):
        t = {k: v.clone() for k, v in target.items()}
        r = {k: v.clone() for k, v in residuals.items()}
        (t if where == "target" else r)[KEY].view(-1)[coordinate] += sign * h
        rec, excl, _ = _losses(models, latents, t, r, STEP, beta)
        values.append(rec + beta * excl)
    return (values[0] - values[1]) / (2 * h)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_token_gradients_through_the_llm_equal_finite_differences(checkpointing, zimage):
    target, residuals = _vectors(zimage, seed=8)
    images = torch.rand(3, RES, RES, 3, generator=torch.Generator().manual_seed(6))
    beta = 0.5
    with torch.inference_mode(False):
        latents = encode_latents(zimage.model, zimage.vae, images)
        _, _, (t_grads, r_grads) = _losses(zimage, latents, target, residuals, STEP, beta, checkpointing)
        checked = 0
        for where, grad in (("target", t_grads[KEY]), ("residual", r_grads[KEY])):
            flat = grad.reshape(-1)
            for coordinate in flat.abs().topk(2).indices.tolist():
                numeric = _finite_difference(zimage, latents, target, residuals, where, coordinate, beta)
                assert float(flat[coordinate]) == pytest.approx(numeric, rel=0.03), (where, coordinate)
                checked += 1
    assert checked == 4


def _switch():
    return getattr(comfy.model_management, "in_training", None)


def test_forwards_and_the_training_switch_are_restored_after_end_cancel_and_error(zimage):
    models = zimage
    before = (module_state(models.model.model), module_state(models.clip.cond_stage_model), _switch())
    config = TokenConfig(steps=2, gradient_accumulation=1, residual_length=1)
    seen = []

    def during(step, steps, rec, excl):
        block = next(m for m in models.clip.cond_stage_model.modules() if isinstance(m, comfy.text_encoders.llama.TransformerBlock))
        seen.append((_switch(), "forward" in vars(block)))
    with torch.inference_mode():
        learn_tokens(models.model, models.clip, models.vae, random_concept(), config, RunOptions(gradient_checkpointing=True), on_step=during)
    # the host's switch is on while training where the host has one (0.33.0), and the Qwen3 blocks run the rewrite
    assert seen and all(s == (True if before[2] is not None else None) and replaced for s, replaced in seen)
    assert (module_state(models.model.model), module_state(models.clip.cond_stage_model), _switch()) == before

    def cancel(step, steps, rec, excl):
        comfy.model_management.interrupt_current_processing(True)
    try:
        with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
            learn_tokens(models.model, models.clip, models.vae, random_concept(), config, on_step=cancel)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert (module_state(models.model.model), module_state(models.clip.cond_stage_model), _switch()) == before

    def fail(step, steps, rec, excl):
        raise RuntimeError("boom")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="boom"):
        learn_tokens(models.model, models.clip, models.vae, random_concept(), config, on_step=fail)
    assert (module_state(models.model.model), module_state(models.clip.cond_stage_model), _switch()) == before


def test_residual_init_is_the_mean_of_the_captions_input_embedding_rows(zimage):
    """Z-Image's rule (an LLM's hidden states are not in its input rows' space): the mean of the caption tokens'
    rows of the input-embedding table, by the host's own tokenizer; its norm is at most the largest of those rows'
    (in the tiny model's random table the ratio to a word's typical norm says nothing about Qwen3-4B)."""
    caption = "a red ceramic mug on a wooden desk"
    clip = zimage.clip
    ids = clip.tokenizer.qwen3_4b.tokenizer(caption)["input_ids"]
    table = clip.cond_stage_model.qwen3_4b.transformer.get_input_embeddings().weight.float()
    want = table[torch.tensor(ids)].mean(dim=0)
    lengths = text.slot_lengths_for({KEY: torch.empty(1, 64)}, {KEY: torch.empty(1, 1, 64)})
    with torch.inference_mode(False), ComfyStage1Backend(zimage.model, clip, lengths, RES) as backend:
        got = backend.caption_embedding(caption)
    assert set(got) == {KEY} and len(ids) == 8
    torch.testing.assert_close(got[KEY], want, rtol=1e-6, atol=1e-7)
    assert float(got[KEY].norm()) <= float(table[torch.tensor(ids)].norm(dim=1).max())


@pytest.mark.parametrize("stored", [torch.bfloat16])
def test_reduced_precision_weights_train_as_their_float32_twin(stored):
    """As ComfyUI loads Z-Image on a GPU (its config allows bfloat16 and float32): float32 compute on bfloat16-stored
    weights (transformer and Qwen3) gives the losses and token gradients of a float32 model holding exactly the
    rounded values."""
    import tiny_models
    if not hasattr(comfy.supported_models, "ZImage"):
        pytest.skip("this ComfyUI release has no Z-Image")
    reduced = tiny_models.build("zimage", 4, unet_dtype=stored, clip_dtype=stored)
    twin = tiny_models.build("zimage", 4, rounded_like=stored, clip_dtype=torch.float32)
    unrounded = tiny_models.build("zimage", 4, clip_dtype=torch.float32)  # the check's power
    assert reduced.model.model.diffusion_model.layers[0].attention.qkv.weight.dtype == stored
    assert reduced.clip.cond_stage_model.qwen3_4b.transformer.get_input_embeddings().weight.dtype == stored
    target, residuals = _vectors(twin, seed=9)
    images = torch.rand(3, RES, RES, 3, generator=torch.Generator().manual_seed(7))
    results = []
    for models in (reduced, twin, unrounded):
        with torch.inference_mode(False):
            latents = encode_latents(twin.model, twin.vae, images)
            rec, excl, (t_grads, _) = _losses(models, latents, target, residuals, STEP, 0.5)
        results.append((rec, excl, t_grads[KEY].clone()))
    assert results[0][:2] == pytest.approx(results[1][:2], rel=1e-6)
    torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-5, atol=1e-9)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(results[2][2], results[0][2], rtol=1e-5, atol=1e-9)


def _bank(models, seed=2):
    target, residuals = _vectors(models, seed=seed, residual_rows=1)
    return PrismTokens(target, {KEY: residuals[KEY][:2]}, ["", ""], ["a", "b"], {}, LossHistory())


def test_prism_conditioning_is_the_oracles_conditioning(zimage):
    from comfyui_conceptprism.nodes.conditioning import PrismConditioning
    tokens = _bank(zimage)
    with torch.inference_mode():
        prism = PrismConditioning().encode(zimage.clip, tokens, "a photo of [V] in the snow", "[V]", "target", 0)[0]
        cond, length = oracle_cond(zimage.clip, f"a photo of {WORD} in the snow", [tokens.target[KEY]])
    assert torch.equal(prism[0][0], cond) and prism[0][0].shape[1] == length
    assert prism[0][1].get("pooled_output") is None


def test_the_learned_word_in_a_stock_clip_text_encode(zimage, embedding_root, folders):
    """Where the release's Z-Image tokenizer reads `embedding:` (0.33.0 passes the embedding folder on, 0.3.75 does
    not), the stock node draws the saved vector: its conditioning equals Prism Conditioning's on every position up
    to and including the learned row, up to float rounding (Qwen3 is causal, so those states see only the same tokens). After it the host
    re-spaces the rest of the prompt and its template (its embedding parse joins the leftover words with single
    spaces), so the two differ there; Prism Conditioning keeps the template. Where the tokenizer does not read it,
    the word is plain text."""
    import nodes as host_nodes
    from comfyui_conceptprism.nodes.conditioning import PrismConditioning
    from comfyui_conceptprism.nodes.token_files import SavePrismEmbedding
    tokens = _bank(zimage, seed=5)
    word = SavePrismEmbedding().save(tokens, "test/zimage")["result"][0]
    reads = zimage.clip.tokenizer.qwen3_4b.embedding_directory is not None
    with torch.inference_mode():
        plain = host_nodes.CLIPTextEncode().encode(zimage.clip, f"a photo of {word} in the snow")[0][0][0]
        prism = PrismConditioning().encode(zimage.clip, tokens, "a photo of [V] in the snow", "[V]", "target", 0)[0][0][0]
        literal = zimage.clip.encode_from_tokens(zimage.clip.tokenize(f"a photo of {word} in the snow"))
    if not reads:
        assert torch.equal(plain, literal)  # the word's letters, tokenized as text
        return
    prefix = [t for t, *_ in zimage.clip.tokenize("a photo of ")[KEY][0]].index(151645)  # up to "<|im_end|>"
    # equal up to float rounding: the two prompts have different lengths, so attention runs on other shapes
    torch.testing.assert_close(plain[:, :prefix + 1], prism[:, :prefix + 1], rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # the check's power: other vectors give another row
        other = PrismConditioning().encode(zimage.clip, _bank(zimage, seed=6), "a photo of [V] in the snow", "[V]", "target", 0)[0][0][0]
    assert (plain[:, prefix] - other[:, prefix]).abs().max() > 0.1
    assert plain.shape[1] != prism.shape[1] or not torch.allclose(plain, prism, rtol=1e-5, atol=1e-5)


def test_the_node_runs_the_auto_preset_and_previews_at_cfg_1(zimage, monkeypatch):
    """Optimize Prism Tokens on Z-Image with untouched widgets: preset auto runs the FLUX.1 reference values (a flow
    transformer on one large text encoder), learns the qwen3_4b rows, records no guidance (Z-Image has no guidance
    input), and previews at cfg 1 (as Z-Image Turbo samples) while preview_cfg is at its default."""
    from host_checks import widget_defaults
    from comfyui_conceptprism.nodes.optimize_tokens import OptimizePrismTokens
    # the globals the node's previews render with (other host tests load the pack again under the host's loader,
    # so the module is reached through the node, not by name)
    previews_globals = (OptimizePrismTokens.optimize.__globals__["training_previews"].__globals__["TrainingPreviews"]
                        .render_step.__globals__)
    seen_switch, render = [], previews_globals["render"]

    def recording(*args, **kwargs):
        seen_switch.append(_switch())
        return render(*args, **kwargs)
    monkeypatch.setitem(previews_globals, "render", recording)
    with torch.inference_mode():
        tokens, previews = OptimizePrismTokens().optimize(zimage.model, zimage.clip, zimage.vae, random_concept(),
                                                          **{**widget_defaults(OptimizePrismTokens), "steps": 1,
                                                             "preview_every": 1, "preview_steps": 1})
    settings = tokens.settings
    assert (settings["residual_length"], settings["beta"], settings["learning_rate"], settings["weight_decay"],
            settings["gradient_accumulation"]) == (1, 0.5, 1e-4, 1e-4, 1)
    assert settings["prediction_target"] == "flow" and "guidance" not in settings and not settings["frozen_encoders"]
    assert set(tokens.target) == {KEY} and tokens.residuals[KEY].shape == (3, 1, 64)
    assert previews.shape[0] == 1 and torch.isfinite(previews).all()
    # the preview sampled as a stock graph does: the host's training switch as before training, during the render
    assert seen_switch == [_switch() if _switch() is None else False] * len(seen_switch) and seen_switch
    from comfyui_conceptprism.nodes.preview_inputs import training_previews
    settings = training_previews("Optimize Prism Tokens", "Stage 1", zimage.clip, zimage.vae, RES, 2, None, 1, "a photo of [V]",
                                 2, "euler", "simple", 7.0, 0, None, "auto", flow_transformer=True).settings
    assert settings.cfg == 1.0 and settings.guidance is None


def test_a_learned_word_glued_to_punctuation_is_placed_in_prism_conditioning(zimage):
    """'[V].' and '[V]s' stand right before other characters: the learned rows are still used (two banks give two
    conditionings), and a learned word that cannot be placed would be an error, never a silent drop."""
    from comfyui_conceptprism.nodes.conditioning import PrismConditioning
    with torch.inference_mode():
        for prompt in ("a photo of [V].", "[V]s on a table", "a [V]-shaped lamp"):
            one = PrismConditioning().encode(zimage.clip, _bank(zimage, seed=2), prompt, "[V]", "target", 0)[0][0][0]
            two = PrismConditioning().encode(zimage.clip, _bank(zimage, seed=3), prompt, "[V]", "target", 0)[0][0][0]
            assert one.shape == two.shape and not torch.equal(one, two), prompt


def test_qwen3_loaded_for_flux2_klein_is_refused_for_a_z_image_model(zimage):
    """The same qwen_3_4b file loaded as FLUX.2 Klein's encoder (Load CLIP type flux2: another chat template and
    layer stack) is not Z-Image's text encoder: refused with the loader to use, before any work."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux as flux_text
    if not hasattr(flux_text, "KleinTokenizer"):
        pytest.skip("this ComfyUI release has no FLUX.2 Klein")
    with torch.inference_mode():
        klein = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(flux_text.KleinTokenizer, flux_text.klein_te(model_type="qwen3_4b")),
                              model_options={"qwen3_4b_model_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                                                                       "num_attention_heads": 2, "num_key_value_heads": 1}})
    with pytest.raises(ValueError, match="Qwen3-4B loaded for another model.*type lumina2"):
        describe(zimage.model, klein)
