"""Learned words in prompts the host wraps in a chat template (Z-Image's Qwen3-4B), tokenized as written.

For CLIP and T5 the pack lets the host parse ``embedding:<slot>`` itself (text.py), which gives exactly what a
stock CLIP Text Encode gives. The host's parse does not suit a chat-templated LLM prompt: it splits the text after
an embedding word at whitespace and joins the rest with single spaces, so the template's newlines after the prompt
(``<|im_end|>\\n<|im_start|>assistant\\n``) become spaces or vanish, and before ComfyUI 0.33.0 (which cuts names
at ``<``) a learned word at the end of the prompt swallows ``<|im_end|>`` and is dropped. So here each learned word
is replaced by one of the tokenizer's own atomic tokens (an added special token the text does not contain), the
prompt goes through the host's tokenizer and template unchanged, and each marker token is then replaced by the
slot's `SlotRow` placeholders. The prompt is thus the user's text exactly as written, in the host's template, with
the learned rows where the word stands: training, Prism Conditioning and previews see the same tokens on every
release.
"""
from __future__ import annotations

import re
from typing import Any

from .internals.embedding_lookup import SlotRow
from .internals.text_encoders import added_tokens, encoder_keys, tokenize_with_weights

# Embedding keys of the text encoders whose prompts the host wraps in a chat template (Z-Image's and FLUX.2
# Klein 4B's Qwen3-4B, Klein 9B's Qwen3-8B).
TEMPLATE_ENCODERS = frozenset({"qwen3_4b", "qwen3_8b"})


def templated(clip: Any) -> bool:
    """Whether every text encoder of `clip` is a chat-templated LLM (TEMPLATE_ENCODERS)."""
    keys = set(encoder_keys(clip))
    return bool(keys) and keys <= TEMPLATE_ENCODERS


def _marker(clip: Any, key: str, text: str, template_ids: set[int]) -> tuple[str, int]:
    """(marker text, its token id): the tokenizer's added token with the highest id that neither `text` nor the
    host's template (`template_ids`, the ids of an empty prompt) contains. Raises ValueError when none is left."""
    for marker, token in sorted(added_tokens(clip, key).items(), key=lambda item: -item[1]):
        if marker not in text and token not in template_ids:
            return marker, token
    raise ValueError("The prompt contains every special token of the text encoder's tokenizer; ConceptPrism has no "
                     "free one to mark its learned words with. Remove special tokens (<|...|>) from the prompt.")


def tokenize_marked(clip: Any, text: str, slot_lengths: dict[str, dict[str, int]]) -> dict[str, list]:
    """The host's token structure {tokenizer key: [[(token | SlotRow, weight, ...), ...]]} of `text`, with each
    ``embedding:<slot>`` word of a slot in `slot_lengths` (slot -> {embedding key: rows}) standing as that slot's
    SlotRow placeholders wherever it stands (also glued to the next word or punctuation: "[V]." , "[V]s"),
    everything else tokenized as ``clip.tokenize`` does (its template; other ``embedding:`` words where the release
    reads them, as text where it does not). Raises ValueError if a learned word could not be placed."""
    names = sorted(slot_lengths, key=len, reverse=True)
    # a slot name ends where no digit follows (prism_residual_1 is not prism_residual_10)
    word = re.compile("embedding:(" + "|".join(re.escape(n) for n in names) + r")(?!\d)") if names else None
    slots = word.findall(text) if word else []
    out = {}
    for key in encoder_keys(clip):
        template_ids = {item[0] for chunk in tokenize_with_weights(clip, "", ask_lookup=False)[key] for item in chunk
                        if isinstance(item[0], int)}
        marker, token = _marker(clip, key, text, template_ids)
        marked = word.sub(marker, text) if word else text
        tokens = tokenize_with_weights(clip, marked, ask_lookup=False)
        found = sum(1 for chunk in tokens[key] for item in chunk if _is(item, token))
        if found != len(slots):
            raise ValueError(f"ConceptPrism: the {key} tokenizer split its marker {marker!r}; the learned words of "
                             f"{text!r} could not be placed.")
        queue = iter(slots)
        out[key] = [[expanded for item in chunk for expanded in _expand(item, token, key, queue, slot_lengths)]
                    for chunk in tokens[key]]
    return out


def _is(item: tuple, token: int) -> bool:
    # item[0] is a token id, or a row tensor of another embedding: word the host looked up
    return isinstance(item[0], int) and item[0] == token


def _expand(item: tuple, token: int, key: str, slots: Any, slot_lengths: dict[str, dict[str, int]]) -> list[tuple]:
    """[item] for an ordinary token; the next slot's rows (with the marker's weight and word id) for a marker."""
    if not _is(item, token):
        return [item]
    slot = next(slots)
    return [(SlotRow(key, slot, row), *item[1:]) for row in range(slot_lengths[slot][key])]
