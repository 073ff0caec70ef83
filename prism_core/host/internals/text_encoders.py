"""The host's text encoders as the pack reads them: tokenizer fields, encoder modules, clip options.

Everything here relies on the inner structure of ``comfy.sd1_clip`` (SDTokenizer's fields, SDClipModel's
``encode_token_weights`` and clip options) and of ``comfy.sd.CLIP`` (``tokenizer_options``, ``layer_idx``,
``cond_stage_model``): contract.py detects each by feature, tests/host/test_host_contract.py guards it.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator

import torch

import comfy.sd1_clip


def sub_tokenizers(clip: Any) -> Iterator[tuple[str, comfy.sd1_clip.SDTokenizer]]:
    """(attribute name, SDTokenizer) for every text encoder of this CLIP (clip_l, clip_g, clip_h, t5xxl, ...)."""
    for name, value in vars(clip.tokenizer).items():
        if isinstance(value, comfy.sd1_clip.SDTokenizer):
            yield name, value


def encoder_keys(clip: Any) -> list[str]:
    """The embedding keys of this CLIP's text encoders (e.g. ["clip_l"], ["clip_g", "clip_l"], ["clip_l", "t5xxl"])."""
    return [tok.embedding_key for _, tok in sub_tokenizers(clip)]


def tokenizer_for(clip: Any, key: str) -> comfy.sd1_clip.SDTokenizer:
    """The SDTokenizer of the text encoder with embedding key `key`."""
    return next(tok for _, tok in sub_tokenizers(clip) if tok.embedding_key == key)


def text_encoder(clip: Any, key: str) -> torch.nn.Module:
    """The host's encoder module (an SDClipModel) for embedding key `key`."""
    encoder = getattr(clip.cond_stage_model, key, None)
    if encoder is None:
        raise ValueError(f"This CLIP has no '{key}' text encoder.")
    return encoder



def apply_clip_options(clip: Any) -> None:
    """Set the CLIP's encoder options as ``CLIP.encode_from_tokens`` does: the layer CLIPSetLastLayer chose
    (else the family default: SD2 the penultimate layer + final norm, SDXL the penultimate without it)
    and the device to run on."""
    model = clip.cond_stage_model
    model.reset_clip_options()
    if clip.layer_idx is not None:
        model.set_clip_options({"layer": clip.layer_idx})
    # Newer hosts (v0.8.0) run the encoder on an `execution_device` clip option that their
    # encode_from_tokens sets to the patcher's load device (comfy/sd.py, SDClipModel.forward); older
    # ones take the embedding weights' device and ignore unknown options, so setting it suits both.
    model.set_clip_options({"execution_device": clip.patcher.load_device})



def literal_chunk(tokenizer: comfy.sd1_clip.SDTokenizer, caption: str) -> tuple[list[tuple[int, float]], range]:
    """One chunk of the caption's tokens as plain text, padded as the host pads an empty prompt, and the
    positions of the caption's real tokens (start, end and padding excluded).

    Captions are text, not prompt syntax: "(", ")", ":" and "embedding:" are tokenized as written
    (the host's ``tokenize_with_weights`` would read them as weights and embedding names), so the ids
    come from the underlying BPE/SentencePiece tokenizer with its start/end tokens stripped, as the host
    strips them per word. A caption longer than one chunk is cut to it.
    """
    start = tokenizer.tokens_start
    ids = _text_ids(tokenizer, caption)[:tokenizer.max_length - start - 1]  # room for the start and end tokens
    empty = [(t, w) for t, w, *_ in tokenizer.tokenize_with_weights("")[0]]  # [start?, end, padding...]
    chunk = empty[:start] + [(t, 1.0) for t in ids] + empty[start:]
    # The caption's tokens take the place of trailing padding, so the chunk keeps the host's length.
    keep = max(len(empty), start + len(ids) + 1)
    return chunk[:keep], range(start, start + len(ids))


def added_tokens(clip: Any, key: str) -> dict[str, int]:
    """{text: token id} of the special tokens the tokenizer of encoder `key` keeps whole wherever they stand
    (Hugging Face's ``added_tokens_encoder`` of the SDTokenizer's ``tokenizer``; e.g. Qwen's ``<|fim_pad|>``);
    empty for tokenizers without any."""
    return dict(getattr(tokenizer_for(clip, key).tokenizer, "added_tokens_encoder", {}) or {})


def _text_ids(tokenizer: comfy.sd1_clip.SDTokenizer, text: str) -> list[int]:
    # the underlying tokenizer's ids of `text`, its start and end tokens stripped as the host strips them per word
    ids = tokenizer.tokenizer(text)["input_ids"]
    return ids[tokenizer.tokens_start:len(ids) - 1 if tokenizer.tokenizer_adds_end_token else len(ids)]


def word_ids(clip: Any, key: str, text: str) -> list[int]:
    """The token ids of `text` alone (no start, end or padding tokens, no template) in encoder `key`'s vocabulary."""
    return _text_ids(tokenizer_for(clip, key), text)


def is_zimage_text_encoder(clip: Any) -> bool:
    """Whether `clip` is Z-Image's Qwen3-4B as the host loads it for Z-Image (its ZImageTokenizer, whose chat
    template Z-Image was trained with): FLUX.2 Klein loads the same Qwen3-4B file with another template and
    another layer stack. False on hosts without Z-Image."""
    import importlib
    try:
        z_image = importlib.import_module("comfy.text_encoders.z_image")
    except ImportError:
        return False
    return isinstance(clip.tokenizer, z_image.ZImageTokenizer)


def is_klein_text_encoder(clip: Any) -> bool:
    """Whether `clip` is a Qwen3 loaded for FLUX.2 Klein (Load CLIP type flux2: the host's KleinTokenizer and its
    chat template; its encoder stacks layers 9, 18 and 27). False on hosts without Klein."""
    import importlib
    flux_text = importlib.import_module("comfy.text_encoders.flux")
    klein = getattr(flux_text, "KleinTokenizer", None)
    return klein is not None and isinstance(clip.tokenizer, klein)


def input_embedding_table(clip: Any, key: str) -> torch.Tensor:
    """[V, D]: the input-embedding table (token id -> row) of the encoder for embedding key `key`."""
    return text_encoder(clip, key).transformer.get_input_embeddings().weight


def tokenize_with_weights(clip: Any, text: str, ask_lookup: bool = True) -> dict[str, list]:
    """``clip.tokenize(text)``'s token structure. With `ask_lookup`, through per-call copies of the tokenizers:
    one without an embedding directory gets an empty one, because the host looks ``embedding:`` words up only when
    a directory is set (so a lookup the caller installed, embedding_lookup.slot_lookup, is asked); without it,
    exactly as ``clip.tokenize`` (a tokenizer without a directory reads ``embedding:`` words as text)."""
    tokenizer = copy.copy(clip.tokenizer)
    for attribute, sub in sub_tokenizers(clip):
        if ask_lookup and sub.embedding_directory is None:
            patched = copy.copy(sub)
            patched.embedding_directory = []
            setattr(tokenizer, attribute, patched)
    options = dict(clip.tokenizer_options)
    return tokenizer.tokenize_with_weights(text, False, **({"tokenizer_options": options} if options else {}))


def encode_token_weights(clip: Any, tokens: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond [1, L, D], pooled [1, P] or None) for the host's token structure, with the CLIP's options
    (`apply_clip_options`), keeping the autograd graph. The caller has loaded the CLIP."""
    apply_clip_options(clip)
    out = clip.cond_stage_model.encode_token_weights(tokens)
    return out[0], out[1]


def encode_chunk(clip: Any, key: str, chunk: list[tuple[int, float]]) -> torch.Tensor:
    """[1, L, D]: the hidden states encoder `key` gives one chunk of (token, weight) pairs, with the CLIP's
    options already applied by the caller (`apply_clip_options`)."""
    return text_encoder(clip, key).encode_token_weights([chunk])[0]


def projected_pooled(clip: Any, tokens: dict[str, list]) -> torch.Tensor | None:
    """[1, D]: the pooled output with the text projection applied (the host's ``projected_pooled`` clip option:
    SD1.x-style clip_l encoders return the unprojected pooled state by default), or None when the encoder has
    no pooled output. Loads the CLIP; resets the options after."""
    model = clip.cond_stage_model
    model.reset_clip_options()
    model.set_clip_options({"projected_pooled": True})
    try:
        clip.load_model()
        # Newer hosts (v0.8.0) run the encoder on this option (set by their encode_from_tokens too);
        # older ones ignore options they do not know.
        model.set_clip_options({"execution_device": clip.patcher.load_device})
        return model.encode_token_weights(tokens)[1]
    finally:
        model.reset_clip_options()


def clip_layer_index(clip: Any) -> int | None:
    """CLIPSetLastLayer's layer index on this CLIP, or None for the family default."""
    return clip.layer_idx
