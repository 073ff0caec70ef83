"""The synthetic world: 64x64 RGB scenes drawn from known factors, with captions naming them.

A scene is one foreground object (shape, colour, surface pattern, size, position) on a background
(colour, pattern), or the background alone ("object present" = no). Everything is a pure function of
an integer seed, so the world is identical on every machine and in every run.

Why these choices:
- Object and background vocabularies are disjoint (no word names both an object and a background
  attribute), so a caption word always means one factor: the tiny text encoder need not learn
  binding, only which words are present. Object-vs-background disentanglement in the experiment is
  then about *images*, which is what ConceptPrism claims to fix.
- Patterns are coarse (periods of 8-16 px) so they survive a 4x-downsampling latent space.
- Some (shape, colour) pairs never occur in training (`HELD_OUT_PAIRS`): the experiment's "attribute
  combinations never seen together" and the held-out captions for the model's text alignment.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import numpy as np

SIZE = 64
SUPERSAMPLE = 2  # render at 2x and average: anti-aliased edges, so shapes are not pixel-exact templates

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {  # object colours (RGB in [0, 1]), saturated
    "red": (0.86, 0.14, 0.14), "green": (0.16, 0.70, 0.22), "blue": (0.16, 0.30, 0.90),
    "yellow": (0.95, 0.84, 0.10), "purple": (0.58, 0.20, 0.76),
}
PATTERNS = ("solid", "striped", "dotted")
SIZES = {"small": 9.0, "large": 15.0}  # object radius in px
POSITIONS = {"left": 20.0, "center": 32.0, "right": 44.0}  # object centre x in px
POSITION_WORDS = {"left": "on the left", "center": "in the center", "right": "on the right"}
BG_COLOURS = {  # background colours, disjoint from the object colours (in name and in hue)
    "white": (0.92, 0.92, 0.89), "gray": (0.50, 0.50, 0.50), "black": (0.10, 0.10, 0.12),
    "brown": (0.50, 0.32, 0.18), "teal": (0.10, 0.50, 0.50),
}
BG_PATTERNS = ("plain", "checkered", "wavy")

# (shape, colour) pairs that never appear together in the world model's training data.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("circle", "yellow"), ("square", "green"), ("triangle", "purple"), ("cross", "red")})

JITTER_POSITION = 2.0  # px, uniform, each axis (plus +-4 px vertically)
JITTER_COLOUR = 0.05  # per channel, uniform
EMPTY_FRACTION = 0.15  # share of training scenes with no object
POSITION_DROP = 0.35  # share of object captions that leave the position out ("a ... circle on a ... background")

FACTORS = ("shape", "colour", "pattern", "size", "position", "bg_colour", "bg_pattern")
FACTOR_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS, "size": tuple(SIZES),
    "position": tuple(POSITIONS), "bg_colour": tuple(BG_COLOURS), "bg_pattern": BG_PATTERNS,
}
OBJECT_FACTORS = ("shape", "colour", "pattern", "size", "position")


@dataclass(frozen=True)
class Scene:
    """One scene's factors. Object fields are None when the scene has no object. `seed` drives the
    continuous nuisances (jitter, pattern phase), so the same Scene always renders the same pixels."""

    bg_colour: str
    bg_pattern: str
    shape: str | None = None
    colour: str | None = None
    pattern: str | None = None
    size: str | None = None
    position: str | None = None
    seed: int = 0

    @property
    def has_object(self) -> bool:
        return self.shape is not None

    def with_background(self, bg_colour: str, bg_pattern: str, seed: int | None = None) -> "Scene":
        return dataclasses.replace(self, bg_colour=bg_colour, bg_pattern=bg_pattern,
                                   seed=self.seed if seed is None else seed)

    def labels(self) -> dict[str, int]:
        """Class index per factor (object factors -1 without an object) and 'present' (0/1)."""
        out = {f: (FACTOR_VALUES[f].index(getattr(self, f)) if getattr(self, f) is not None else -1) for f in FACTORS}
        out["present"] = int(self.has_object)
        return out


# ---------------------------------------------------------------- captions

def object_phrase(scene: Scene) -> str:
    """'a small red striped triangle' (the words a learned concept token replaces)."""
    return f"a {scene.size} {scene.colour} {scene.pattern} {scene.shape}"


def background_phrase(bg_colour: str, bg_pattern: str) -> str:
    return f"a {bg_colour} {bg_pattern} background"


def caption(scene: Scene, with_position: bool = True) -> str:
    """'a small red striped triangle on the left, on a blue checkered background', or for an empty
    scene 'an empty scene, a white wavy background'."""
    background = background_phrase(scene.bg_colour, scene.bg_pattern)
    if not scene.has_object:
        return f"an empty scene, {background}"
    if with_position:
        return f"{object_phrase(scene)} {POSITION_WORDS[scene.position]}, on {background}"
    return f"{object_phrase(scene)} on {background}"


def prompt_on_background(subject: str, bg_colour: str, bg_pattern: str) -> str:
    """The experiment's '[V] on <new background>' prompt, in the training captions' own form."""
    return f"{subject} on {background_phrase(bg_colour, bg_pattern)}"


# ---------------------------------------------------------------- sampling

def sample_scene(rng: np.random.Generator, held_out: str = "exclude", empty_fraction: float = EMPTY_FRACTION) -> Scene:
    """A random scene. held_out: 'exclude' (training), 'only' (held-out pairs only) or 'any'."""
    seed = int(rng.integers(2**31))
    bg = dict(bg_colour=str(rng.choice(tuple(BG_COLOURS))), bg_pattern=str(rng.choice(BG_PATTERNS)))
    if held_out != "only" and rng.random() < empty_fraction:
        return Scene(**bg, seed=seed)
    while True:
        shape, colour = str(rng.choice(SHAPES)), str(rng.choice(tuple(COLOURS)))
        pair_held_out = (shape, colour) in HELD_OUT_PAIRS
        if held_out == "any" or (held_out == "only") == pair_held_out:
            break
    return Scene(**bg, shape=shape, colour=colour, pattern=str(rng.choice(PATTERNS)), size=str(rng.choice(tuple(SIZES))),
                 position=str(rng.choice(tuple(POSITIONS))), seed=seed)


def scenes(seed: int, count: int, held_out: str = "exclude", empty_fraction: float = EMPTY_FRACTION) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, held_out, empty_fraction) for _ in range(count)]


def training_captions(scene_list: list[Scene], seed: int) -> list[str]:
    """Captions as the world model sees them: the position is left out of some object captions,
    so '<object> on <background>' (the experiment's prompt form) is in the training distribution."""
    rng = np.random.default_rng(seed)
    return [caption(s, with_position=rng.random() >= POSITION_DROP) for s in scene_list]


# ---------------------------------------------------------------- rendering

def _tone(rgb: np.ndarray, toward: float, amount: float) -> np.ndarray:
    return rgb * (1 - amount) + toward * amount


def _background(scene: Scene, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = np.asarray(BG_COLOURS[scene.bg_colour]) + rng.uniform(-JITTER_COLOUR, JITTER_COLOUR, 3)
    luminance = float(base @ np.array([0.3, 0.59, 0.11]))
    second = _tone(base, 0.0 if luminance > 0.5 else 1.0, 0.4)  # pattern tone: darker on light, lighter on dark
    ox, oy = rng.uniform(0, 16, 2) * SUPERSAMPLE
    s = SUPERSAMPLE
    if scene.bg_pattern == "plain":
        mask = np.zeros_like(xx, dtype=bool)
    elif scene.bg_pattern == "checkered":
        mask = ((np.floor((xx + ox) / (16 * s)) + np.floor((yy + oy) / (16 * s))) % 2) == 1
    elif scene.bg_pattern == "wavy":
        mask = np.sin(2 * np.pi * (yy + oy + 3 * s * np.sin(2 * np.pi * xx / (24 * s))) / (12 * s)) > 0
    else:
        raise ValueError(scene.bg_pattern)
    return np.where(mask[..., None], second, base)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        half = r * 0.85
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":  # apex up, base at +0.8r
        return (dy <= 0.8 * r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.58)
    if shape == "cross":
        arm = r * 0.38
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(shape)


def _surface(pattern: str, colour: np.ndarray, dx: np.ndarray, dy: np.ndarray, phase: float) -> np.ndarray:
    s = SUPERSAMPLE
    if pattern == "solid":
        return np.broadcast_to(colour, dx.shape + (3,))
    if pattern == "striped":  # diagonal light stripes, period 8 px
        mask = np.floor((dx + dy + phase) / (4 * s)) % 2 == 1
        return np.where(mask[..., None], _tone(colour, 1.0, 0.6), colour)
    if pattern == "dotted":  # dark dots on a 7 px lattice
        gx = (dx + phase) % (7 * s) - 3.5 * s
        gy = (dy + phase) % (7 * s) - 3.5 * s
        mask = gx**2 + gy**2 <= (2.0 * s) ** 2
        return np.where(mask[..., None], _tone(colour, 0.0, 0.65), colour)
    raise ValueError(pattern)


def render(scene: Scene) -> np.ndarray:
    """float32 [64, 64, 3] in [0, 1] (ComfyUI's IMAGE layout without the batch dim)."""
    rng = np.random.default_rng(scene.seed)
    n = SIZE * SUPERSAMPLE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    image = _background(scene, rng, yy, xx)
    if scene.has_object:
        s = SUPERSAMPLE
        cx = (POSITIONS[scene.position] + rng.uniform(-JITTER_POSITION, JITTER_POSITION)) * s
        cy = (32.0 + rng.uniform(-4.0, 4.0)) * s
        radius = (SIZES[scene.size] + rng.uniform(-1.0, 1.0)) * s
        colour = np.asarray(COLOURS[scene.colour]) + rng.uniform(-JITTER_COLOUR, JITTER_COLOUR, 3)
        dx, dy = xx - cx, yy - cy
        mask = _shape_mask(scene.shape, dx, dy, radius)
        surface = _surface(scene.pattern, colour, dx, dy, float(rng.uniform(0, 8 * s)))
        image = np.where(mask[..., None], surface, image)
    image = image.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def render_batch(scene_list: list[Scene]) -> np.ndarray:
    """float32 [N, 64, 64, 3]."""
    return np.stack([render(s) for s in scene_list]) if scene_list else np.zeros((0, SIZE, SIZE, 3), np.float32)


def label_arrays(scene_list: list[Scene]) -> dict[str, np.ndarray]:
    """{factor or 'present': int64 [N]} (object factors are -1 for empty scenes)."""
    rows = [s.labels() for s in scene_list]
    return {k: np.array([r[k] for r in rows], dtype=np.int64) for k in (*FACTORS, "present")}


def iter_chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
