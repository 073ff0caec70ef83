"""Learned-word placeholders answered through the host's own embedding lookup.

The host's tokenizer (``comfy.sd1_clip.SDTokenizer``) turns ``embedding:NAME`` into vectors in two steps:
a private method parses the word (``_try_get_embedding``: splits off leftover text, cuts the name at
``<`` and ``[`` since ComfyUI v0.28.0, retries without trailing commas) and then asks the module-level
``comfy.sd1_clip.load_embed(name, directory, size, key)`` for the file. The private method's return form
changed (two values before v0.28.0, three after, upstream PR #14744), ``load_embed``'s call has not changed
since embeddings were added. So the pack answers at ``load_embed``: while `slot_lookup` is active, a name
the caller registered returns placeholder rows and every other name reaches the host's function as it was.
Names are therefore parsed by the host exactly as it parses embedding names (a learned word at the end of
a chat-templated prompt, ``prism_residual_0<|im_end|>``, is found as the host would find a file).

The replacement is installed for the duration of one tokenization and answers only the thread that
installed it (ComfyUI runs a prompt's nodes on one worker thread; another thread tokenizing meanwhile
gets the host's own lookup).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import comfy.sd1_clip

# The host symbol this module replaces (contract.py detects its call form; tests/host/test_host_contract.py guards it).
HOST_LOOKUP = "comfy.sd1_clip.load_embed"

_active = threading.local()
_install_lock = threading.RLock()
_install_depth = 0
# Read when first needed too: a host without it still loads the pack, and contract.require refuses the nodes.
_host_load_embed: Callable[..., Any] | None = getattr(comfy.sd1_clip, "load_embed", None)


@dataclass(frozen=True)
class SlotRow:
    """Row `row` of slot `slot` for text encoder `key`, standing where a vector will go."""

    key: str
    slot: str
    row: int


class SlotRows:
    """Looks enough like an embedding tensor [rows, D] for ``SDTokenizer.tokenize_with_weights``
    (which reads ``.shape`` and indexes rows)."""

    def __init__(self, key: str, slot: str, rows: int) -> None:
        self.key, self.slot, self.shape = key, slot, (rows, 0)

    def __getitem__(self, row: int) -> SlotRow:
        return SlotRow(self.key, self.slot, row)


def _load_embed(embedding_name: str, embedding_directory: Any, embedding_size: Any, embed_key: Any = None,
                *args: Any, **kwargs: Any) -> Any:
    slots: dict[str, dict[str, int]] | None = getattr(_active, "slots", None)
    if slots is not None and embedding_name in slots and embed_key in slots[embedding_name]:
        return SlotRows(embed_key, embedding_name, slots[embedding_name][embed_key])
    return _host_load_embed(embedding_name, embedding_directory, embedding_size, embed_key, *args, **kwargs)


def host_load_embed() -> Callable[..., Any]:
    """The host's own ``load_embed`` (not ours, should a lookup be active)."""
    current = comfy.sd1_clip.load_embed
    return _host_load_embed if current is _load_embed else current


@contextmanager
def slot_lookup(slot_lengths: dict[str, dict[str, int]]) -> Iterator[None]:
    """While active (on this thread), ``embedding:<slot>`` for a slot in `slot_lengths` tokenizes to
    `SlotRow` placeholders: slot_lengths[slot][embedding key] rows for that encoder. Restores the host's
    ``load_embed`` when the last active lookup ends, also on error."""
    global _install_depth, _host_load_embed
    with _install_lock:
        if _install_depth == 0 and comfy.sd1_clip.load_embed is not _load_embed:
            _host_load_embed = comfy.sd1_clip.load_embed
            comfy.sd1_clip.load_embed = _load_embed
        _install_depth += 1
    previous = getattr(_active, "slots", None)
    _active.slots = slot_lengths
    try:
        yield
    finally:
        _active.slots = previous
        with _install_lock:
            _install_depth -= 1
            # Put the host's function back only where ours still stands (something else may have replaced it
            # meanwhile); _host_load_embed is kept, for a thread that looked ours up before this and calls it now.
            if _install_depth == 0 and comfy.sd1_clip.load_embed is _load_embed:
                comfy.sd1_clip.load_embed = _host_load_embed
