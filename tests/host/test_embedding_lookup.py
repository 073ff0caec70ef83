"""Learned words through the host's own embedding lookup (prism_core/host/internals/embedding_lookup.py).

The pack answers ``embedding:<slot>`` at ``comfy.sd1_clip.load_embed``, the module function the host's
tokenizer calls with (name, directory, size, key) for every embedding word, so the host parses the word
(leftover text, trailing commas, and from v0.28.0 names cut at ``<`` and ``[``) exactly as for a file.
Oracle: the host's own tokenization of the same prompt with a real embedding file of the slot's name and
row count; the placeholder rows must stand exactly where the file's rows stand.
"""
from __future__ import annotations

import threading

import pytest
import safetensors.torch
import torch

from host_setup import require_host

require_host()

import comfy.sd1_clip  # noqa: E402

from comfyui_conceptprism.prism_core.host import text  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals import embedding_lookup  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals.embedding_lookup import SlotRow  # noqa: E402


def _layout(tokens: dict) -> dict:
    """{tokenizer key: [[token id, or 'E' for any embedding row, per position] per chunk]}."""
    def kind(t):
        return "E" if isinstance(t, (SlotRow, torch.Tensor)) else t
    return {k: [[kind(t) for t, *_ in chunk] for chunk in chunks] for k, chunks in tokens.items()}


@pytest.mark.parametrize("prompt", [
    "a photo of embedding:prism_target, on the beach",
    "embedding:prism_target with embedding:prism_residual_0",
    "a photo of embedding:prism_target",
    # a chat template's end marker right after the word: hosts from v0.28.0 cut the name at "<", older ones
    # look up the whole word (and find nothing); either way as the host does it for a file
    "a photo of embedding:prism_target<|im_end|>",
])
def test_slot_words_stand_where_the_hosts_embedding_files_stand(prompt, tiny, embedding_root):
    models = tiny("sd15")
    for slot, rows in (("prism_target", 2), ("prism_residual_0", 3)):
        safetensors.torch.save_file({"clip_l": torch.ones(rows, 768)}, str(embedding_root / f"{slot}.safetensors"))
    try:
        lengths = {"prism_target": {"clip_l": 2}, "prism_residual_0": {"clip_l": 3}}
        ours = text.tokenize_with_slots(models.clip, prompt, lengths)
        host = models.clip.tokenize(prompt)
    finally:
        for slot in ("prism_target", "prism_residual_0"):
            (embedding_root / f"{slot}.safetensors").unlink()
    assert _layout(ours) == _layout(host)
    rows = [t for chunk in ours["l"] for t, *_ in chunk if isinstance(t, SlotRow)]
    assert all(r.key == "clip_l" for r in rows)


def test_the_hosts_lookup_is_back_after_tokenizing_and_after_an_error(tiny):
    models = tiny("sd15")
    host_function = comfy.sd1_clip.load_embed
    text.tokenize_with_slots(models.clip, "embedding:prism_target", {"prism_target": {"clip_l": 1}})
    assert comfy.sd1_clip.load_embed is host_function
    with pytest.raises(RuntimeError):
        with embedding_lookup.slot_lookup({"prism_target": {"clip_l": 1}}):
            raise RuntimeError("cancelled")
    assert comfy.sd1_clip.load_embed is host_function


def test_another_thread_gets_the_hosts_own_lookup_meanwhile(tiny, embedding_root):
    """Only the thread that tokenizes with slots sees them: a prompt tokenized on another thread meanwhile
    (the server thread, say) gets the host's lookup, which finds no such file."""
    models = tiny("sd15")
    seen = {}

    def other_thread():
        seen["tokens"] = models.clip.tokenize("embedding:prism_target")

    with embedding_lookup.slot_lookup({"prism_target": {"clip_l": 1}}):
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        mine = comfy.sd1_clip.load_embed("prism_target", [str(embedding_root)], 768, "clip_l")
    assert isinstance(mine[0], SlotRow)
    assert not any(isinstance(t, SlotRow) for chunk in seen["tokens"]["l"] for t, *_ in chunk)
