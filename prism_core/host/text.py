"""Text encoding with learned vectors spliced in, through the host's own tokenizer and encoder.

Learned tokens are written into prompts as ``embedding:<slot>``. During tokenization the host's
``SDTokenizer`` parses each embedding word and looks it up by name; the lookup answers for our slot
names with placeholder rows (`SlotRow`, see internals/embedding_lookup.py) and passes every other name to the
host, so the host does parsing, chunking, padding, weights and real ``embedding:`` files exactly as in
CLIPTextEncode.
The placeholders are then replaced by the current vectors, which the host's encoder splices
in differentiably (``SDClipModel.process_tokens``).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from ..training.prompts import Prompt, SlotVectors
from ..formats.token_bank import TARGET_SLOT, PrismTokens, is_slot, residual_slot
from .internals.embedding_lookup import SlotRow, slot_lookup
from .internals.text_encoders import (apply_clip_options, clip_layer_index, encode_chunk, encode_token_weights,
                                      encoder_keys, input_embedding_table, literal_chunk, tokenize_with_weights,
                                      is_klein_text_encoder, is_zimage_text_encoder, tokenizer_for, word_ids)
from .template_slots import TEMPLATE_ENCODERS, templated, tokenize_marked

log = logging.getLogger("ConceptPrism")

FAMILY_NAMES = {
    ("clip_l",): "SD1.x (clip_l)",
    ("clip_h",): "SD2.x (clip_h)",
    ("clip_g", "clip_l"): "SDXL (clip_l + clip_g)",
    ("clip_l", "t5xxl"): "FLUX (clip_l + t5xxl)",
    ("clip_g", "clip_l", "t5xxl"): "SD3 (clip_l + clip_g + t5xxl)",
    ("qwen3_4b",): "Z-Image or FLUX.2 Klein 4B (qwen3_4b)",
    ("qwen3_8b",): "FLUX.2 Klein 9B (qwen3_8b)",
}


def family_name(keys: tuple[str, ...]) -> str:
    keys = tuple(sorted(keys))
    return FAMILY_NAMES.get(keys, "+".join(keys))


def encoder_widths(clip: Any) -> dict[str, int]:
    """{embedding key: input-embedding width} read from the loaded encoder weights (not assumed per family)."""
    return {key: input_embedding_table(clip, key).shape[1] for key in encoder_keys(clip)}


def prompt_text(prompt: Prompt, slot_names: set[str]) -> str:
    return " ".join(f"embedding:{part}" if part in slot_names else part for part in prompt.parts)


def tokenize_with_slots(clip: Any, text: str, slot_lengths: dict[str, dict[str, int]]) -> dict[str, list]:
    """Tokenize like ``clip.tokenize`` with ``embedding:<slot>`` words left as `SlotRow` placeholders.

    slot_lengths: slot name -> {embedding key: number of vectors}. Returns the host's token
    structure {tokenizer key: [[(token | SlotRow, weight), ...] per 77-token chunk]}. Chat-templated LLM encoders
    (Z-Image's Qwen3-4B) place the words with markers instead of the host's parse (template_slots).
    """
    if templated(clip):
        return tokenize_marked(clip, text, slot_lengths)
    with slot_lookup(slot_lengths):
        return tokenize_with_weights(clip, text)


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
    # Spaces end the learned word for the host's embedding parse ("[V]'s"); a chat-templated prompt places it by
    # marker (template_slots) and keeps the text as written, whose spaces an LLM's tokenizer reads.
    pad = "" if templated(clip) else " "
    prompt = template.replace(placeholder, f"{pad}{words}{pad}") if placeholder else words
    vectors = {slot: {k: v.detach().float() for k, v in bank.slot_vectors(slot).items()} for slot in slots}
    lengths = {slot: {k: v.shape[0] for k, v in vecs.items()} for slot, vecs in vectors.items()}
    return fill_slots(tokenize_with_slots(clip, prompt, lengths), vectors)


def encode_tokens(clip: Any, tokens: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond [1, L, D], pooled [1, P] or None) as ``CLIP.encode_from_tokens`` computes them, honouring
    the CLIP's layer setting (CLIPSetLastLayer), without reloading the model per call and without
    breaking the autograd graph. The caller has loaded the CLIP."""
    return encode_token_weights(clip, tokens)


def vocabulary_statistics(clip: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{key: (mean [D], std [D])} of each encoder's input-embedding table (the reference's random init)."""
    stats = {}
    for key in encoder_keys(clip):
        table = input_embedding_table(clip, key).detach().float()
        stats[key] = (table.mean(dim=0).cpu(), table.std(dim=0).cpu())
    return stats


@torch.no_grad()
def caption_embedding(clip: Any, caption: str) -> dict[str, torch.Tensor]:
    """{key: [D]}: for each text encoder, the mean over the caption's real tokens of the hidden states the
    diffusion model is conditioned on (the family's layer, or CLIPSetLastLayer's, as encode_from_tokens
    gives them), as the paper's Sec. 3.3 initialisation: the reference code's encoders return exactly
    what its UNet sees (its SD2.1 encoder is already cut to 23 layers). The caller has loaded the CLIP.

    Chat-templated LLM encoders (Z-Image's Qwen3-4B) get the mean of the caption tokens' input-embedding rows
    instead: an LLM's hidden states are not in its input rows' space (their norms grow through the layers by
    orders of magnitude, and a row that large would dominate every attention it enters), while the mean of
    the rows is a point among the words the LLM reads, of at most a word's norm (the norm of a mean is at most
    the mean of the norms). Raises ValueError for a caption with no tokens."""
    apply_clip_options(clip)
    out = {}
    for key in encoder_keys(clip):
        if key in TEMPLATE_ENCODERS:
            ids = word_ids(clip, key, caption)
            if not ids:
                raise ValueError(f"Caption '{caption}' has no tokens.")
            table = input_embedding_table(clip, key)
            out[key] = table[torch.tensor(ids, device=table.device)].float().mean(dim=0).cpu()
            continue
        chunk, real = literal_chunk(tokenizer_for(clip, key), caption)
        if len(real) == 0:
            raise ValueError(f"Caption '{caption}' has no tokens.")
        states = encode_chunk(clip, key, chunk)
        out[key] = states[0, real.start:real.stop].float().mean(dim=0).cpu()
    return out


def clip_layer(clip: Any) -> str:
    """The encoder layer this CLIP conditions on, as stored with tokens and LoRAs: "default" (the family's:
    SD1.x last, SD2.x/SDXL penultimate) or CLIPSetLastLayer's index, e.g. "-2"."""
    index = clip_layer_index(clip)
    return "default" if index is None else str(int(index))


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


# How a Qwen3 is read, by the model it was loaded for: the same file and embedding key, another chat template and
# other layers (tokens learned one way do not mean the same the other way).
QWEN3_READERS = {"zimage": "Z-Image (Load CLIP type lumina2)", "klein": "FLUX.2 Klein (Load CLIP type flux2)"}


def qwen3_reader(clip: Any) -> str | None:
    """"zimage" or "klein" for a Qwen3 loaded for that model, None for any other CLIP."""
    return "zimage" if is_zimage_text_encoder(clip) else "klein" if is_klein_text_encoder(clip) else None


def check_family(clip: Any, keys: tuple[str, ...], widths: dict[str, int], what: str, learned_with: str | None = None) -> None:
    """Raise if vectors learned for encoders `keys` with `widths` cannot go into this CLIP; `learned_with`: the model
    family the tokens were learned for (their settings' "family"), which for a Qwen3 must be the one the CLIP was
    loaded for."""
    now = qwen3_reader(clip)
    if learned_with in QWEN3_READERS and now in QWEN3_READERS and now != learned_with:
        raise ValueError(f"{what} were learned with {QWEN3_READERS[learned_with]}'s Qwen3, but this CLIP is loaded for "
                         f"{QWEN3_READERS[now]}: the same encoder file read with another chat template and other layers. "
                         "Connect the CLIP the tokens were trained with, or train new tokens for this model.")
    clip_widths = encoder_widths(clip)
    if set(keys) != set(clip_widths) or any(clip_widths[k] != widths[k] for k in keys):
        raise ValueError(
            f"{what} were learned for {family_name(tuple(keys))} text encoders "
            f"({', '.join(f'{k}: {widths[k]}' for k in sorted(keys))}), but this CLIP is "
            f"{family_name(tuple(clip_widths))} ({', '.join(f'{k}: {v}' for k, v in sorted(clip_widths.items()))}). "
            "Load the checkpoint family the tokens were trained with, or train new tokens for this one.")


# FLUX.2 Klein's sizes by the width of one Qwen3 layer it reads (qwen_3_4b: 2560, qwen_3_8b: 4096).
KLEIN_SIZES = {2560: "Klein 4B", 4096: "Klein 9B"}


def check_text_encoders(family: str, clip: Any, text_input: int | None = None) -> None:
    """Raise ValueError, naming the fix, when the CLIP's text encoders (clip_l, t5xxl, qwen3_4b, ...) are not the
    MODEL's family's (`family`: family.ModelFamily.name): FLUX.1 needs CLIP-L + T5-XXL, Z-Image Qwen3-4B loaded
    for Z-Image (not for FLUX.2 Klein, which reads the same file another way), FLUX.2 Klein its Qwen3 loaded for
    Klein, of the size whose three stacked layers make the model's `text_input` width; SD models CLIP only."""
    widths = encoder_widths(clip)
    keys, reader = set(widths), qwen3_reader(clip)
    if family == "zimage" and (keys != {"qwen3_4b"} or reader != "zimage"):
        loaded = "Qwen3-4B loaded for another model (e.g. type flux2)" if keys == {"qwen3_4b"} else str(sorted(keys))
        raise ValueError(f"This Z-Image MODEL needs its Qwen3-4B text encoder, but the CLIP has {loaded}. Load it "
                         "with Load CLIP (type lumina2: qwen_3_4b.safetensors) and connect that CLIP.")
    if family == "klein" and (keys not in ({"qwen3_4b"}, {"qwen3_8b"}) or reader != "klein"):
        loaded = "a Qwen3 loaded for another model (e.g. type lumina2)" if keys <= {"qwen3_4b", "qwen3_8b"} else str(sorted(keys))
        raise ValueError(f"This FLUX.2 Klein MODEL needs its Qwen3 text encoder, but the CLIP is {loaded}. Load it with "
                         "Load CLIP, type flux2 (Klein 4B: qwen_3_4b.safetensors; Klein 9B: qwen_3_8b.safetensors), and "
                         "connect that CLIP.")
    width = next(iter(widths.values()))
    if family == "klein" and text_input is not None and text_input != 3 * width:
        size = KLEIN_SIZES.get(text_input // 3, f"three Qwen3 layers of {text_input // 3}")
        raise ValueError(f"This FLUX.2 Klein MODEL ({size}) reads text states {text_input} wide, but the CLIP's Qwen3 is "
                         f"{width} wide. Load the encoder of this Klein size with Load CLIP, type flux2 (Klein 4B: "
                         "qwen_3_4b.safetensors; Klein 9B: qwen_3_8b.safetensors).")
    flux = family == "flux1"
    if flux and keys != {"clip_l", "t5xxl"}:
        raise ValueError(f"This FLUX.1 MODEL needs FLUX's text encoders (CLIP-L + T5-XXL), but the CLIP has {sorted(keys)}. "
                         "Load them with DualCLIPLoader (type flux: clip_l and t5xxl) and connect that CLIP.")
    if family == "sd" and keys & {"qwen3_4b", "qwen3_8b"}:
        raise ValueError(f"This MODEL is an SD model, but the CLIP is a Qwen3 (Z-Image's or FLUX.2 Klein's: {sorted(keys)}). "
                         "Connect the CLIP of the same checkpoint (Load Checkpoint's CLIP output).")
    if family == "sd" and "t5xxl" in keys:
        raise ValueError(f"This MODEL is an SD model, but the CLIP has FLUX's/SD3's text encoders ({sorted(keys)}). Connect the "
                         "CLIP of the same checkpoint (Load Checkpoint's CLIP output), or load a FLUX.1 model.")
