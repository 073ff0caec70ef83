"""Residual initialisation = the mean, over the caption's real tokens, of the hidden states the diffusion
model is conditioned on (paper Sec. 3.3), per text encoder: the family's layer or CLIPSetLastLayer's.

The oracle is the host's own `clip.encode_from_tokens(clip.tokenize(caption))` (what CLIP Text Encode
gives the sampler), sliced per encoder for SDXL (clip_l then clip_g along the width), averaged over the
positions between the start token and the first end token of the host's own tokenization.
"""
from __future__ import annotations

import logging

import pytest
import torch

from host_setup import require_host

require_host()

from comfyui_conceptprism.prism_core.host import text  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals import text_encoders  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1_backend import ComfyStage1Backend  # noqa: E402

CAPTION = "a red ceramic mug with a chipped handle on a wooden desk beside a green plant"
WIDTHS = {"sd15": [("clip_l", 768)], "sd2v": [("clip_h", 1024)], "sdxl": [("clip_l", 768), ("clip_g", 1280)]}
TOKEN_KEYS = {"clip_l": "l", "clip_h": "h", "clip_g": "g"}


def oracle(clip, family: str, caption: str) -> dict[str, torch.Tensor]:
    tokens = clip.tokenize(caption)
    cond = clip.encode_from_tokens(tokens).float()
    out, offset = {}, 0
    for key, width in WIDTHS[family]:
        ids = [t for t, *_ in tokens[TOKEN_KEYS[key]][0]]
        end = ids.index(_end_token(clip, key), 1)  # real tokens: after the start token, before the first end
        out[key] = cond[0, 1:end, offset:offset + width].mean(dim=0)
        offset += width
    assert offset == cond.shape[-1], cond.shape
    return out


def _end_token(clip, key):
    return next(tok.end_token for _, tok in text_encoders.sub_tokenizers(clip) if tok.embedding_key == key)


def init_from_pack(models, clip, caption):
    lengths = text.slot_lengths_for({k: torch.empty(1, w) for k, w in text.encoder_widths(clip).items()},
                                    {k: torch.empty(1, 1, w) for k, w in text.encoder_widths(clip).items()})
    with torch.inference_mode(False):
        with ComfyStage1Backend(models.model, clip, lengths, 64) as backend:
            return backend.caption_embedding(caption)


@pytest.mark.parametrize("family,layer", [("sd15", None), ("sd15", -2), ("sd2v", None), ("sdxl", None)])
def test_residual_init_is_the_mean_of_the_conditioning_states(family, layer, tiny):
    models = tiny(family)
    clip = models.clip.clone()
    if layer is not None:
        clip.clip_layer(layer)
    want = oracle(clip, family, CAPTION)
    got = init_from_pack(models, clip, CAPTION)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    # Not the last layer where the model conditions on another one: the test can tell them apart.
    if family != "sd15" or layer is not None:
        last = models.clip.clone()
        last.clip_layer(-1)
        assert any((oracle(last, family, CAPTION)[k] - want[k]).abs().max() > 1e-3 for k in want)


def test_prompt_syntax_in_a_caption_is_text(tiny, caplog):
    """"(", ")", ":" and "embedding:" are tokenized as written: no weights, no embedding lookup (and no
    host warning about a missing embedding), and they change the initialisation."""
    models = tiny("sd15")
    caption = "a photo of embedding:dog (red mug:1.5) on a desk"
    chunk, real = text_encoders.literal_chunk(dict(text_encoders.sub_tokenizers(models.clip))["clip_l"], caption)
    raw = dict(text_encoders.sub_tokenizers(models.clip))["clip_l"].tokenizer
    words = [raw.decode([t]).strip() for t, _ in chunk[real.start:real.stop]]
    joined = "".join(words)
    assert "(" in words and ")" in words and ":" in words and "embedding:dog" in joined and "1.5" in joined
    assert all(w == 1.0 for _, w in chunk)
    with caplog.at_level(logging.WARNING):
        literal = init_from_pack(models, models.clip, caption)
        plain = init_from_pack(models, models.clip, "a photo of dog red mug on a desk")
    assert "embedding" not in caplog.text.lower()
    assert (literal["clip_l"] - plain["clip_l"]).abs().max() > 1e-4
