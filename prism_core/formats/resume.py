"""Resuming a Stage 2 LoRA: continue only what the file says it is, and keep each run's settings.

A LoRA file records the tokens it was trained with (a hash), its images (names, resolution and a hash
of each image's pixels at that resolution) and, per run, the settings and the steps that run trained.
Resuming with other tokens or other images would continue a different training, so it is refused with
what to connect instead; other seeds or accumulation only change how the next steps sample, so they are
warned about and recorded as a new run. Pure module: standard library and torch only.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

import torch

# Settings that make a continued run differ from the uninterrupted one (warned about, not refused).
COMPARED_SETTINGS = ("seed", "gradient_accumulation", "learning_rate", "weight_decay", "max_grad_norm", "training_dtype",
                     "guidance")


class ResumeMismatchError(ValueError):
    """The LoRA to resume was trained on other tokens or images than the ones connected."""


def pixel_hashes(images: torch.Tensor) -> list[str]:
    """sha256 per image of [N, R, R, 3] pixels in [0, 1] at 8 bits (what the concept set holds, at the
    training resolution; 8 bits so a float rounding in the last bit cannot make the same images differ)."""
    quantised = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return [hashlib.sha256(str(tuple(image.shape)).encode() + image.contiguous().numpy().tobytes()).hexdigest()
            for image in quantised]


def image_record(names: Sequence[str], images: torch.Tensor, resolution: int) -> dict[str, Any]:
    """The header's record of the training images."""
    return {"names": list(names), "resolution": int(resolution), "pixels_sha256": pixel_hashes(images)}


def previous_runs(metadata: dict[str, str]) -> list[dict[str, Any]]:
    """Each earlier run's settings with the steps it trained ("first_step", "last_step"), oldest first. Files
    written before runs were recorded count as one run with their header settings."""
    if "conceptprism.runs" in metadata:
        return json.loads(metadata["conceptprism.runs"])
    settings = json.loads(metadata.get("conceptprism.settings", "{}"))
    return [{**settings, "first_step": 1, "last_step": int(metadata.get("conceptprism.steps", 0))}]


def _tokens_message(label: str, find_banks: Callable[[str], list[str]] | None, sha: str) -> str:
    banks = find_banks(sha) if find_banks is not None else []
    where = (f"the token bank {', '.join(repr(b) for b in banks)} in models/prism_tokens holds them: load it with Load "
             "Prism Tokens and connect that to 'tokens'" if banks else
             "load the token bank you saved from that Stage 1 run (Load Prism Tokens), or set Stage 1 back to the "
             "seed and settings it ran with")
    return (f"resume_from '{label}' was trained with other tokens than the ones connected: Stage 1 has run again since "
            "(e.g. its seed widget is on 'randomize'; set it to 'fixed'), or other tokens were loaded. Connect the tokens "
            f"it was trained with ({where}), or set resume_from to none to train a new LoRA on these tokens.")


def _images_message(label: str, recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    old_names, new_names = recorded["names"], current["names"]
    if old_names != new_names:
        difference = f"it was trained on {old_names}, this concept set has {new_names}"
    elif recorded["resolution"] != current["resolution"]:
        difference = f"it was trained at {recorded['resolution']} px, this concept set is at {current['resolution']} px"
    else:
        changed = [name for name, a, b in zip(new_names, recorded["pixels_sha256"], current["pixels_sha256"]) if a != b]
        if not changed:
            return None
        difference = f"the pixels of {changed} differ from the ones it was trained on"
    return (f"resume_from '{label}' was trained on other images: {difference}. Connect the Load Concept Set with the "
            "folder (or images) and resolution it was trained on, or set resume_from to none to train a new LoRA.")


def check_resume(metadata: dict[str, str], label: str, tokens_sha256: str, images: dict[str, Any],
                 settings: dict[str, Any], find_banks: Callable[[str], list[str]] | None = None) -> list[str]:
    """Raise ResumeMismatchError if the file at `label` was trained on other tokens or images than this
    run's; return warnings for settings that differ from its last run's (empty when it continues exactly).

    find_banks(sha256) names saved token banks holding tokens with that hash (for the fix)."""
    recorded_tokens = json.loads(metadata.get("conceptprism.tokens", "{}")).get("sha256")
    if recorded_tokens != tokens_sha256:
        raise ResumeMismatchError(_tokens_message(label, find_banks, recorded_tokens or ""))
    warnings = []
    if "conceptprism.images" in metadata:
        problem = _images_message(label, json.loads(metadata["conceptprism.images"]), images)
        if problem:
            raise ResumeMismatchError(problem)
    else:
        warnings.append(f"resume_from '{label}' does not record its images' pixels (written by an older version), so "
                        "they could not be compared with this concept set.")
    last = previous_runs(metadata)[-1]
    # Only what both runs record is compared: a setting the model does not read is not recorded (guidance on
    # FLUX.1-schnell), and files written before that rule may still hold it.
    changed = [f"{key} {settings.get(key)} (was {last.get(key)})" for key in COMPARED_SETTINGS
               if key in last and key in settings and last.get(key) != settings.get(key)]
    if changed:
        warnings.append(
            f"resuming '{label}' with other settings than its steps {last['first_step']}-{last['last_step']}: "
            f"{', '.join(changed)}. The next steps are not those of one uninterrupted run (the images, timesteps and "
            "noise follow seed and gradient_accumulation); the file records each run's settings. Set them back to "
            "continue it exactly.")
    return warnings
