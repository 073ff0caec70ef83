"""FLUX.1's fixed CLIP-L residual rows are content-free (issue 23 item 9).

With `flux_clip_l: fixed` (the default) the residual tokens' CLIP-L rows are never trained, and CLIP-L feeds only
FLUX's pooled modulation vector. They used to start (and so stay) at the caption's mean final-layer CLIP-L states:
tens of times a word's norm, naming the concept where the exclusion loss cannot remove it. They are now the
vocabulary's mean input embedding (the statistics the target's random draw uses), the same for every caption;
`flux_clip_l: learned` keeps the caption start for CLIP-L too.
"""
from __future__ import annotations

import torch

from host_setup import require_host

require_host()

from host_checks import RES  # noqa: E402
from comfyui_conceptprism.prism_core.concept_input.concept_set import ConceptSet  # noqa: E402
from comfyui_conceptprism.prism_core.training.config import TokenConfig  # noqa: E402
from comfyui_conceptprism.prism_core.training.init import content_free_rows, repeated_vector  # noqa: E402
from comfyui_conceptprism.prism_core.host import text  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals import text_encoders  # noqa: E402
from comfyui_conceptprism.prism_core.host.family import FLUX_FROZEN_ENCODERS  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1 import learn_tokens  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1_backend import ComfyStage1Backend  # noqa: E402

CAPTIONS = (("a red ball on green grass", "a red ball in the snow"),
            ("an old brass key on a velvet cushion", "a brass key hanging from a nail"))


def _concept(captions: tuple[str, ...], seed: int = 0) -> ConceptSet:
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        images = torch.rand(len(captions), RES, RES, 3, generator=g)
    return ConceptSet(images, tuple(f"{i}.png" for i in range(len(captions))), captions, RES, "test")


def _vocabulary(clip) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLIP-L's mean input embedding [768], the norm of each vocabulary row [V])."""
    table = text_encoders.input_embedding_table(clip, "clip_l").detach().float()
    return table.mean(dim=0), table.norm(dim=1)


def _word_sized(row: torch.Tensor, row_norms: torch.Tensor) -> bool:
    """No larger than a typical vocabulary row (the median row norm)."""
    return float(row.norm()) <= float(row_norms.median())


def test_fixed_rows_are_the_vocabulary_mean_whatever_the_caption(tiny):
    """The pack's initialisation pieces on the tiny FLUX: the caption starts differ and are far larger than a
    word; content_free_rows makes the fixed CLIP-L rows the vocabulary mean for both captions and leaves the
    trained T5 rows at their caption start."""
    models = tiny("flux")
    mean, row_norms = _vocabulary(models.clip)
    lengths = text.slot_lengths_for({k: torch.empty(1, w) for k, w in text.encoder_widths(models.clip).items()},
                                    {k: torch.empty(1, 2, w) for k, w in text.encoder_widths(models.clip).items()})
    with torch.inference_mode(False):
        with ComfyStage1Backend(models.model, models.clip, lengths, RES, guidance=3.5) as backend:
            stats = backend.vocabulary_statistics()
            starts = [repeated_vector(backend.caption_embedding(c[0]), 2) for c in CAPTIONS]
    torch.testing.assert_close(stats["clip_l"][0], mean)
    # What the fixed rows used to be: caption-dependent and tens of times a word's norm.
    assert not torch.allclose(starts[0]["clip_l"], starts[1]["clip_l"])
    assert float(starts[0]["clip_l"][0].norm()) > 10 * float(row_norms.median())
    fixed = [content_free_rows({k: v.unsqueeze(0) for k, v in s.items()}, stats, FLUX_FROZEN_ENCODERS) for s in starts]
    for rows, start in zip(fixed, starts):
        assert torch.equal(rows["clip_l"][0], mean.expand(2, -1))
        assert torch.equal(rows["t5xxl"][0], start["t5xxl"])  # trained rows keep the paper's caption start
    assert torch.equal(fixed[0]["clip_l"], fixed[1]["clip_l"])
    assert _word_sized(mean, row_norms)


def test_stage1_fixed_clip_l_residual_rows_are_the_same_for_two_captions(tiny):
    """Through learn_tokens on the tiny FLUX: two concept sets with different captions end with the same fixed
    CLIP-L residual rows, equal to the vocabulary's mean embedding, with a word-sized norm; their trained T5 rows
    differ (caption start). flux_clip_l learned (no frozen encoder) still starts CLIP-L from the caption."""
    models = tiny("flux")
    mean, row_norms = _vocabulary(models.clip)
    config = TokenConfig(steps=1, residual_length=2, seed=0)
    with torch.inference_mode():
        banks = [learn_tokens(models.model, models.clip, models.vae, _concept(c), config) for c in CAPTIONS]
    for bank in banks:
        assert list(bank.settings["frozen_encoders"]) == ["clip_l"]
        assert torch.equal(bank.residuals["clip_l"], mean.expand_as(bank.residuals["clip_l"]))
    assert torch.equal(banks[0].residuals["clip_l"], banks[1].residuals["clip_l"])
    assert not torch.allclose(banks[0].residuals["t5xxl"], banks[1].residuals["t5xxl"])
    assert _word_sized(banks[0].residuals["clip_l"][0, 0], row_norms)
    with torch.inference_mode():
        learned = learn_tokens(models.model, models.clip, models.vae, _concept(CAPTIONS[0]),
                               TokenConfig(steps=1, residual_length=2, seed=0, frozen_encoders=()))
    assert float(learned.residuals["clip_l"][0, 0].norm()) > 10 * float(row_norms.median())
