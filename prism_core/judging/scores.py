"""CLIP-T, CLIP-I and DINO from embeddings: the paper's three numbers (Sec. 4.2, Table 1, Fig. 3).

- CLIP-T: cosine between the CLIP text embedding of the prompt (learned token replaced by the
  class noun) and the CLIP image embedding of the generated image.
- CLIP-I: cosine between the CLIP image embeddings of the generated image and of each reference
  image, averaged over the references.
- DINO: the same with DINOv2 image embeddings (the CLS token after the final norm).
Embeddings come from the host (prism_core.host.scoring); this module only does the arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

METRICS = ("CLIP-T", "CLIP-I", "DINO")
NAN = float("nan")


@dataclass(frozen=True)
class ImageScore:
    """One generated image's numbers; NaN where the model for a metric was not given."""

    prompt: str  # the prompt as CLIP-T read it (class noun in place of the placeholder)
    clip_t: float
    clip_i: float
    dino: float

    def value(self, metric: str) -> float:
        return {"CLIP-T": self.clip_t, "CLIP-I": self.clip_i, "DINO": self.dino}[metric]


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] float64 cosines between the rows of a [N, D] and b [M, D]. Raises on a zero-length row
    (no direction, no cosine) naming which side it is."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"cosine_matrix needs [N, D] and [M, D], got {tuple(a.shape)} and {tuple(b.shape)}.")
    a, b = a.double(), b.double()
    for name, x in (("first", a), ("second", b)):
        norms = x.norm(dim=1)
        if not torch.isfinite(norms).all() or (norms == 0).any():
            raise ValueError(f"an embedding of the {name} set is zero or not finite, so it has no cosine.")
    return (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T


def clip_t_prompt(prompt: str, placeholder: str, class_noun: str) -> str:
    """The text CLIP-T compares: `prompt` with every `placeholder` replaced by `class_noun`.

    Raises when a placeholder is present but no class noun is given, and when an ``embedding:`` word
    is left (CLIP cannot read a learned vector either).
    """
    noun = class_noun.strip()
    if placeholder and placeholder in prompt:
        if not noun:
            raise ValueError(f"class_noun is empty, but the prompt '{prompt}' has {placeholder}: CLIP cannot read the "
                             "learned token, so CLIP-T reads the class noun in its place. Type the concept's class, "
                             "e.g. dog, backpack or vase.")
        prompt = prompt.replace(placeholder, noun)
    if "embedding:" in prompt:
        raise ValueError(f"the prompt '{prompt}' holds an embedding: word, which CLIP cannot read. Write "
                         f"{placeholder or '[V]'} where the concept goes and set class_noun.")
    return " ".join(prompt.split())


def prompts_per_image(text: str, n_images: int) -> list[str]:
    """One prompt per generated image from a prompts box: one line per image, or a single line for all."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        return lines * n_images
    if len(lines) != n_images:
        raise ValueError(f"prompts has {len(lines)} lines for {n_images} images: write one line per image (in batch "
                         "order) or a single line for all of them.")
    return lines


def mean_cosine_to_references(images: torch.Tensor, references: torch.Tensor) -> list[float]:
    """Per generated image, the mean cosine to the reference embeddings (CLIP-I or DINO)."""
    return [float(x) for x in cosine_matrix(images, references).mean(dim=1)]


def image_scores(prompts: list[str], text: torch.Tensor | None, clip_images: torch.Tensor | None,
                 clip_references: torch.Tensor | None, dino_images: torch.Tensor | None,
                 dino_references: torch.Tensor | None) -> list[ImageScore]:
    """Rows of numbers from embeddings. text [N, D] pairs with clip_images [N, D] (CLIP-T);
    clip_images with clip_references [R, D] (CLIP-I); dino_images [N, E] with dino_references [R, E]
    (DINO). A None pair gives NaN for its metric."""
    n = len(prompts)
    clip_t = [NAN] * n
    if text is not None and clip_images is not None:
        clip_t = [float(x) for x in cosine_matrix(text, clip_images).diagonal()]
    clip_i = mean_cosine_to_references(clip_images, clip_references) if clip_references is not None else [NAN] * n
    dino = mean_cosine_to_references(dino_images, dino_references) if dino_images is not None else [NAN] * n
    return [ImageScore(p, t, i, d) for p, t, i, d in zip(prompts, clip_t, clip_i, dino)]


def mean_score(rows: list[ImageScore], metric: str) -> float:
    """Mean of one metric over rows (NaN when it was not computed)."""
    values = [row.value(metric) for row in rows]
    return NAN if not values or any(math.isnan(v) for v in values) else sum(values) / len(values)


def format_value(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def scores_text(rows: list[ImageScore]) -> str:
    """Tab-separated table (header, one line per image, a mean line) for a text output or a file."""
    lines = ["image\t" + "\t".join(METRICS) + "\tprompt"]
    lines += [f"{i}\t" + "\t".join(format_value(row.value(m)) for m in METRICS) + f"\t{row.prompt}"
              for i, row in enumerate(rows)]
    lines.append("mean\t" + "\t".join(format_value(mean_score(rows, m)) for m in METRICS) + "\t")
    return "\n".join(lines)
