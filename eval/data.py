"""The fixed data sets of the eval, each a pure function of its seed (cached under artifacts/cache/)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import world
from host import ARTIFACTS

CACHE = ARTIFACTS / "cache"

# name: (seed, count, held_out, empty_fraction). World-model data never holds a HELD_OUT_PAIRS object;
# the classifiers see every combination (they are the ruler, not the subject).
SPLITS: dict[str, tuple[int, int, str, float]] = {
    "world_train": (1, 40000, "exclude", world.EMPTY_FRACTION),
    "classifier_train": (3, 24000, "any", world.EMPTY_FRACTION),
    "classifier_test": (4, 3000, "any", world.EMPTY_FRACTION),
}


@dataclass(frozen=True)
class Split:
    scenes: list[world.Scene]
    images: np.ndarray  # uint8 [N, 64, 64, 3]
    labels: dict[str, np.ndarray]

    def float_images(self, index: np.ndarray | slice) -> np.ndarray:
        return self.images[index].astype(np.float32) / 255.0


def load_split(name: str) -> Split:
    """Scenes, rendered pixels and labels of a named split; pixels are cached as uint8 (rendering
    40k scenes takes minutes, reading them back a second)."""
    seed, count, held_out, empty = SPLITS[name]
    scene_list = world.scenes(seed, count, held_out, empty)
    path = CACHE / f"{name}.npy"
    if path.is_file():
        images = np.load(path)
    else:
        images = np.concatenate([(world.render_batch(chunk) * 255.0).round().astype(np.uint8)
                                 for chunk in world.iter_chunks(scene_list, 1000)])
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, images)
    return Split(scene_list, images, world.label_arrays(scene_list))
