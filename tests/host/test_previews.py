"""Previews every N steps in both stages (issue 17), on real (tiny) ComfyUI models.

The oracle for a preview at step k is a graph of stock nodes run on the step-k result: Stage 1, the tokens
of a k-step run through Prism Conditioning; Stage 2, LoraLoader on the checkpoint the run saved at step k;
then CLIP Text Encode "" (negative), EmptyLatentImage, KSampler and VAEDecode with the preview settings.
"""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from host_setup import require_host

require_host()

import comfy.model_management  # noqa: E402
import comfy.utils  # noqa: E402
import nodes as host_nodes  # noqa: E402

from graph_helpers import CAPTURED, register_test_nodes, run_graph, stage1_graph, write_images  # noqa: E402
from host_checks import RES, host_outputs, module_state, widget_defaults  # noqa: E402
from comfyui_conceptprism.nodes.conditioning import PrismConditioning  # noqa: E402
from comfyui_conceptprism.nodes.lora_files import SavePrismLoRA  # noqa: E402
from comfyui_conceptprism.nodes.lora_train import PrismLoRATrain  # noqa: E402
from comfyui_conceptprism.nodes.optimize_tokens import OptimizePrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.concept_input.concept_set import ConceptSet  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.host import text  # noqa: E402

PROMPTS = "a photo of [V]\n[V] on the beach, (sunset:1.2)"
PREVIEW = {"preview_prompts": PROMPTS, "preview_steps": 3, "preview_sampler": "euler_ancestral",
           "preview_scheduler": "karras", "preview_cfg": 5.0, "preview_seed": 11}


def _concept(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        images = torch.rand(n, RES, RES, 3, generator=g)
    captions = ("a red ball on grass", "a red ball on a table", "")[:n]
    return ConceptSet(images, tuple(f"{i}.png" for i in range(n)), captions, RES, "test")


def _tokens(models, n=3, seed=7):
    g = torch.Generator().manual_seed(seed)
    widths = text.encoder_widths(models.clip)
    return PrismTokens({k: torch.randn(1, w, generator=g) * 0.05 for k, w in widths.items()},
                       {k: torch.randn(n, 2, w, generator=g) * 0.05 for k, w in widths.items()},
                       [""] * n, [f"{i}.png" for i in range(n)], {}, LossHistory())


def _stage1_args(**overrides):
    return {**widget_defaults(OptimizePrismTokens), "residual_length": 2, "steps": 4, "gradient_accumulation": 2,
            "learning_rate": 1e-2, **overrides}


def _stage2_args(**overrides):
    return {**widget_defaults(PrismLoRATrain), "steps": 4, "gradient_accumulation": 2, "learning_rate": 1e-2, **overrides}


@pytest.fixture
def progress(monkeypatch):
    """What the host's progress hook receives (main.py installs one that forwards it to the page)."""
    calls = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: calls.append((value, total, preview, node_id)))
    return calls


def stock_render(model, clip, vae, positive, size=RES):
    """CLIP Text Encode "" -> EmptyLatentImage -> KSampler -> VAEDecode with the preview settings (stock nodes only)."""
    with torch.inference_mode():
        negative = host_nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = host_nodes.EmptyLatentImage().generate(size, size, 1)[0]
        samples = host_nodes.KSampler().sample(model, PREVIEW["preview_seed"], PREVIEW["preview_steps"], PREVIEW["preview_cfg"],
                                               PREVIEW["preview_sampler"], PREVIEW["preview_scheduler"], positive, negative, latent)[0]
        return host_nodes.VAEDecode().decode(vae, samples)[0]


def assert_preview_is(preview: torch.Tensor, expected: torch.Tensor, step: int):
    """The preview equals the stock render exactly except in the label at its top-left corner, which holds text."""
    assert preview.shape == expected[0].shape
    differs = (preview != expected[0]).any(dim=-1)
    rows, cols = torch.nonzero(differs, as_tuple=True)
    assert len(rows) > 20, f"no label drawn on the step-{step} preview"
    # The label "step N" is one line of small text in the top-left corner; everything else is the render.
    assert int(rows.max()) < RES // 3 and int(cols.max()) < RES * 3 // 4, (int(rows.max()), int(cols.max()))
    box = (slice(0, int(rows.max()) + 1), slice(0, int(cols.max()) + 1))
    outside = torch.ones_like(differs)
    outside[box] = False
    assert torch.equal(preview[outside], expected[0][outside])
    assert float((preview[box] - expected[0][box]).abs().max()) > 0.3  # text contrasts with the render


def storage_state(root: torch.nn.Module) -> dict:
    """module_state with each parameter's storage in place of its Parameter object: loading a LoRA-patched clone
    and then another clone makes the host put the original weight tensors back in new Parameter wrappers
    (ModelPatcher.unpatch_model -> set_attr_param), as after any stock graph that samples with Load LoRA's
    model and then with the base model; the weights themselves are the same tensors."""
    return {name: (type(m), sorted(m.__dict__.keys()), [p.data_ptr() for p in m._parameters.values() if p is not None],
                   list(getattr(m, "weight_function", [])), list(getattr(m, "bias_function", [])))
            for name, m in root.named_modules()}


def _same_tokens(a: PrismTokens, b: PrismTokens) -> bool:
    same_excl = all((x == y) or (math.isnan(x) and math.isnan(y)) for x, y in zip(a.history.excl, b.history.excl))
    return (all(torch.equal(a.target[k], b.target[k]) and torch.equal(a.residuals[k], b.residuals[k]) for k in a.target)
            and a.history.rec == b.history.rec and same_excl and len(a.history.excl) == len(b.history.excl))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_stage1_previews_equal_the_stock_graph_and_leave_training_bit_identical(family, tiny, folders, progress):
    models = tiny(family)
    before = host_outputs(models.model, models.clip)
    state = (module_state(models.model.model), module_state(models.clip.cond_stage_model))
    patches = dict(models.model.patches)
    grad_mode = torch.is_grad_enabled()

    runs = {}
    for every in (2, 0):
        torch.manual_seed(1234)
        with torch.inference_mode():
            tokens, previews = OptimizePrismTokens().optimize(models.model, models.clip, models.vae, _concept(),
                                                             **_stage1_args(preview_every=every, **PREVIEW), unique_id="6")
        runs[every] = (tokens, previews, torch.get_rng_state())
    (on, shown, rng_on), (off, placeholder, rng_off) = runs[2], runs[0]
    assert _same_tokens(on, off)  # tokens and both loss curves, bit for bit
    assert torch.equal(rng_on, rng_off)  # the global random stream is where training alone leaves it
    assert torch.is_grad_enabled() == grad_mode
    assert placeholder.shape == (1, 64, 256, 3)  # previews off: one small placeholder image
    assert shown.shape == (2 * 2, RES, RES, 3)  # steps 2 and 4, two prompts each

    # Steps N, 2N: the node showed each new preview through the host's progress preview, nothing else did.
    with_image = [(value, total, p, node) for value, total, p, node in progress if p is not None]
    assert [(value, total, node) for value, total, _, node in with_image] == [(2, 4, "6"), (2, 4, "6"), (4, 4, "6"), (4, 4, "6")]
    assert all(p[0] == "JPEG" and isinstance(p[1], Image.Image) and p[1].size == (RES, RES) for _, _, p, _ in with_image)

    # The incoming MODEL and CLIP are as they were.
    assert module_state(models.model.model) == state[0] and module_state(models.clip.cond_stage_model) == state[1]
    assert models.model.patches == patches
    assert all(torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))

    # Oracle: the tokens a k-step run outputs, through Prism Conditioning and stock sampling nodes.
    for k, rows in ((2, shown[0:2]), (4, shown[2:4])):
        with torch.inference_mode():
            tokens_k = OptimizePrismTokens().optimize(models.model, models.clip, models.vae, _concept(), **_stage1_args(steps=k))[0]
        if k == 4:
            assert _same_tokens(tokens_k, on)
        for row, prompt in zip(rows, PROMPTS.splitlines()):
            with torch.inference_mode():
                positive = PrismConditioning().encode(models.clip, tokens_k, prompt, "[V]", "target", 0)[0]
            assert_preview_is(row, stock_render(models.model, models.clip, models.vae, positive), k)


def test_stage2_previews_equal_loraloader_on_the_step_checkpoint_and_leave_training_bit_identical(tiny, folders, lora_dir, progress):
    models = tiny("sd2v")  # v-prediction
    tokens, concept = _tokens(models), _concept()
    before = host_outputs(models.model, models.clip)
    state = storage_state(models.model.model)
    weights_before = {k: v.clone() for k, v in models.model.model.state_dict().items()}

    runs = {}
    for every in (2, 0):
        torch.manual_seed(99)
        with torch.inference_mode():
            out = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens,
                                         **_stage2_args(preview_every=every, checkpoint_every=2,
                                                        checkpoint_prefix=f"ck/every{every}", **PREVIEW))
        runs[every] = (out, torch.get_rng_state())
    (on, rng_on), (off, rng_off) = runs[2], runs[0]
    assert set(on[1]) == set(off[1]) and all(torch.equal(on[1][k], off[1][k]) for k in on[1])  # adapters, bit for bit
    assert on[2]["loss"] == off[2]["loss"] and torch.equal(rng_on, rng_off)
    previews = on[3]
    assert previews.shape == (2 * 2, RES, RES, 3) and off[3].shape == (1, 64, 256, 3)
    assert [v for v, _, p, _ in progress if p is not None] == [2, 2, 4, 4]
    assert storage_state(models.model.model) == state and not models.model.patches
    assert all(torch.equal(v, weights_before[k]) for k, v in models.model.model.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))

    # Oracle: LoraLoader on the step-2 checkpoint this run saved, and on the final LoRA saved by Save Prism LoRA.
    (checkpoint,) = [p.name for p in (lora_dir / "ck").iterdir() if p.name.startswith("every2_step0002")]
    final = SavePrismLoRA().save(on[1], "final/concept", "float32")["result"][0]
    for k, name, rows in ((2, f"ck/{checkpoint}", previews[0:2]), (4, final, previews[2:4])):
        with torch.inference_mode():
            lora_model, lora_clip = host_nodes.LoraLoader().load_lora(models.model, models.clip, name, 1.0, 1.0)
        for row, prompt in zip(rows, PROMPTS.splitlines()):
            with torch.inference_mode():
                positive = PrismConditioning().encode(lora_clip, tokens, prompt, "[V]", "target", 0)[0]
            assert_preview_is(row, stock_render(lora_model, lora_clip, models.vae, positive), k)
    # The previews show training: the step-2 and step-4 LoRAs draw differently.
    assert not torch.equal(previews[0][RES // 2:], previews[2][RES // 2:])


@pytest.mark.parametrize("stage", [1, 2])
def test_cancel_during_a_preview_stops_within_it_and_writes_nothing(stage, tiny, folders, lora_dir, monkeypatch):
    models = tiny("sd15")
    before = host_outputs(models.model, models.clip)
    state = storage_state(models.model.model)
    rendered = []
    original = host_nodes.common_ksampler

    def cancelled_sampler(*args, **kwargs):  # the user presses Cancel while the first preview image samples
        rendered.append(1)
        comfy.model_management.interrupt_current_processing(True)
        return original(*args, **kwargs)
    monkeypatch.setattr(host_nodes, "common_ksampler", cancelled_sampler)
    try:
        with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
            if stage == 1:
                OptimizePrismTokens().optimize(models.model, models.clip, models.vae, _concept(), **_stage1_args(preview_every=2, **PREVIEW))
            else:
                PrismLoRATrain().train(models.model, models.clip, models.vae, _concept(), _tokens(models),
                                       **_stage2_args(preview_every=2, checkpoint_every=2, checkpoint_prefix="ck/run", **PREVIEW))
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert rendered == [1]  # the second prompt of that preview never started
    assert not list(lora_dir.rglob("*"))  # no checkpoint of the preview's step, nothing else
    assert not models.model.patches and not models.model.weight_wrapper_patches
    assert all(torch.equal(a, b) for a, b in zip(before, host_outputs(models.model, models.clip)))
    assert storage_state(models.model.model) == state  # once the host has loaded it again (host_outputs samples with it)


def test_bad_preview_prompts_are_refused_before_training(tiny, folders, monkeypatch):
    import comfyui_conceptprism.nodes.optimize_tokens as node_module
    models = tiny("sd15")
    started = []
    monkeypatch.setattr(node_module, "learn_tokens", lambda *a, **k: started.append(1))
    with pytest.raises(ValueError, match=r"Optimize Prism Tokens: preview_prompts line 2 'a dog' has no \[V\]"):
        OptimizePrismTokens().optimize(models.model, models.clip, models.vae, _concept(),
                                       **_stage1_args(preview_every=1, preview_prompts="a photo of [V]\na dog"))
    with pytest.raises(ValueError, match="preview_prompts is empty"):
        PrismLoRATrain().train(models.model, models.clip, models.vae, _concept(), _tokens(models),
                               **_stage2_args(preview_every=1, preview_prompts=" \n"))
    assert not started


def test_previews_output_in_the_executor_and_old_graphs_without_the_inputs(tiny, tmp_path, folders):
    register_test_nodes(tiny)
    folder = write_images(tmp_path / "concept", 3)
    graph = stage1_graph(folder, steps=3)  # a graph saved before previews existed: no preview inputs
    graph["9"] = {"class_type": "PrismTestCapture", "inputs": {"image": ["3", 1]}}
    CAPTURED.clear()
    executor, server = run_graph(graph)
    assert executor.success, server.messages
    assert sorted(tuple(t.shape) for t in CAPTURED) == [(1, 4, 8, 8), (1, 64, 256, 3)]  # the sample, the placeholder

    graph["3"]["inputs"].update(preview_every=1, preview_prompts="a photo of [V]", preview_steps=2)
    CAPTURED.clear()
    executor, server = run_graph(graph)
    assert executor.success, server.messages
    assert sorted(tuple(t.shape) for t in CAPTURED) == [(1, 4, 8, 8), (3, 64, 64, 3)]  # steps 1, 2 and 3


def test_previews_with_gradient_checkpointing_and_after_resume(tiny, folders, lora_dir, progress):
    """Checkpointed blocks (patched on the shared modules while training) draw the same previews; a resumed run
    previews at absolute steps."""
    models = tiny("sdxl")
    tokens, concept = _tokens(models), _concept()
    outs = []
    for checkpointing in (False, True):
        with torch.inference_mode():
            outs.append(PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens,
                                               **_stage2_args(steps=2, preview_every=1, gradient_checkpointing=checkpointing,
                                                              checkpoint_every=1, checkpoint_prefix=f"ck/gc{int(checkpointing)}",
                                                              **PREVIEW)))
    assert outs[0][3].shape == (2 * 2, RES, RES, 3) and torch.equal(outs[0][3], outs[1][3])
    (first,) = [p.name for p in (lora_dir / "ck").iterdir() if p.name.startswith("gc0_step0001")]
    progress.clear()
    with torch.inference_mode():
        resumed = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens,
                                         **_stage2_args(steps=3, preview_every=2, resume_from=f"ck/{first}", **PREVIEW))
    assert resumed[1].steps == 4 and resumed[3].shape == (2 * 2, RES, RES, 3)  # steps 2 and 4 of 1 + 3
    assert [(v, total) for v, total, p, _ in progress if p is not None] == [(2, 4), (2, 4), (4, 4), (4, 4)]
