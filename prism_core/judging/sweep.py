"""The checkpoint sweep's decisions: which files belong to the run, what it costs, which step wins.

The paper measured CLIP-T (text alignment) and DINO (concept fidelity) every 40 Stage 2 steps and
picked the step with the best trade-off (Fig. 3; 120 steps for its setting). The sweep does the same
on the user's own checkpoints, with a stated rule instead of an eye: among the trained steps whose
mean CLIP-T stays within `tolerance` of step 0's (the untrained tokens on the base model), the one
with the highest mean DINO.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..formats.lora_file import FORMAT


@dataclass(frozen=True)
class Candidate:
    """A LoRA of the run at one step; step 0 (the base model, no LoRA) has no name."""

    step: int
    lora_name: str | None  # as LoraLoader lists it (relative to the loras folder, '/' separated)


@dataclass(frozen=True)
class SweepPoint:
    """Mean scores of one candidate over the sweep's renders."""

    step: int
    lora_name: str | None
    clip_t: float
    clip_i: float
    dino: float


@dataclass(frozen=True)
class Choice:
    point: SweepPoint
    within_tolerance: bool  # False: no trained step kept CLIP-T within the tolerance (fallback rule used)
    reason: str


def choose_checkpoint(points: list[SweepPoint], tolerance: float) -> Choice:
    """The rule: among trained steps (step > 0) with clip_t >= clip_t(step 0) - tolerance, the highest
    dino (ties: the earlier step, which has drifted less from the base model). When no trained step
    stays within the tolerance, the trained step with the highest clip_t (the least text alignment
    lost), and the reason says so.

    Raises without a step-0 point or without a trained one, or when a needed score is NaN.
    """
    if tolerance < 0:
        raise ValueError(f"clip_t_tolerance is {tolerance}; it must be 0 or more (how much CLIP-T may drop below step 0's).")
    base = [p for p in points if p.step == 0]
    trained = sorted((p for p in points if p.step > 0), key=lambda p: p.step)
    if len(base) != 1 or not trained:
        raise ValueError("the sweep needs step 0 (untrained tokens) and at least one trained checkpoint.")
    if any(math.isnan(v) for p in points for v in (p.clip_t, p.dino)):
        raise ValueError("a CLIP-T or DINO score is missing (NaN), so no step can be chosen.")
    floor = base[0].clip_t - tolerance
    eligible = [p for p in trained if p.clip_t >= floor]
    if eligible:
        best = max(eligible, key=lambda p: (p.dino, -p.step))
        return Choice(best, True, f"step {best.step}: highest DINO ({best.dino:.4f}) among the steps whose CLIP-T stays "
                                  f"within {tolerance:g} of step 0's {base[0].clip_t:.4f} (at least {floor:.4f})")
    best = max(trained, key=lambda p: (p.clip_t, -p.step))
    return Choice(best, False, f"step {best.step}: no trained step kept CLIP-T within {tolerance:g} of step 0's "
                               f"{base[0].clip_t:.4f}, so the one that lost the least text alignment "
                               f"(CLIP-T {best.clip_t:.4f}); consider fewer steps or a lower learning rate")


@dataclass(frozen=True)
class SweepCost:
    """What a sweep will render: candidates x prompts x seeds images, each `steps` sampler steps."""

    candidates: int  # step 0 + the trained steps (the run's checkpoints and its final LoRA)
    prompts: int
    seeds: int
    steps: int

    @property
    def images(self) -> int:
        return self.candidates * self.prompts * self.seeds

    @property
    def sampler_steps(self) -> int:
        return self.images * self.steps

    def describe(self) -> str:
        return (f"{self.candidates} steps (step 0 + {self.candidates - 1} trained) x {self.prompts} prompts x "
                f"{self.seeds} seeds x {self.steps} sampler steps = {self.sampler_steps} sampler steps ({self.images} images)")


def check_cost(cost: SweepCost, cap: int) -> None:
    """Raise, before anything is rendered, when the sweep would take more sampler steps than `cap`."""
    if cost.sampler_steps > cap:
        raise ValueError(f"This sweep would take {cost.describe()}, more than max_sampler_steps {cap}. Lower "
                         "prompt_count, seeds or steps, checkpoint less often (checkpoint_every on Prism LoRA Train), "
                         "or raise max_sampler_steps.")


def header_steps(header: dict[str, str]) -> int:
    return int(header.get("conceptprism.steps", 0))


def header_loss(header: dict[str, str]) -> list[float]:
    return [float(x) for x in json.loads(header.get("conceptprism.loss", "[]"))]


def header_tokens_hash(header: dict[str, str]) -> str | None:
    tokens = header.get("conceptprism.tokens")
    return json.loads(tokens).get("sha256") if tokens else None


def same_run(final: dict[str, str], checkpoint: dict[str, str]) -> bool:
    """True when `checkpoint` is an earlier state of the run that wrote `final`: a ConceptPrism LoRA of
    the same family and token bank, fewer steps, and a loss curve that is the start of the final's
    (each step's loss is recorded in order, so a file from another run or seed differs there)."""
    steps = header_steps(checkpoint)
    return (checkpoint.get("conceptprism.format") == FORMAT
            and checkpoint.get("conceptprism.family") == final.get("conceptprism.family")
            and header_tokens_hash(checkpoint) == header_tokens_hash(final)
            and 0 < steps < header_steps(final)
            and header_loss(checkpoint) == header_loss(final)[:steps])


def run_checkpoints(final: dict[str, str], files: list[tuple[str, dict[str, str]]]) -> list[Candidate]:
    """The checkpoints of the final LoRA's run among `files` ((name, header) pairs, in counter order),
    one per step (the last-listed file of a step wins: a re-run of the same settings writes the same
    weights under the next counter), ordered by step."""
    by_step: dict[int, str] = {}
    for name, header in files:
        if same_run(final, header):
            by_step[header_steps(header)] = name
    return [Candidate(step, by_step[step]) for step in sorted(by_step)]
