"""Text encoding with learned vectors spliced in, through the host's own tokenizer and encoder.

Learned tokens are written into prompts as ``embedding:<slot>``. During tokenization the host's
``SDTokenizer`` parses each embedding word and looks it up by name; the lookup answers for our slot
names with placeholder rows (`SlotRow`, see embedding_lookup.py) and passes every other name to the
host, so the host does parsing, chunking, padding, weights and real ``embedding:`` files exactly as in
CLIPTextEncode.
The placeholders are then replaced by the current vectors, which the host's encoder splices
in differentiably (``SDClipModel.process_tokens``).
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Iterator

import torch

import comfy.sd1_clip

from ..optimize import Prompt, SlotVectors
from ..token_bank import TARGET_SLOT, PrismTokens, is_slot, residual_slot
from .embedding_lookup import SlotRow, slot_lookup

log = logging.getLogger("ConceptPrism")

FAMILY_NAMES = {
    ("clip_l",): "SD1.x (clip_l)",
    ("clip_h",): "SD2.x (clip_h)",
    ("clip_g", "clip_l"): "SDXL (clip_l + clip_g)",
    ("clip_l", "t5xxl"): "FLUX (clip_l + t5xxl)",
    ("clip_g", "clip_l", "t5xxl"): "SD3 (clip_l + clip_g + t5xxl)",
}


def family_name(keys: tuple[str, ...]) -> str:
    keys = tuple(sorted(keys))
    return FAMILY_NAMES.get(keys, "+".join(keys))


def sub_tokenizers(clip: Any) -> Iterator[tuple[str, comfy.sd1_clip.SDTokenizer]]:
    """(attribute name, SDTokenizer) for every text encoder of this CLIP (clip_l, clip_g, clip_h, t5xxl, ...)."""
    for name, value in vars(clip.tokenizer).items():
        if isinstance(value, comfy.sd1_clip.SDTokenizer):
            yield name, value


def text_encoder(clip: Any, key: str) -> torch.nn.Module:
    """The host's encoder module (an SDClipModel) for embedding key `key`."""
    encoder = getattr(clip.cond_stage_model, key, None)
    if encoder is None:
        raise ValueError(f"This CLIP has no '{key}' text encoder.")
    return encoder


def encoder_widths(clip: Any) -> dict[str, int]:
    """{embedding key: input-embedding width} read from the loaded encoder weights (not assumed per family)."""
    return {tok.embedding_key: text_encoder(clip, tok.embedding_key).transformer.get_input_embeddings().weight.shape[1]
            for _, tok in sub_tokenizers(clip)}


def prompt_text(prompt: Prompt, slot_names: set[str]) -> str:
    return " ".join(f"embedding:{part}" if part in slot_names else part for part in prompt.parts)


def tokenize_with_slots(clip: Any, text: str, slot_lengths: dict[str, dict[str, int]]) -> dict[str, list]:
    """Tokenize like ``clip.tokenize`` with ``embedding:<slot>`` words left as `SlotRow` placeholders.

    slot_lengths: slot name -> {embedding key: number of vectors}. Returns the host's token
    structure {tokenizer key: [[(token | SlotRow, weight), ...] per 77-token chunk]}.
    """
    tokenizer = copy.copy(clip.tokenizer)
    for attribute, sub in sub_tokenizers(clip):
        if sub.embedding_directory is None:
            # The host looks embeddings up only when a directory is set: a per-call copy gets an empty one.
            patched = copy.copy(sub)
            patched.embedding_directory = []
            setattr(tokenizer, attribute, patched)
    options = dict(clip.tokenizer_options)
    with slot_lookup(slot_lengths):
        return tokenizer.tokenize_with_weights(text, False, **({"tokenizer_options": options} if options else {}))


def fill_slots(tokens: dict[str, list], vectors: SlotVectors) -> dict[str, list]:
    """Replace every SlotRow by its vector: vectors[slot][key] is [n, D]; returns a new structure."""
    def fill(item: Any) -> Any:
        return vectors[item.slot][item.key][item.row] if isinstance(item, SlotRow) else item
    return {k: [[(fill(t), *rest) for t, *rest in chunk] for chunk in chunks] for k, chunks in tokens.items()}


def bank_tokens(clip: Any, bank: PrismTokens, template: str, parts: tuple[str, ...], placeholder: str | None = None) -> dict[str, list]:
    """Tokenize a prompt whose learned tokens are `parts` (e.g. ("prism_target", "with", "prism_residual_2")),
    filled with the bank's vectors (detached): the host token structure CLIP.encode_from_tokens takes.

    The parts stand at `placeholder` in `template`, or are the whole prompt when no placeholder is given.
    """
    slots = [part for part in parts if is_slot(part)]
    words = prompt_text(Prompt(parts), set(slots))
    prompt = template.replace(placeholder, f" {words} ") if placeholder else words
    vectors = {slot: {k: v.detach().float() for k, v in bank.slot_vectors(slot).items()} for slot in slots}
    lengths = {slot: {k: v.shape[0] for k, v in vecs.items()} for slot, vecs in vectors.items()}
    return fill_slots(tokenize_with_slots(clip, prompt, lengths), vectors)


def encode_tokens(clip: Any, tokens: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond [1, L, D], pooled [1, P] or None) as ``CLIP.encode_from_tokens`` computes them, honouring
    the CLIP's layer setting (CLIPSetLastLayer), without reloading the model per call and without
    breaking the autograd graph. The caller has loaded the CLIP."""
    apply_clip_options(clip)
    out = clip.cond_stage_model.encode_token_weights(tokens)
    return out[0], out[1]


def vocabulary_statistics(clip: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{key: (mean [D], std [D])} of each encoder's input-embedding table (the reference's random init)."""
    stats = {}
    for _, tok in sub_tokenizers(clip):
        table = text_encoder(clip, tok.embedding_key).transformer.get_input_embeddings().weight.detach().float()
        stats[tok.embedding_key] = (table.mean(dim=0).cpu(), table.std(dim=0).cpu())
    return stats


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
    ids = tokenizer.tokenizer(caption)["input_ids"]
    start = tokenizer.tokens_start
    ids = ids[start:len(ids) - 1 if tokenizer.tokenizer_adds_end_token else len(ids)]
    ids = ids[:tokenizer.max_length - start - 1]  # room for the start and end tokens
    empty = [(t, w) for t, w, *_ in tokenizer.tokenize_with_weights("")[0]]  # [start?, end, padding...]
    chunk = empty[:start] + [(t, 1.0) for t in ids] + empty[start:]
    # The caption's tokens take the place of trailing padding, so the chunk keeps the host's length.
    keep = max(len(empty), start + len(ids) + 1)
    return chunk[:keep], range(start, start + len(ids))


@torch.no_grad()
def caption_embedding(clip: Any, caption: str) -> dict[str, torch.Tensor]:
    """{key: [D]}: for each text encoder, the mean over the caption's real tokens of the hidden states the
    diffusion model is conditioned on (the family's layer, or CLIPSetLastLayer's, as encode_from_tokens
    gives them), as the paper's Sec. 3.3 initialisation: the reference code's encoders return exactly
    what its UNet sees (its SD2.1 encoder is already cut to 23 layers). The caller has loaded the CLIP.
    Raises ValueError for a caption with no tokens."""
    apply_clip_options(clip)
    out = {}
    for _, tok in sub_tokenizers(clip):
        chunk, real = literal_chunk(tok, caption)
        if len(real) == 0:
            raise ValueError(f"Caption '{caption}' has no tokens.")
        states = text_encoder(clip, tok.embedding_key).encode_token_weights([chunk])[0]
        out[tok.embedding_key] = states[0, real.start:real.stop].float().mean(dim=0).cpu()
    return out


def clip_layer(clip: Any) -> str:
    """The encoder layer this CLIP conditions on, as stored with tokens and LoRAs: "default" (the family's:
    SD1.x last, SD2.x/SDXL penultimate) or CLIPSetLastLayer's index, e.g. "-2"."""
    return "default" if clip.layer_idx is None else str(int(clip.layer_idx))


def warn_on_other_clip_layer(clip: Any, bank: PrismTokens, where: str) -> None:
    """Log a warning when `clip` conditions on another layer than the tokens were learned with: the learned
    vectors were fitted to that layer's states, and an other layer changes what they draw."""
    learned = bank.settings.get("clip_layer")
    now = clip_layer(clip)
    if learned is not None and learned != now:
        log.warning("ConceptPrism %s: these tokens were learned with CLIP layer %s, but this CLIP uses layer %s "
                    "(CLIPSetLastLayer). Use the same CLIP Set Last Layer setting as in training.", where, learned, now)


def slot_lengths_for(target: dict[str, torch.Tensor], residuals: dict[str, torch.Tensor]) -> dict[str, dict[str, int]]:
    """Slot name -> {key: rows} for the target slot and every residual slot."""
    lengths = {TARGET_SLOT: {k: v.shape[0] for k, v in target.items()}}
    n_images = next(iter(residuals.values())).shape[0]
    for i in range(n_images):
        lengths[residual_slot(i)] = {k: v.shape[1] for k, v in residuals.items()}
    return lengths


def check_family(clip: Any, keys: tuple[str, ...], widths: dict[str, int], what: str) -> None:
    """Raise if vectors learned for encoders `keys` with `widths` cannot go into this CLIP."""
    clip_widths = encoder_widths(clip)
    if set(keys) != set(clip_widths) or any(clip_widths[k] != widths[k] for k in keys):
        raise ValueError(
            f"{what} were learned for {family_name(tuple(keys))} text encoders "
            f"({', '.join(f'{k}: {widths[k]}' for k in sorted(keys))}), but this CLIP is "
            f"{family_name(tuple(clip_widths))} ({', '.join(f'{k}: {v}' for k, v in sorted(clip_widths.items()))}). "
            "Load the checkpoint family the tokens were trained with, or train new tokens for this one.")
