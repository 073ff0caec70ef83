"""Stage 2 on a tiny real Z-Image: the attention LoRA on row slices of the fused qkv weights (and the whole out
projections) of every block, checked against the host's own LoRA patching of the saved file, stock
LoraLoaderModelOnly (every key maps), finite differences, fp8 weight storage, and the incoming MODEL and CLIP after
training and Cancel."""
from __future__ import annotations

import logging
import re

import pytest
import torch

from host_setup import require_host

require_host()

import comfy.lora  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.supported_models  # noqa: E402
import nodes as host_nodes  # noqa: E402

from host_checks import randomised_adapters, stage2_flow_steps, stage2_losses, WORD, host_outputs, module_state, random_concept, widget_defaults  # noqa: E402
from host_checks import llm_cond as oracle_cond  # noqa: E402
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
KEY = "qwen3_4b"
DIM = 256  # the tiny Z-Image's width (tiny_models.zimage_shaped)
# The test's own list of what is adapted, in the host's module names: every block's fused qkv (its q, k, v rows)
# and out projection, in the main blocks and both refiners (1 each in the tiny model); nothing else.
ADAPTED_WEIGHT = re.compile(r"^diffusion_model\.(layers|context_refiner|noise_refiner)\.\d+\.attention\.(qkv|out)\.weight$")
STEPS = stage2_flow_steps()  # the micro-steps stage2_losses runs


def _tokens(models, n=3, seed=7):
    g = torch.Generator().manual_seed(seed)
    width = text.encoder_widths(models.clip)[KEY]
    return PrismTokens({KEY: torch.randn(1, width, generator=g) * 0.05}, {KEY: torch.randn(n, 1, width, generator=g) * 0.05},
                       [""] * n, [f"{i}.png" for i in range(n)], {"beta": 0.5}, LossHistory([1.0], [0.1]))






def test_loss_equals_the_hosts_patching_of_the_saved_file_and_only_attention_is_adapted(zimage):
    models = zimage
    tokens, concept = _tokens(models), random_concept()
    adapters = randomised_adapters(models.model)
    names = {k: stage2_targets(models.model)[k].file_name for k in adapters}
    weights = LoraWeights(lora_layers.adapter_tensors(adapters, names), {})

    # Only the attention projections: the file's names map (the host's key map) onto exactly the test's list, and
    # each qkv weight gets three slices of DIM rows.
    key_map = comfy.lora.model_lora_keys_unet(models.model.model, {})
    targets = [key_map[name] for name in weights.layer_names()]
    expected = {k for k in models.model.model.state_dict() if ADAPTED_WEIGHT.match(k)}
    assert {t[0] if isinstance(t, tuple) else t for t in targets} == expected and len(expected) == 8
    qkv_rows = sorted(t[1][1:] for t in targets if isinstance(t, tuple) and t[0].startswith("diffusion_model.layers.0."))
    assert qkv_rows == [(0, DIM), (DIM, DIM), (2 * DIM, DIM)]
    assert len(weights) == 3 * 4 * 4  # (up, down, alpha) x (q, k, v, out) x 4 blocks

    losses, params = stage2_losses(models.model, models, adapters, tokens, concept)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in models.model.model.parameters())

    patched = apply_lora(models.model, weights)  # the host's LoRA loader on the file's tensors
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        z = models.model.model.process_latent_in(models.vae.encode(concept.images.clone())).float()
        sampling = patched.get_model_object("model_sampling")
        for k, step in enumerate(STEPS):
            eps = torch.randn((1, *z.shape[1:]), generator=torch.Generator().manual_seed(step.noise_seed))
            cond, length = oracle_cond(models.clip, f"{WORD} with {WORD}", [tokens.target[KEY], tokens.residuals[KEY][step.image]])
            sigma = torch.tensor([(step.timesteps[0] + 1) / GRID])
            x0 = z[step.image:step.image + 1]
            x_t = sampling.noise_scaling(sigma, eps, x0)
            x0_hat = patched.model.apply_model(x_t, sigma, c_crossattn=cond, num_tokens=length).float()
            expected_loss = (((x_t - x0_hat) / sigma - (eps - x0)) ** 2).mean()
            assert losses[k] == pytest.approx(float(expected_loss), rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("checkpointing", [False, True])
def test_adapter_gradients_equal_finite_differences(checkpointing, zimage):
    models = zimage
    tokens, concept = _tokens(models), random_concept()
    adapters = randomised_adapters(models.model, seed=4)
    _, params = stage2_losses(models.model, models, adapters, tokens, concept, checkpointing)
    # a v slice of a main block's qkv, a refiner's out projection, a q slice
    picks = {"layers.1.attention.to_v": "lora_down", "context_refiner.0.attention.to_out.0": "lora_up",
             "layers.0.attention.to_q": "lora_up"}
    grads = {key: getattr(adapters[key], which).weight.grad.clone().reshape(-1) for key, which in picks.items()}
    for key, which in picks.items():
        weight = getattr(adapters[key], which).weight
        grad = grads[key]
        coordinate = int(grad.abs().argmax())
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                weight.view(-1)[coordinate] += sign * 1e-2
            values.append(sum(stage2_losses(models.model, models, adapters, tokens, concept)[0]) / len(STEPS))
            with torch.no_grad():
                weight.view(-1)[coordinate] -= sign * 1e-2
        numeric = (values[0] - values[1]) / 2e-2
        assert float(grad[coordinate]) == pytest.approx(numeric, rel=0.03), key


def test_node_output_saved_file_loraloader_strength_zero_and_untouched_model_and_clip(zimage, lora_dir, caplog):
    models = zimage
    tokens, concept = _tokens(models), random_concept()
    before = host_outputs(models.model, models.clip)
    state, clip_state = module_state(models.model.model), module_state(models.clip.cond_stage_model)
    args = {**widget_defaults(PrismLoRATrain), "steps": 2, "gradient_accumulation": 1, "learning_rate": 1e-2, "preset": "widgets"}
    with torch.inference_mode():
        out_model, lora, loss, _ = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens, **args)
    assert len(loss["loss"]) == 2
    assert module_state(models.model.model) == state and module_state(models.clip.cond_stage_model) == clip_state
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))

    name = SavePrismLoRA().save(lora, "tests/zimage", "float32")["result"][0]
    header = read_lora(lora_dir / name).metadata
    assert header["conceptprism.family"] == "zimage" and header["ss_base_model_version"] == "zimage"
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        model_only = host_nodes.LoraLoaderModelOnly().load_lora_model_only(models.model, name, 1.0)[0]
        zero = host_nodes.LoraLoaderModelOnly().load_lora_model_only(models.model, name, 0.0)[0]
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage() or "NOT LOADED" in r.getMessage()]
    trained, loaded = host_outputs(out_model, models.clip, seed=11), host_outputs(model_only, models.clip, seed=11)
    base = host_outputs(models.model, models.clip, seed=11)
    assert torch.equal(trained[2], loaded[2]) and not torch.equal(trained[2], base[2])
    assert torch.equal(host_outputs(zero, models.clip, seed=11)[2], base[2])


def test_cancel_writes_nothing_and_leaves_the_model_as_it_was(zimage, lora_dir):
    models = zimage
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
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))


def test_fp8_stored_weights_train_as_their_float32_twin():
    """Z-Image in fp8 (Load Diffusion Model, weight_dtype fp8_e4m3fn, manual cast): Stage 2 on fp8-stored weights
    computes what a float32 model holding exactly the fp8-rounded values computes (losses and adapter gradients)."""
    import tiny_models
    if not hasattr(comfy.supported_models, "ZImage"):
        pytest.skip("this ComfyUI release has no Z-Image")
    fp8 = tiny_models.build("zimage", 3, unet_dtype=torch.float8_e4m3fn, clip_dtype=torch.float32)
    twin = tiny_models.build("zimage", 3, rounded_like=torch.float8_e4m3fn, clip_dtype=torch.float32)
    assert fp8.model.model.diffusion_model.layers[0].attention.qkv.weight.dtype == torch.float8_e4m3fn
    tokens, concept = _tokens(twin), random_concept()
    results = []
    for model in (fp8.model, twin.model):  # the same text encoder and VAE (the twin's) for both
        adapters = randomised_adapters(model, seed=2)
        losses, params = stage2_losses(model, twin, adapters, tokens, concept)
        results.append((losses, [p.grad.clone() for p in params]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
