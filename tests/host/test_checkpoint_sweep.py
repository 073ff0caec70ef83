"""Prism Checkpoint Sweep on tiny real host models: the run's checkpoints, a known answer, the cost cap, refusals."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from host_setup import require_host

require_host()

import folder_paths  # noqa: E402
import nodes as host_nodes  # noqa: E402

import tiny_models  # noqa: E402
from host_checks import RES  # noqa: E402
from comfyui_conceptprism.nodes.checkpoint_sweep import PrismCheckpointSweep  # noqa: E402
from comfyui_conceptprism.nodes.conditioning import PrismConditioning  # noqa: E402
from comfyui_conceptprism.nodes.lora_files import SavePrismLoRA  # noqa: E402
from comfyui_conceptprism.nodes.lora_train import PrismLoRATrain  # noqa: E402
from comfyui_conceptprism.prism_core.concept_input.concept_set import ConceptSet  # noqa: E402
from comfyui_conceptprism.prism_core.formats.lora_file import read_lora, save_lora  # noqa: E402
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens  # noqa: E402
from comfyui_conceptprism.prism_core.host import sweep as host_sweep  # noqa: E402
from comfyui_conceptprism.prism_core.host import text  # noqa: E402

PROMPT = "a photo of [V] on the beach"
SAMPLING = {"seed": 5, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"}


def _tokens(models, seed=7):
    g = torch.Generator().manual_seed(seed)
    widths = text.encoder_widths(models.clip)
    return PrismTokens({k: torch.randn(1, w, generator=g) * 0.05 for k, w in widths.items()},
                       {k: torch.randn(2, 2, w, generator=g) * 0.05 for k, w in widths.items()},
                       ["", ""], ["0.png", "1.png"], {"beta": 0.05}, LossHistory([1.0], [0.1]))


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """A 3-step Stage 2 run of tiny SD1.5 (the smallest UNet) with a checkpoint every step, its final LoRA saved,
    and a checkpoint of another run under the same prefix; the tiny CLIP vision and DINOv2."""
    loras = tmp_path_factory.mktemp("loras")
    saved = folder_paths.folder_names_and_paths["loras"]
    folder_paths.folder_names_and_paths["loras"] = ([str(loras)], {".safetensors"})
    models = tiny("sd15")
    tokens = _tokens(models)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        concept = ConceptSet(torch.rand(2, RES, RES, 3, generator=g), ("0.png", "1.png"), ("", ""), RES, "test")
        widgets = PrismLoRATrain.INPUT_TYPES()
        args = {k: v[1]["default"] for s in ("required", "optional") for k, v in widgets[s].items() if "default" in v[1]}
        args.update(steps=3, gradient_accumulation=1, learning_rate=5e-2, checkpoint_every=1, checkpoint_prefix="sweep/ck")
        _, lora, _, _ = PrismLoRATrain().train(models.model, models.clip, models.vae, concept, tokens, **args)
        final = SavePrismLoRA().save(lora, "sweep/final", "float32")["result"][0]
    other = read_lora(loras / "sweep" / "ck_step0002_00001_.safetensors")
    other.metadata["conceptprism.loss"] = json.dumps([0.9, 0.8])  # same tokens and steps, another run's losses
    save_lora(other, loras, "sweep/ck_step0002")
    try:
        yield {"models": models, "tokens": tokens, "final": final, "loras": loras,
               "clip_vision": tiny_models.clip_vision("clip", seed=3, projection_dim=768),
               "dino": tiny_models.clip_vision("dinov2", seed=4)}
    finally:
        folder_paths.folder_names_and_paths["loras"] = saved


def _stock_render(models, tokens, lora_name):
    """The oracle: stock nodes (Load LoRA model-only, KSampler, VAE Decode) and Prism Conditioning."""
    model = models.model if lora_name is None else host_nodes.LoraLoaderModelOnly().load_lora_model_only(models.model, lora_name, 1.0)[0]
    positive = PrismConditioning().encode(models.clip, tokens, PROMPT, "[V]", "target", 0)[0]
    negative = host_nodes.CLIPTextEncode().encode(models.clip, "")[0]
    latent = host_nodes.EmptyLatentImage().generate(RES, RES, 1)[0]
    samples = host_nodes.KSampler().sample(model, SAMPLING["seed"], SAMPLING["steps"], SAMPLING["cfg"], SAMPLING["sampler_name"],
                                           SAMPLING["scheduler"], positive, negative, latent, 1.0)[0]
    return host_nodes.VAEDecode().decode(models.vae, samples)[0]


def _sweep(run, references, **overrides):
    models = run["models"]
    args = dict(model=models.model, clip=models.clip, vae=models.vae, tokens=run["tokens"], lora_name=run["final"],
                reference_images=references, score_clip=models.clip, clip_vision=run["clip_vision"], dino=run["dino"],
                class_noun="dog", checkpoint_prefix="sweep/ck", prompt_set="custom", prompt_count=1, custom_prompts=PROMPT,
                seeds=1, width=RES, height=RES, negative="", clip_t_tolerance=1.0, max_sampler_steps=8, **SAMPLING)
    args.update(overrides)
    with torch.inference_mode():
        return PrismCheckpointSweep().sweep(**args)


def test_the_sweep_finds_the_run_and_picks_the_known_step(run, caplog):
    models, tokens = run["models"], run["tokens"]
    step2 = "sweep/ck_step0002_00001_.safetensors"
    with torch.inference_mode():
        reference = _stock_render(models, tokens, step2)
    # Known answer: the reference is step 2's own render, so step 2's DINO (and CLIP-I) is exactly 1 and
    # every other step's is lower; with every step within the CLIP-T tolerance, the rule must pick step 2.
    with caplog.at_level(logging.INFO, logger="ConceptPrism"):
        model, lora_name, step, plot, table, images, report = _sweep(run, reference)
    assert "4 steps (step 0 + 3 trained) x 1 prompts x 1 seeds x 2 sampler steps = 8 sampler steps" in caplog.text
    assert (lora_name, step) == (step2, 2)
    lines = report.splitlines()
    rows = {int(line.split("\t")[0]): line.split("\t") for line in lines[2:6]}
    assert [rows[s][4] for s in range(4)] == ["-", "sweep/ck_step0001_00001_.safetensors", step2, run["final"]]
    assert "ck_step0002_00002_" not in report  # the other run's checkpoint is not a candidate
    dino = {s: float(rows[s][3]) for s in rows}
    assert dino[2] == pytest.approx(1.0, abs=1e-4) and all(dino[s] < 0.9999 for s in dino if s != 2), dino
    assert lines[-1].startswith("chosen: step 2")

    # The renders are the stock graph's, step by step; the MODEL output is Load LoRA's of the chosen file.
    assert images.shape == (4, RES, RES, 3)
    with torch.inference_mode():
        assert torch.equal(images[2:3], reference) and torch.equal(images[0:1], _stock_render(models, tokens, None))
        positive = PrismConditioning().encode(models.clip, tokens, PROMPT, "[V]", "target", 0)[0]
        latent = host_nodes.EmptyLatentImage().generate(RES, RES, 1)[0]
        ours = host_nodes.KSampler().sample(model, 1, 1, 1.0, "euler", "normal", positive, positive, latent, 1.0)[0]["samples"]
        loaded = host_nodes.LoraLoaderModelOnly().load_lora_model_only(models.model, step2, 1.0)[0]
        stock = host_nodes.KSampler().sample(loaded, 1, 1, 1.0, "euler", "normal", positive, positive, latent, 1.0)[0]["samples"]
    assert torch.equal(ours, stock)
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and table.shape[0] == 1


def test_the_cap_refuses_before_rendering(run, monkeypatch):
    def no_render(*args, **kwargs):
        raise AssertionError("rendered although the cap was exceeded")
    monkeypatch.setattr(host_sweep, "render", no_render)
    references = torch.rand(1, RES, RES, 3)
    with pytest.raises(ValueError, match="= 8 sampler steps .* more than max_sampler_steps 7"):
        _sweep(run, references, max_sampler_steps=7)
    with pytest.raises(ValueError, match="= 16 sampler steps"):
        _sweep(run, references, seeds=2)  # 4 x 1 x 2 x 2 against the cap of 8
    with pytest.raises(ValueError, match="class_noun is empty"):
        _sweep(run, references, class_noun="")  # checked before rendering, too


def test_refusals_name_the_input_and_the_fix(run, tiny):
    references = torch.rand(1, RES, RES, 3)
    lonely = read_lora(run["loras"] / run["final"])
    lonely.metadata["conceptprism.loss"] = json.dumps([0.7, 0.6, 0.5])  # a run that wrote no checkpoints
    name = save_lora(lonely, run["loras"], "sweep/lonely").relative_to(run["loras"]).as_posix()
    with pytest.raises(ValueError, match="No checkpoints of this run .* Set checkpoint_every on Prism LoRA Train"):
        _sweep(run, references, lora_name=name)
    with pytest.raises(ValueError, match="tokens: these are not the tokens"):
        _sweep(run, references, tokens=_tokens(run["models"], seed=8))
    with pytest.raises(ValueError, match="dino: this is a clip vision model"):
        _sweep(run, references, dino=run["clip_vision"])
