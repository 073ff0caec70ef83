"""The experiment's metrics (protocol.md, "Metrics"), from classifier predictions. Pure numpy."""
from __future__ import annotations

import numpy as np

import world

CONCEPT_ATTRIBUTES = ("shape", "colour", "pattern", "size")


def _index(factor: str, value: str) -> int:
    return world.FACTOR_VALUES[factor].index(value)


def _attribute_hits(predicted: dict[str, np.ndarray], attributes: dict[str, str]) -> dict[str, np.ndarray]:
    """bool [N] per concept attribute: the object is seen and the attribute is the concept's."""
    present = predicted["present"] == 1
    return {a: (predicted[a] == _index(a, attributes[a])) & present for a in CONCEPT_ATTRIBUTES}


def fidelity_per_image(predicted: dict[str, np.ndarray], attributes: dict[str, str]) -> np.ndarray:
    """float [N]: 0 if no object is seen, else the fraction of the concept's attributes (shape, colour,
    pattern, size) recovered."""
    hits = _attribute_hits(predicted, attributes)
    return np.mean([hits[a] for a in CONCEPT_ATTRIBUTES], axis=0)


def _background_hits(predicted: dict[str, np.ndarray], backgrounds: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(bool [N], bool [N]): background colour, background pattern as in backgrounds[k] for image k."""
    colour = predicted["bg_colour"] == np.array([_index("bg_colour", c) for c, _ in backgrounds])
    pattern = predicted["bg_pattern"] == np.array([_index("bg_pattern", p) for _, p in backgrounds])
    return colour, pattern


def alignment_per_image(predicted: dict[str, np.ndarray], backgrounds: list[tuple[str, str]]) -> np.ndarray:
    """float [N]: the mean of (bg colour as prompted, bg pattern as prompted), image k prompted with backgrounds[k]."""
    colour, pattern = _background_hits(predicted, backgrounds)
    return (colour.astype(float) + pattern) / 2


def concept_fidelity(predicted: dict[str, np.ndarray], attributes: dict[str, str]) -> dict[str, float]:
    """The mean of `fidelity_per_image` ('fidelity'), the per-attribute rates (images without a seen
    object count as misses for every attribute) and the object-present rate."""
    hits = _attribute_hits(predicted, attributes)
    out = {"fidelity": float(fidelity_per_image(predicted, attributes).mean()), "present": float((predicted["present"] == 1).mean())}
    out.update({f"fid_{a}": float(hits[a].mean()) for a in CONCEPT_ATTRIBUTES})
    return out


def background_match(predicted: dict[str, np.ndarray], backgrounds: list[tuple[str, str]]) -> dict[str, float]:
    """Text alignment: 'alignment' is the mean of `alignment_per_image`, 'alignment_both' the rate of
    both right, 'align_colour' / 'align_pattern' the rates of each."""
    colour, pattern = _background_hits(predicted, backgrounds)
    return {"alignment": float(alignment_per_image(predicted, backgrounds).mean()), "alignment_both": float((colour & pattern).mean()),
            "align_colour": float(colour.mean()), "align_pattern": float(pattern.mean())}


def residual_alone(predicted: dict[str, np.ndarray], backgrounds: list[tuple[str, str]]) -> dict[str, float]:
    """What '<t_res(i)>' alone draws: 'res_no_object' = rate of no object; 'res_background' = mean match
    of image i's background (colour and pattern averaged); 'res_score' = no object and both right."""
    no_object = predicted["present"] == 0
    colour, pattern = _background_hits(predicted, backgrounds)
    return {"res_no_object": float(no_object.mean()), "res_background": float(alignment_per_image(predicted, backgrounds).mean()),
            "res_score": float((no_object & colour & pattern).mean())}


def bootstrap_difference(a: np.ndarray, b: np.ndarray, resamples: int = 10000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """(mean of a - b, lower, upper): percentile bootstrap over paired units (same concept and seed)."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(diff.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
