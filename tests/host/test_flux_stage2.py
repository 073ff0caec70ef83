"""Stage 2 on a tiny real FLUX.1: the attention LoRA on row slices of the fused weights, checked against the
host's own LoRA patching of the saved file, stock LoraLoaderModelOnly, finite differences, fp8 weight storage,
and the incoming MODEL after training and Cancel."""
from __future__ import annotations

import json
import functools
import logging
import re

import pytest
import torch

from host_setup import require_host

require_host()

import comfy.lora  # noqa: E402
import comfy.model_management  # noqa: E402
import nodes as host_nodes  # noqa: E402

from host_checks import randomised_adapters, stage2_flow_steps, stage2_losses, host_outputs, module_state, random_concept  # noqa: E402
from comfyui_conceptprism.nodes.lora_files import SavePrismLoRA  # noqa: E402
from comfyui_conceptprism.nodes.lora_train import PrismLoRATrain  # noqa: E402
from comfyui_conceptprism.prism_core.training.config import LoraConfig  # noqa: E402
from comfyui_conceptprism.prism_core.formats.lora_file import LoraWeights, read_lora  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.host import lora_layers, text  # noqa: E402
from comfyui_conceptprism.prism_core.host.family import describe  # noqa: E402
from comfyui_conceptprism.prism_core.host.lora_targets import stage2_targets  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage2 import train_concept_lora  # noqa: E402
from comfyui_conceptprism.prism_core.host.stock_nodes import apply_lora  # noqa: E402

GRID = 2 ** 24
HIDDEN = 64  # the tiny FLUX's hidden size (tiny_models)
# The test's own list of what is adapted, in the host's module names: double blocks' fused qkv (rows q, k, v of
# both streams) and out projections, single blocks' linear1 (its first 3 * hidden rows only: q, k, v).
ADAPTED_WEIGHT = re.compile(r"^diffusion_model\.(double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)|single_blocks\.\d+\.linear1)\.weight$")


def _tokens(models, n=3, residual_length=1, seed=7):
    g = torch.Generator().manual_seed(seed)
    widths = text.encoder_widths(models.clip)
    return PrismTokens({k: torch.randn(1, w, generator=g) * 0.05 for k, w in widths.items()},
                       {k: torch.randn(n, residual_length, w, generator=g) * 0.05 for k, w in widths.items()},
                       [""] * n, [f"{i}.png" for i in range(n)], {"beta": 0.5}, LossHistory([1.0], [0.1]))




STEPS = stage2_flow_steps()  # the micro-steps stage2_losses runs
_stage2_losses = functools.partial(stage2_losses, guidance=3.5)  # the run's guidance




@pytest.mark.parametrize("family", ["flux", "flux-schnell"])
def test_loss_equals_the_hosts_patching_of_the_saved_file_and_only_attention_is_adapted(family, tiny, embedding_root):
    import safetensors.torch
    models = tiny(family)
    tokens, concept = _tokens(models), random_concept()
    adapters = randomised_adapters(models.model)
    names = {k: stage2_targets(models.model)[k].file_name for k in list(adapters)}
    weights = LoraWeights(lora_layers.adapter_tensors(adapters, names), {})

    # Only the attention projections: the file's names map (host key map) onto exactly the test's list, and
    # linear1 is adapted on its q, k, v rows only.
    key_map = comfy.lora.model_lora_keys_unet(models.model.model, {})
    targets = [key_map[name] for name in {key.rsplit(".", 2)[0] for key in weights}]
    expected = {k for k in models.model.model.state_dict() if ADAPTED_WEIGHT.match(k)}
    assert {t[0] if isinstance(t, tuple) else t for t in targets} == expected
    linear1_rows = sorted(t[1][1:] for t in targets if isinstance(t, tuple) and ".linear1." in t[0])
    assert linear1_rows == [(0, HIDDEN), (HIDDEN, HIDDEN), (2 * HIDDEN, HIDDEN)]
    assert len(weights) == 3 * (8 * 1 + 3 * 1)  # 8 adapters per double block, 3 per single block

    losses, params = _stage2_losses(models.model, models, adapters, tokens, concept)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in models.model.model.parameters())

    patched = apply_lora(models.model, weights)  # the host's LoRA loader on the file's tensors
    for i in (1, 2):
        safetensors.torch.save_file({k: v.contiguous() for k, v in tokens.target.items()}, embedding_root / f"f2_t_{family}.safetensors")
        safetensors.torch.save_file({k: v[i].contiguous() for k, v in tokens.residuals.items()}, embedding_root / f"f2_r{i}_{family}.safetensors")
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        z = models.model.model.process_latent_in(models.vae.encode(concept.images.clone())).float()
        sampling = patched.get_model_object("model_sampling")
        for k, step in enumerate(STEPS):
            eps = torch.randn((1, *z.shape[1:]), generator=torch.Generator().manual_seed(step.noise_seed))
            cond, pooled = models.clip.encode_from_tokens(models.clip.tokenize(
                f"embedding:f2_t_{family} with embedding:f2_r{step.image}_{family}"), return_pooled=True)
            sigma = torch.tensor([(step.timesteps[0] + 1) / GRID])
            x0 = z[step.image:step.image + 1]
            x_t = sampling.noise_scaling(sigma, eps, x0)
            x0_hat = patched.model.apply_model(x_t, sigma, c_crossattn=cond, y=pooled, guidance=torch.tensor([3.5])).float()
            expected_loss = (((x_t - x0_hat) / sigma - (eps - x0)) ** 2).mean()
            assert losses[k] == pytest.approx(float(expected_loss), rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("checkpointing", [False, True])
def test_adapter_gradients_equal_finite_differences(checkpointing, tiny):
    models = tiny("flux")
    tokens, concept = _tokens(models), random_concept()
    adapters = randomised_adapters(models.model, seed=4)
    _, params = _stage2_losses(models.model, models, adapters, tokens, concept, checkpointing)
    # A slice of linear1, a slice of the text stream's fused qkv, a whole projection. (q and k gradients are
    # ~1e-7 in this tiny model, whose attention is nearly uniform: below what a float32 difference resolves.)
    picks = {"single_transformer_blocks.0.attn.to_v": "lora_down", "transformer_blocks.0.attn.add_v_proj": "lora_down",
             "transformer_blocks.0.attn.to_out.0": "lora_up"}
    # taken before the finite-difference runs, which accumulate into .grad
    grads = {key: getattr(adapters[key], which).weight.grad.clone().reshape(-1) for key, which in picks.items()}
    for key, which in picks.items():
        weight = getattr(adapters[key], which).weight
        grad = grads[key]
        coordinate = int(grad.abs().argmax())
        values = []
        for sign in (1, -1):
            shifted = {k: a for k, a in adapters.items()}
            with torch.no_grad():
                weight.view(-1)[coordinate] += sign * 1e-2
            values.append(sum(_stage2_losses(models.model, models, shifted, tokens, concept)[0]) / len(STEPS))
            with torch.no_grad():
                weight.view(-1)[coordinate] -= sign * 1e-2
        numeric = (values[0] - values[1]) / 2e-2
        assert float(grad[coordinate]) == pytest.approx(numeric, rel=0.03), key


def test_node_output_saved_file_loraloader_strength_zero_and_untouched_model(tiny, lora_dir, caplog):
    models = tiny("flux")
    tokens, concept = _tokens(models), random_concept()
    before = host_outputs(models.model, models.clip)
    state = module_state(models.model.model)
    widgets = PrismLoRATrain.INPUT_TYPES()
    args = {k: v[1]["default"] for section in ("required", "optional") for k, v in widgets[section].items() if "default" in v[1]}
    args.update(steps=2, gradient_accumulation=1, learning_rate=1e-2, preset="widgets")
    with torch.inference_mode():
        out_model, lora, loss, _ = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens, **args)
    assert len(loss["loss"]) == 2 and module_state(models.model.model) == state
    assert all(torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))

    name = SavePrismLoRA().save(lora, "tests/flux", "float32")["result"][0]
    header = read_lora(lora_dir / name).metadata
    assert header["conceptprism.family"] == "flux1" and header["ss_base_model_version"] == "flux1"
    assert json.loads(header["conceptprism.settings"])["guidance"] == 3.5
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        model_only = host_nodes.LoraLoaderModelOnly().load_lora_model_only(models.model, name, 1.0)[0]
        zero = host_nodes.LoraLoaderModelOnly().load_lora_model_only(models.model, name, 0.0)[0]
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage() or "NOT LOADED" in r.getMessage()]
    trained, loaded = host_outputs(out_model, models.clip, seed=11), host_outputs(model_only, models.clip, seed=11)
    base = host_outputs(models.model, models.clip, seed=11)
    assert torch.equal(trained[2], loaded[2]) and not torch.equal(trained[2], base[2])
    assert torch.equal(host_outputs(zero, models.clip, seed=11)[2], base[2])


def test_auto_preset_runs_the_reference_flux_values(tiny, monkeypatch):
    import comfyui_conceptprism.nodes.lora_train as node_module
    models = tiny("flux")
    seen = []

    class Started(Exception):
        pass

    def capture(model, clip, vae, concept, tokens, config, family, options, *args, **kwargs):
        seen.append((config, options))
        raise Started
    monkeypatch.setattr(node_module, "train_concept_lora", capture)
    widgets = PrismLoRATrain.INPUT_TYPES()
    args = {k: v[1]["default"] for section in ("required", "optional") for k, v in widgets[section].items() if "default" in v[1]}
    with pytest.raises(Started):
        PrismLoRATrain().train(models.model, models.clip, models.vae, random_concept(), _tokens(models), **args)
    config, options = seen[0]
    # checkpoint_every stays as set: 0 means off, a choice (the FLUX template sets the reference's 100)
    assert (config.learning_rate, config.weight_decay, config.steps, config.checkpoint_every, config.gradient_accumulation,
            config.rank, config.alpha) == (1e-4, 1e-4, 500, 0, 1, 4, 4.0)
    assert options.guidance == 3.5
    with pytest.raises(Started):  # a value the user changed is kept; the untouched ones still get FLUX's
        PrismLoRATrain().train(models.model, models.clip, models.vae, random_concept(), _tokens(models), **{**args, "steps": 300})
    assert (seen[1][0].steps, seen[1][0].learning_rate) == (300, 1e-4)


def test_cancel_writes_nothing_checkpoints_and_resume(tiny, lora_dir, caplog):
    models = tiny("flux")
    tokens, concept = _tokens(models), random_concept()
    before = host_outputs(models.model, models.clip)
    state = module_state(models.model.model)

    def cancel(step, steps, loss):
        comfy.model_management.interrupt_current_processing(True)
    try:
        with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
            train_concept_lora(models.model, models.clip, models.vae, concept, tokens, LoraConfig(steps=3, gradient_accumulation=1),
                               family=describe(models.model, stage2=True), on_step=cancel)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert not list(lora_dir.rglob("*")) and module_state(models.model.model) == state
    assert all(torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))

    widgets = PrismLoRATrain.INPUT_TYPES()
    args = {k: v[1]["default"] for section in ("required", "optional") for k, v in widgets[section].items() if "default" in v[1]}
    args.update(steps=2, gradient_accumulation=1, learning_rate=1e-2, preset="widgets", checkpoint_every=1, checkpoint_prefix="ck/flux")
    with torch.inference_mode():
        full = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens, **args)
    checkpoint = sorted(p.name for p in (lora_dir / "ck").iterdir())[0]
    assert checkpoint.startswith("flux_step0001")
    with torch.inference_mode():
        resumed = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens,
                                         **{**args, "steps": 1, "checkpoint_every": 0, "resume_from": "ck/" + checkpoint})
    assert resumed[1].steps == 2 and resumed[2]["loss"][0] == full[2]["loss"][0]
    with caplog.at_level(logging.WARNING), torch.inference_mode():  # another guidance than the file's is reported
        PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens,
                               **{**args, "steps": 1, "checkpoint_every": 0, "resume_from": "ck/" + checkpoint, "guidance": 1.0})
    assert "guidance 1.0 (was 3.5)" in caplog.text


def test_fp8_stored_weights_train_as_their_float32_twin():
    """The 24 GB design stores FLUX in fp8 with manual casting: Stage 2 on fp8-stored weights computes what a
    float32 model holding exactly the fp8-rounded values computes (losses and adapter gradients)."""
    import tiny_models
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.fail("this torch has no float8_e4m3fn")
    fp8 = tiny_models.build("flux", 3, unet_dtype=torch.float8_e4m3fn)
    twin = tiny_models.build("flux", 3, rounded_like=torch.float8_e4m3fn)
    assert next(fp8.model.model.diffusion_model.double_blocks[0].img_attn.qkv.parameters()).dtype == torch.float8_e4m3fn
    tokens, concept = _tokens(twin), random_concept()
    results = []
    for model in (fp8.model, twin.model):  # the same text encoder and VAE (the twin's) for both
        adapters = randomised_adapters(model, seed=2)
        losses, params = _stage2_losses(model, twin, adapters, tokens, concept)
        results.append((losses, [p.grad.clone() for p in params]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)

