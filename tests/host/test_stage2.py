"""Stage 2 (the attention LoRA) on real (tiny) ComfyUI models: what users rely on."""
from __future__ import annotations

import json
import logging
import re

import pytest
import safetensors
import safetensors.torch
import torch

from host_setup import require_host

require_host()

import comfy.lora  # noqa: E402
import comfy.model_management  # noqa: E402
import nodes as host_nodes  # noqa: E402

from conftest import FAMILIES  # noqa: E402
from graph_helpers import CAPTURED, register_test_nodes, run_graph, stage1_graph, write_images  # noqa: E402
from host_checks import RES, host_outputs, module_state, oracle_cond, oracle_eps, oracle_native, random_concept, stage2_run  # noqa: E402
from comfyui_conceptprism.nodes.lora_files import SavePrismLoRA  # noqa: E402
from comfyui_conceptprism.nodes.lora_train import PrismLoRATrain  # noqa: E402
from comfyui_conceptprism.nodes.loss_graph import PrismLossGraph  # noqa: E402
from comfyui_conceptprism.prism_core.training.config import LoraConfig  # noqa: E402
from comfyui_conceptprism.prism_core.formats.lora_file import LoraWeights, read_lora, target_from_summary  # noqa: E402
from comfyui_conceptprism.prism_core.training.stage2 import step_losses  # noqa: E402
from comfyui_conceptprism.prism_core.training.schedule import MicroStep  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.host import lora_layers, lora_targets, text  # noqa: E402
from comfyui_conceptprism.prism_core.host.family import describe  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals.lora_adapters import trainable_parameters  # noqa: E402
from comfyui_conceptprism.prism_core.host.lora_targets import stage2_targets  # noqa: E402
from comfyui_conceptprism.prism_core.host.diffusion import encode_latents  # noqa: E402
from comfyui_conceptprism.prism_core.host.diffusion import training_conditionings  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage2 import train_concept_lora  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage2_backend import ComfyStage2Backend  # noqa: E402
from comfyui_conceptprism.prism_core.host.stock_nodes import apply_lora  # noqa: E402

# The oracle's own definition of the layers the paper adapts (state-dict names, host layout).
ATTENTION_WEIGHT = re.compile(r"^diffusion_model\..*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def _tokens(models, n=3, residual_length=2, seed=7):
    g = torch.Generator().manual_seed(seed)
    widths = text.encoder_widths(models.clip)
    return PrismTokens({k: torch.randn(1, w, generator=g) * 0.05 for k, w in widths.items()},
                       {k: torch.randn(n, residual_length, w, generator=g) * 0.05 for k, w in widths.items()},
                       [""] * n, [f"{i}.png" for i in range(n)], {"beta": 0.05}, LossHistory([1.0, 0.9], [0.1, 0.05]))


def _node_args(**overrides):
    widgets = PrismLoRATrain.INPUT_TYPES()
    args = {k: v[1]["default"] for section in ("required", "optional") for k, v in widgets[section].items()
            if "default" in v[1]}
    return {**args, "steps": 2, "gradient_accumulation": 2, **overrides}


def _randomised_adapters(models, seed=1, scale=0.05, alpha=4.0):
    """Host LoRA adapters (rank 4) with a non-zero update (fresh ones start at zero, which would hide mistakes)."""
    adapters = lora_layers.trainable_adapters(stage2_targets(models.model), rank=4, alpha=alpha, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.lora_down.weight.copy_(torch.randn(adapter.lora_down.weight.shape, generator=g) * scale)
    return adapters


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_layers_and_training_prompts_equal_host_oracle(family, tiny, embedding_root):
    """Eq. (2) with the LoRA on, image i with "<target> with <residual i>", equals an oracle built from
    embedding files, CLIPTextEncode's encoder, a host 'diff' weight patch and apply_model; only the
    attention projections carry adapters and only the adapters get gradients."""
    models = tiny(family)
    tokens, concept = _tokens(models), random_concept()
    sd_keys = [k for k in models.model.model.state_dict() if ATTENTION_WEIGHT.match(k)]
    adapters = _randomised_adapters(models, alpha=2.0)  # alpha != rank, so a wrong scale cannot hide
    assert sorted(f"{name}.weight" for name in adapters) == sorted(sd_keys) and len(sd_keys) % 8 == 0

    steps = [MicroStep(1, (), (500,), 77), MicroStep(2, (), (100,), 78), MicroStep(1, (), (900,), 79)]
    with torch.inference_mode(False):
        conds = training_conditionings(models.model, models.clip, tokens, RES)
        latents = encode_latents(models.model, models.vae, concept.images.clone())
        with ComfyStage2Backend(models.model, adapters, *stage2_run(models.model), max_batch=2) as backend:
            params = trainable_parameters(adapters)
            losses = step_losses(backend, latents, conds, steps, params)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in models.model.model.parameters())

    for i in (1, 2):
        safetensors.torch.save_file({k: v.contiguous() for k, v in tokens.target.items()}, embedding_root / f"s2_t_{family}.safetensors")
        safetensors.torch.save_file({k: v[i].contiguous() for k, v in tokens.residuals.items()}, embedding_root / f"s2_r{i}_{family}.safetensors")
    patched = models.model.clone()
    deltas = {}
    for name, adapter in adapters.items():
        up, down = adapter.lora_up.weight.detach(), adapter.lora_down.weight.detach()
        deltas[f"{name}.weight"] = (up @ down) * (2.0 / 4)
    patched.add_patches({k: (v,) for k, v in deltas.items()}, 1.0)
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        z = models.model.model.process_latent_in(models.vae.encode(concept.images.clone())).float()
        sigmas = models.model.get_model_object("model_sampling").sigmas
        for k, step in enumerate(steps):
            eps = torch.randn((1, *z.shape[1:]), generator=torch.Generator().manual_seed(step.noise_seed))
            cond, extra = oracle_cond(models, f"embedding:s2_t_{family} with embedding:s2_r{step.image}_{family}", patched)
            sigma = sigmas[torch.tensor(step.timesteps)].float()
            prediction, target = oracle_native(patched, z[step.image:step.image + 1], sigma, eps, cond, extra)
            expected = ((prediction - target) ** 2).mean()
            assert losses[k] == pytest.approx(float(expected), rel=1e-4, abs=1e-6), (family, k)

    # The same adapters written as a LoRA file's tensors and patched in by the host give the same model.
    names = lora_targets.kohya_names(models.model, describe(models.model, stage2=True).lora, list(adapters))
    from_file = apply_lora(models.model, LoraWeights(lora_layers.adapter_tensors(adapters, names), {}))
    comfy.model_management.load_models_gpu([from_file])
    with torch.no_grad():
        eps = torch.randn((1, *z.shape[1:]), generator=torch.Generator().manual_seed(3))
        got = oracle_eps(from_file, z[:1], sigmas[400:401].float(), eps, cond, extra)
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        want = oracle_eps(patched, z[:1], sigmas[400:401].float(), eps, cond, extra)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_node_output_saved_file_loraloader_and_untouched_incoming_model(family, tiny, lora_dir, caplog):
    models = tiny(family)
    tokens, concept = _tokens(models), random_concept()
    before = host_outputs(models.model, models.clip)
    state = module_state(models.model.model)
    weights_before = {k: v.clone() for k, v in models.model.model.state_dict().items()}
    patches_before = dict(models.model.patches)

    with torch.inference_mode():
        out_model, lora, loss, _ = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens,
                                                       **_node_args(learning_rate=1e-2))
    assert len(loss["loss"]) == 2 and all(x == x for x in loss["loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))
    assert module_state(models.model.model) == state and models.model.patches == patches_before
    assert all(torch.equal(v, weights_before[k]) for k, v in models.model.model.state_dict().items())
    assert all(p.grad is None for p in models.model.model.parameters())

    # Every tensor maps through the host's own key map onto an attention projection, and nothing else is adapted.
    key_map = comfy.lora.model_lora_keys_unet(models.model.model, {})
    layers = {key.rsplit(".", 2)[0] for key in lora}
    assert all(ATTENTION_WEIGHT.match(key_map[name]) for name in layers)
    expected = {k for k in models.model.model.state_dict() if ATTENTION_WEIGHT.match(k)}
    assert {key_map[name] for name in layers} == expected and len(lora) == 3 * len(expected)
    assert set(out_model.patches) == expected
    style = "lora_unet_input_blocks_" if family == "sdxl" else "lora_unet_down_blocks_"  # kohya's naming per family
    assert any(name.startswith(style) for name in layers)

    name = SavePrismLoRA().save(lora, "tests/concept", "float32")["result"][0]
    assert name == "tests/concept_00001_.safetensors" and (lora_dir / name).is_file()
    assert SavePrismLoRA().save(lora, "tests/concept", "float32")["result"][0] == "tests/concept_00002_.safetensors"
    with safetensors.safe_open(str(lora_dir / name), framework="pt") as handle:
        header = handle.metadata()
    assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "4.0" and header["conceptprism.steps"] == "2"
    assert header["conceptprism.family"] == {"sd15": "sd15", "sd2v": "sd2-v", "sdxl": "sdxl"}[family]
    recovered = target_from_summary(json.loads(header["conceptprism.tokens"]))
    assert all(torch.equal(recovered[k], tokens.target[k]) for k in tokens.target)

    with caplog.at_level(logging.WARNING), torch.inference_mode():
        loaded_model, loaded_clip = host_nodes.LoraLoader().load_lora(models.model, models.clip, name, 1.0, 1.0)
        model_only = host_nodes.LoraLoaderModelOnly().load_lora_model_only(models.model, name, 1.0)[0]
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage() or "NOT LOADED" in r.getMessage()]
    assert set(loaded_model.patches) == expected

    # The saved file reproduces the node's MODEL exactly, under a seed other than the training one.
    trained = host_outputs(out_model, models.clip, seed=11)
    for other in (host_outputs(loaded_model, loaded_clip, seed=11), host_outputs(model_only, models.clip, seed=11)):
        assert all(torch.equal(a, b) for a, b in zip(trained, other))
    base = host_outputs(models.model, models.clip, seed=11)
    assert not torch.equal(trained[2], base[2])  # the LoRA does something
    with torch.inference_mode():
        zero = host_outputs(apply_lora(models.model, lora, 0.0), models.clip, seed=11)
    assert torch.equal(zero[2], base[2])  # strength 0 is the base model
    assert all(torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny):
    models = tiny("sdxl")
    tokens, concept = _tokens(models), random_concept()
    steps = [MicroStep(0, (), (300,), 5), MicroStep(2, (), (700,), 6)]
    results = []
    for checkpointing in (False, True):
        adapters = _randomised_adapters(models, seed=3)
        with torch.inference_mode(False):
            conds = training_conditionings(models.model, models.clip, tokens, RES)
            latents = encode_latents(models.model, models.vae, concept.images.clone())
            with ComfyStage2Backend(models.model, adapters, *stage2_run(models.model), max_batch=2, checkpointing=checkpointing) as backend:
                params = trainable_parameters(adapters)
                losses = step_losses(backend, latents, conds, steps, params)
        results.append((losses, [p.grad.clone() for p in params]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_steps_are_optimizer_updates_checkpoints_and_resume(tiny, lora_dir, monkeypatch):
    models = tiny("sd15")
    tokens, concept = _tokens(models), random_concept()
    calls = {"step": 0, "predict": 0}
    original_step, original_predict = torch.optim.AdamW.step, ComfyStage2Backend.predict

    def counting_step(self, *a, **k):
        calls["step"] += 1
        return original_step(self, *a, **k)

    def counting_predict(self, *a, **k):
        calls["predict"] += 1
        return original_predict(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    monkeypatch.setattr(ComfyStage2Backend, "predict", counting_predict)

    with torch.inference_mode():
        full = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens,
                                      **_node_args(steps=4, gradient_accumulation=3, max_batch=2, checkpoint_every=2,
                                                   checkpoint_prefix="ck/run", learning_rate=1e-2))
    assert calls == {"step": 4, "predict": 8}  # 4 updates, each 3 micro-steps in chunks of 2 + 1
    checkpoints = sorted(p.name for p in (lora_dir / "ck").iterdir())
    assert checkpoints == ["run_step0002_00001_.safetensors"]  # every 2 steps, the final one is the node's output
    assert not [p for p in lora_dir.rglob("*.tmp")]

    with torch.inference_mode():
        short = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens,
                                       **_node_args(steps=2, gradient_accumulation=3, max_batch=2, learning_rate=1e-2))
    checkpoint = read_lora(lora_dir / "ck" / checkpoints[0])
    assert checkpoint.steps == 2 and checkpoint.loss == short[2]["loss"] == full[2]["loss"][:2]
    assert all(torch.equal(checkpoint[k], short[1][k]) for k in short[1])  # the checkpoint is the 2-step LoRA

    with torch.inference_mode():
        resumed = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens,
                                         **_node_args(steps=2, gradient_accumulation=3, max_batch=2, learning_rate=1e-2,
                                                      resume_from="ck/" + checkpoints[0]))
    assert resumed[1].steps == 4 and len(resumed[2]["loss"]) == 4
    assert resumed[2]["loss"][:2] == full[2]["loss"][:2]
    # Same images, timesteps and noise as the uninterrupted run; only AdamW's moments restart.
    assert resumed[2]["loss"][2] == pytest.approx(full[2]["loss"][2], rel=0.05)


def test_interrupted_training_writes_nothing_and_leaves_the_model_as_it_was(tiny, lora_dir):
    models = tiny("sd2v")
    tokens, concept = _tokens(models), random_concept()
    before = host_outputs(models.model, models.clip)
    state = module_state(models.model.model)
    seen = []

    def cancel(step, steps, loss):
        seen.append(step)
        comfy.model_management.interrupt_current_processing(True)
    try:
        with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
            train_concept_lora(models.model, models.clip, models.vae, concept, tokens, LoraConfig(steps=5, gradient_accumulation=2),
                               family=describe(models.model, stage2=True), on_step=cancel)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert seen == [1]
    assert not list(lora_dir.rglob("*"))
    assert module_state(models.model.model) == state and not models.model.patches and not models.model.weight_wrapper_patches
    assert all(torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))


def test_errors_name_the_input_and_the_fix(tiny, lora_dir):
    sd15, xl = tiny("sd15"), tiny("sdxl")
    concept = random_concept()
    with pytest.raises(ValueError, match=r"SD1\.x.*SDXL"):
        train_concept_lora(xl.model, xl.clip, xl.vae, concept, _tokens(sd15), LoraConfig(steps=1), family=describe(xl.model, stage2=True))
    with pytest.raises(ValueError, match="learned on 2 images but the concept set has 3"):
        train_concept_lora(sd15.model, sd15.clip, sd15.vae, concept, _tokens(sd15, n=2), LoraConfig(steps=1),
                           family=describe(sd15.model, stage2=True))
    (lora_dir / "sub").mkdir()
    safetensors.torch.save_file({"x.lora_up.weight": torch.zeros(2, 2)}, lora_dir / "sub" / "other.safetensors")
    with pytest.raises(ValueError, match="'sub/other.safetensors' is not a ConceptPrism LoRA"):
        PrismLoRATrain().train(sd15.model, sd15.clip, sd15.vae, concept, _tokens(sd15), **_node_args(resume_from="sub/other.safetensors"))
    with pytest.raises(ValueError, match="Prism LoRA Train"):
        SavePrismLoRA().save({"x": torch.zeros(1)}, "plain", "float32")


def test_loss_graph_draws_one_panel_per_curve(tiny):
    tokens = _tokens(tiny("sd15"))
    image = PrismLossGraph().draw(tokens=tokens, lora_loss={"loss": [1.0, 0.5, 0.7, 0.2]})[0]
    assert image.shape[0] == 1 and image.shape[-1] == 3 and image.dtype == torch.float32
    only_stage2 = PrismLossGraph().draw(lora_loss={"loss": [1.0, 0.5]})[0]
    assert image.shape[1] > only_stage2.shape[1]  # three panels (rec, excl, LoRA) versus one
    with pytest.raises(ValueError, match="Nothing to plot"):
        PrismLossGraph().draw()


def test_graph_through_both_stages_runs_in_the_executor(tiny, tmp_path, lora_dir):
    register_test_nodes(tiny)
    folder = write_images(tmp_path / "concept", 3)
    (folder / "00.txt").write_text("a red square on a plain background")
    graph = stage1_graph(folder, steps=2)
    graph["9"] = {"class_type": "ConceptPrismPrismLoRATrain", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0], "tokens": ["3", 0],
        **_node_args(steps=2, gradient_accumulation=2)}}
    graph["7"]["inputs"]["model"] = ["9", 0]  # KSampler samples with the trained LoRA
    graph["10"] = {"class_type": "ConceptPrismSavePrismLoRA", "inputs": {
        "lora": ["9", 1], "filename_prefix": "graph/concept", "save_dtype": "float16"}}
    graph["11"] = {"class_type": "ConceptPrismPrismLossGraph", "inputs": {"tokens": ["3", 0], "lora_loss": ["9", 2]}}
    graph["12"] = {"class_type": "PrismTestCapture", "inputs": {"image": ["11", 0]}}
    CAPTURED.clear()
    executor, server = run_graph(graph)
    assert executor.success, server.messages
    shapes = sorted(tuple(t.shape) for t in CAPTURED)
    assert len(shapes) == 2 and (1, 4, 8, 8) in shapes and all(torch.isfinite(t).all() for t in CAPTURED)
    assert [p.name for p in (lora_dir / "graph").iterdir()] == ["concept_00001_.safetensors"]


def test_checkpoint_prefix_outside_the_loras_folder_is_refused_before_training(tiny, lora_dir, monkeypatch):
    import comfyui_conceptprism.nodes.lora_train as node_module
    models = tiny("sd15")
    started = []
    monkeypatch.setattr(node_module, "train_concept_lora", lambda *a, **k: started.append(1))
    with torch.inference_mode(), pytest.raises(ValueError, match="checkpoint_prefix '../escape' points outside"):
        PrismLoRATrain().train(models.model, models.clip, models.vae, random_concept(), _tokens(models),
                               **_node_args(checkpoint_every=1, checkpoint_prefix="../escape"))
    assert not started and not list(lora_dir.parent.glob("escape*"))
