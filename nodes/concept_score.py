"""PrismConceptScore: the paper's CLIP-T, CLIP-I and DINO numbers for generated images of a concept."""
from __future__ import annotations

import torch

from ..prism_core.host.internals.contract import DINO, SCORING, require
from ..prism_core.host.scoring import MATCHING_PAIRS, score_images
from ..prism_core.judging.score_table import Table, draw_table
from ..prism_core.judging.scores import METRICS, format_value, mean_score, prompts_per_image, scores_text
from .types import CATEGORY

CLIP_TEXT_TIP = ("The text half of the CLIP vision model, for CLIP-T: its pooled output must be the projected text "
                 f"embedding of the same CLIP. Pairs that match: {MATCHING_PAIRS}. Not an SD1.x checkpoint's CLIP "
                 "(it has no text projection).")
CLIP_VISION_TIP = "A CLIP vision model from Load CLIP Vision (CLIP-I, and CLIP-T with clip)."
DINO_TIP = ("DINOv2 from Load CLIP Vision (ComfyUI recognises DINOv2 large and giant, run at 518 px; e.g. "
            "facebook/dinov2-large's model.safetensors in models/clip_vision). The paper's DINO score.")


class PrismConceptScore:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "IMAGE", "STRING")
    RETURN_NAMES = ("clip_t", "clip_i", "dino", "table", "per_image")
    OUTPUT_TOOLTIPS = (
        "Mean CLIP-T (prompt text vs image cosine; NaN without clip).",
        "Mean CLIP-I (image vs each reference image, CLIP; NaN without clip_vision).",
        "Mean DINO (image vs each reference image, DINOv2; NaN without dino).",
        "The numbers as a picture: one row per image with its thumbnail, and the means.",
        "The numbers as tab-separated text: one line per image, then the means.",
    )
    FUNCTION = "score"
    DESCRIPTION = ("Scores generated images of a learned concept as the paper does: CLIP-T (text alignment) and "
                   "CLIP-I / DINO (concept fidelity). Numbers are comparable within your runs, not with the paper's "
                   "Table 1 (different DINO model, unmasked references).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The generated images to judge (a batch)."}),
                "prompts": ("STRING", {"multiline": True, "default": "a photo of [V] on the beach", "tooltip": "The prompts the images were generated from: one line per image (batch order), or one line for all."}),
                "class_noun": ("STRING", {"default": "", "tooltip": "The concept's class, e.g. dog. CLIP cannot read the learned token, so CLIP-T reads this word where the placeholder is (as DreamBench does)."}),
                "placeholder": ("STRING", {"default": "[V]", "tooltip": "The text in the prompts that stands for the learned token."}),
                "reference_images": ("IMAGE", {"tooltip": "The concept's own images (e.g. Load Concept Set's image output), for CLIP-I and DINO."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": CLIP_TEXT_TIP}),
                "clip_vision": ("CLIP_VISION", {"tooltip": CLIP_VISION_TIP}),
                "dino": ("CLIP_VISION", {"tooltip": DINO_TIP}),
            },
        }

    def score(self, images, prompts, class_noun, placeholder, reference_images, clip=None, clip_vision=None, dino=None):
        require("Prism Concept Score", *((SCORING,) if clip is not None or clip_vision is not None else ()),
                *((DINO,) if dino is not None else ()))
        rows = score_images(images, prompts_per_image(prompts, images.shape[0]), reference_images, placeholder,
                            class_noun, clip=clip, clip_vision=clip_vision, dino=dino)
        means = [mean_score(rows, m) for m in METRICS]
        table = Table(
            title=f"Prism Concept Score: {len(rows)} images, {reference_images.shape[0]} references",
            header=["#", *METRICS, "prompt (as CLIP-T reads it)"],
            rows=[[str(i), *(format_value(r.value(m)) for m in METRICS), r.prompt] for i, r in enumerate(rows)]
            + [["mean", *(format_value(v) for v in means), ""]],
            thumbnails=[image.cpu().numpy() for image in images], footer_rows=1)
        picture = torch.from_numpy(draw_table(table))[None]
        return (*means, picture, scores_text(rows))
