"""Prompt sets for judging a concept: DreamBench-style templates shipped as data, or the user's own.

Every template holds the placeholder ``[V]`` where the subject goes. Rendering puts the learned
token there; CLIP-T scoring puts the user's class noun there (CLIP cannot read a learned token), as
DreamBench scores "a dog in the jungle" for an image drawn from "a sks dog in the jungle".
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "dreambench_prompts.json"
PLACEHOLDER = "[V]"
CUSTOM = "custom"


@lru_cache(maxsize=1)
def shipped_sets() -> dict[str, tuple[str, ...]]:
    """{set name: templates} from data/dreambench_prompts.json ("objects", "live subjects")."""
    data = json.loads(DATA.read_text(encoding="utf-8"))
    return {name: tuple(templates) for name, templates in data["sets"].items()}


def set_names() -> list[str]:
    """The choices of a prompt_set widget: the shipped sets, then 'custom'."""
    return list(shipped_sets()) + [CUSTOM]


def spread(templates: tuple[str, ...] | list[str], count: int) -> list[str]:
    """`count` templates evenly spaced over the list (all of them when count >= len), in list order.

    DreamBench's lists run from backgrounds to accessories to property changes, so an even spread
    keeps every kind of edit in a short sweep.
    """
    if count < 1:
        raise ValueError(f"prompt_count is {count}; it must be at least 1.")
    n = len(templates)
    if count >= n:
        return list(templates)
    return [templates[(i * n) // count] for i in range(count)]


def custom_lines(text: str) -> list[str]:
    """The non-empty lines of a custom prompt box, each checked to hold the placeholder."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"prompt_set is '{CUSTOM}' but custom_prompts is empty: write one prompt per line, each with "
                         f"{PLACEHOLDER} where the concept goes, e.g. 'a photo of {PLACEHOLDER} on the beach'.")
    missing = [line for line in lines if PLACEHOLDER not in line]
    if missing:
        raise ValueError(f"custom_prompts: '{missing[0]}' has no {PLACEHOLDER}; write {PLACEHOLDER} where the concept goes.")
    return lines


def sweep_prompts(prompt_set: str, count: int, custom: str = "") -> list[str]:
    """The templates a sweep renders: `count` spread over a shipped set, or the first `count` custom lines."""
    if prompt_set == CUSTOM:
        return spread(custom_lines(custom)[:count], count)
    sets = shipped_sets()
    if prompt_set not in sets:
        raise ValueError(f"prompt_set '{prompt_set}' is not one of {set_names()}.")
    return spread(sets[prompt_set], count)
