"""Prism Concept Score on tiny real host models: each number equals the host's own embeddings and a hand cosine."""
from __future__ import annotations

import math

import pytest
import torch

from host_setup import require_host

require_host()

import comfy.sd  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.supported_models_base  # noqa: E402

import tiny_models  # noqa: E402
from comfyui_conceptprism.nodes.concept_score import PrismConceptScore  # noqa: E402

PROMPTS = ["a photo of [V] on the beach", "a [V] wearing a red hat", "[V] floating in an ocean of milk"]


TEXT_WIDTH = {"sd2v": 1024, "sd15": 768}  # the tiny CLIPs' projected widths (clip_h, clip_l)


@pytest.fixture(scope="module")
def vision():
    """Tiny CLIP vision towers (projection to each tiny text width) and DINOv2, seeded: (clips by family, dino)."""
    clips = {family: tiny_models.clip_vision("clip", seed=3, projection_dim=width) for family, width in TEXT_WIDTH.items()}
    return clips, tiny_models.clip_vision("dinov2", seed=4)


def _host_text_embedding(clip, text: str) -> torch.Tensor:
    """The host's own pooled text output, projected: SD2's clip_h returns it projected; an SD1-style
    clip_l returns the unprojected state, so its text_projection weight is applied here by hand."""
    tokens = clip.tokenize(text)
    if hasattr(clip.cond_stage_model, "clip_l"):
        pooled = clip.encode_from_tokens(tokens, return_pooled="unprojected")[1][0]
        weight = clip.cond_stage_model.clip_l.transformer.text_projection.weight.float()
        return torch.tensor([sum(w * p for w, p in zip(row, pooled.tolist())) for row in weight.tolist()])
    return clip.encode_from_tokens(tokens, return_pooled=True)[1][0]


def _images(n, height, width, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():  # IMAGE tensors from upstream nodes are inference tensors in a real run
        return torch.rand(n, height, width, 3, generator=g)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine by hand, in Python floats."""
    a, b = a.tolist(), b.tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _embed_one(clip_vision, image):
    return clip_vision.encode_image(image[None], crop=True)["image_embeds"][0]


@pytest.mark.parametrize("family", list(TEXT_WIDTH))
def test_each_metric_equals_the_hosts_embeddings_and_a_hand_cosine(family, tiny, vision):
    clip = tiny(family).clip
    clip_vision, dino = vision[0][family], vision[1]
    images, references = _images(3, 72, 96, 0), _images(2, 80, 64, 1)  # other sizes: the host resizes and crops
    with torch.inference_mode():
        clip_t, clip_i, dino_mean, table, per_image = PrismConceptScore().score(
            images, "\n".join(PROMPTS), "dog", "[V]", references, clip=clip, clip_vision=clip_vision, dino=dino)
        clip_refs = [_embed_one(clip_vision, r) for r in references]
        dino_refs = [_embed_one(dino, r) for r in references]
        expected = []
        for i, prompt in enumerate(PROMPTS):
            text = _host_text_embedding(clip, prompt.replace("[V]", "dog"))
            image_clip, image_dino = _embed_one(clip_vision, images[i]), _embed_one(dino, images[i])
            expected.append((_cos(text, image_clip),
                             sum(_cos(image_clip, r) for r in clip_refs) / len(clip_refs),
                             sum(_cos(image_dino, r) for r in dino_refs) / len(dino_refs)))
    lines = per_image.splitlines()
    assert lines[0].split("\t")[:4] == ["image", "CLIP-T", "CLIP-I", "DINO"]
    for i, row in enumerate(expected):
        fields = lines[1 + i].split("\t")
        assert [float(x) for x in fields[1:4]] == pytest.approx(row, abs=6e-5)  # the text has 4 decimals
        assert fields[4] == PROMPTS[i].replace("[V]", "dog")
    means = [sum(col) / len(col) for col in zip(*expected)]
    assert [clip_t, clip_i, dino_mean] == pytest.approx(means, abs=1e-6)
    # The test means something: different pairs give different numbers, none of them the trivial 1.
    for column in zip(*expected):
        assert max(column) - min(column) > 1e-3 and max(abs(x) for x in column) < 0.999
    assert table.shape[0] == 1 and table.shape[-1] == 3 and table.shape[1] > 100


def test_one_prompt_line_serves_every_image_and_missing_models_give_nan(vision):
    dino = vision[1]
    images, references = _images(2, 64, 64, 5), _images(2, 64, 64, 6)
    with torch.inference_mode():
        clip_t, clip_i, dino_mean, _, text = PrismConceptScore().score(images, "a [V]", "", "[V]", references, dino=dino)
    assert math.isnan(clip_t) and math.isnan(clip_i) and not math.isnan(dino_mean)
    assert len(text.splitlines()) == 2 + 2


def _small_clip(zero_projection: bool, width: int = 64):
    """A small SD1-family CLIP built like a checkpoint's; zero_projection stands for an SD1.x checkpoint,
    whose file has no text projection (ComfyUI leaves that weight unset; zero on a fresh CPU allocation)."""
    with torch.inference_mode():
        clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                             model_options={"clip_l_model_config": {"hidden_size": width, "intermediate_size": 128,
                                                                    "num_attention_heads": 4, "num_hidden_layers": 1}})
        tiny_models._init_(clip.cond_stage_model, 9)
        if zero_projection:
            clip.cond_stage_model.clip_l.transformer.text_projection.weight.zero_()
    return clip


def test_errors_name_the_input_and_the_fix(tiny, vision):
    clip_vision, dino = vision[0]["sd2v"], vision[1]
    clip = tiny("sd2v").clip
    images, references = _images(1, 64, 64, 7), _images(1, 64, 64, 8)
    node = PrismConceptScore()
    with torch.inference_mode():
        with pytest.raises(ValueError, match="class_noun is empty"):
            node.score(images, "a [V]", "", "[V]", references, clip=clip, clip_vision=clip_vision)
        with pytest.raises(ValueError, match="clip is connected but clip_vision is not"):
            node.score(images, "a [V]", "dog", "[V]", references, clip=clip)
        with pytest.raises(ValueError, match="dino: this is a clip vision model, not DINOv2"):
            node.score(images, "a [V]", "dog", "[V]", references, dino=clip_vision)
        with pytest.raises(ValueError, match="clip_vision: this is a dinov2 vision model, not CLIP"):
            node.score(images, "a [V]", "dog", "[V]", references, clip_vision=dino)
        with pytest.raises(ValueError, match="Connect at least"):
            node.score(images, "a [V]", "dog", "[V]", references)
        with pytest.raises(ValueError, match="2 lines for 1 images"):
            node.score(images, "a [V]\nb [V]", "dog", "[V]", references, dino=dino)
        with pytest.raises(ValueError, match="1024-wide image embeddings: they are not two halves"):
            node.score(images, "a [V]", "dog", "[V]", references, clip=_small_clip(False), clip_vision=clip_vision)
        with pytest.raises(ValueError, match="no text projection"):
            node.score(images, "a [V]", "dog", "[V]", references, clip=_small_clip(True, 1024), clip_vision=clip_vision)
