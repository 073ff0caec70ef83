"""The Table-2 experiment's fixed inputs: concept sets, evaluation prompts and seeds (see protocol.md).

Every value here is fixed before any Table-2 run; changing one changes the experiment, so record it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

import world

SEEDS = (0, 1, 2)
SET_SIZE = 5


@dataclass(frozen=True)
class Concept:
    """One object identity (shape, colour, pattern, size). `held_out`: its (shape, colour) pair never
    occurred in the world model's training data."""

    name: str
    shape: str
    colour: str
    pattern: str
    size: str

    @property
    def held_out(self) -> bool:
        return (self.shape, self.colour) in world.HELD_OUT_PAIRS

    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "pattern": self.pattern, "size": self.size}


# Four held-out pairs (every HELD_OUT_PAIRS entry) and four seen pairs; patterns and sizes spread.
CONCEPTS: tuple[Concept, ...] = (
    Concept("yellow_striped_circle", "circle", "yellow", "striped", "large"),
    Concept("green_dotted_square", "square", "green", "dotted", "large"),
    Concept("purple_solid_triangle", "triangle", "purple", "solid", "large"),
    Concept("red_striped_cross", "cross", "red", "striped", "large"),
    Concept("blue_dotted_circle", "circle", "blue", "dotted", "large"),
    Concept("yellow_solid_square", "square", "yellow", "solid", "small"),
    Concept("green_striped_triangle", "triangle", "green", "striped", "large"),
    Concept("purple_dotted_cross", "cross", "purple", "dotted", "small"),
)
assert sum(c.held_out for c in CONCEPTS) == 4

ALL_BACKGROUNDS: tuple[tuple[str, str], ...] = tuple(itertools.product(world.BG_COLOURS, world.BG_PATTERNS))


def concept_scenes(concept: Concept, index: int) -> list[world.Scene]:
    """The concept set: SET_SIZE scenes of the object, each on a different background colour (so the
    object is the only thing all images share), background patterns and positions cycled.
    Deterministic in `index`."""
    rng = np.random.default_rng(1000 + index)
    colours = list(world.BG_COLOURS)
    rng.shuffle(colours)
    patterns = [world.BG_PATTERNS[(index + k) % len(world.BG_PATTERNS)] for k in range(SET_SIZE)]
    positions = [tuple(world.POSITIONS)[(index + k) % len(world.POSITIONS)] for k in range(SET_SIZE)]
    return [world.Scene(bg_colour=colours[k], bg_pattern=patterns[k], position=positions[k], seed=10_000 * (index + 1) + k,
                        **concept.attributes()) for k in range(SET_SIZE)]


def new_backgrounds(scene_list: list[world.Scene]) -> list[tuple[str, str]]:
    """Every (bg colour, bg pattern) not used by the concept set: the '[V] on <new background>' prompts."""
    used = {(s.bg_colour, s.bg_pattern) for s in scene_list}
    return [bg for bg in ALL_BACKGROUNDS if bg not in used]
