"""Stage 1 on real (tiny) ComfyUI models: the losses equal an oracle built from host primitives only,
on each family's native target (eps for SD1.5/SDXL, v for the SD2 v-prediction model)."""
from __future__ import annotations

import pytest
import safetensors.torch
import torch

from host_setup import require_host

require_host()

from conftest import FAMILIES  # noqa: E402
from host_checks import oracle_cond, oracle_native  # noqa: E402
from comfyui_conceptprism.prism_core.training.stage1 import TokenParameters, micro_step_losses  # noqa: E402
from comfyui_conceptprism.prism_core.training.schedule import MicroStep  # noqa: E402
from comfyui_conceptprism.prism_core.host import text  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1_backend import ComfyStage1Backend, encode_latents  # noqa: E402

from host_checks import RES  # noqa: E402


@pytest.mark.parametrize("family", FAMILIES)
def test_rec_and_excl_equal_host_oracle(family, tiny, embedding_root):
    models = tiny(family)
    widths = text.encoder_widths(models.clip)
    g = torch.Generator().manual_seed(3)
    target = {k: torch.randn(1, w, generator=g) * 0.02 for k, w in widths.items()}
    residuals = {k: torch.randn(3, 4, w, generator=g) * 0.02 for k, w in widths.items()}
    # The oracle reads the same vectors as ordinary embedding files.
    safetensors.torch.save_file({k: v.contiguous() for k, v in target.items()}, embedding_root / f"oracle_t_{family}.safetensors")
    safetensors.torch.save_file({k: v[1].contiguous() for k, v in residuals.items()}, embedding_root / f"oracle_r_{family}.safetensors")

    images = torch.rand(3, RES, RES, 3, generator=g)
    step = MicroStep(image=1, anchors=(2, 0), timesteps=(10, 500, 990), noise_seed=1234)
    beta = 0.05
    lengths = text.slot_lengths_for(target, residuals)
    with torch.inference_mode(False):
        latents = encode_latents(models.model, models.vae, images)
        with ComfyStage1Backend(models.model, models.clip, lengths, RES, max_batch=2) as backend:
            params = TokenParameters.from_initial(target, residuals)
            rec, excl = micro_step_losses(backend, latents, params, step, backend.encode_null(), beta, 1.0)
            grads = {k: p.grad.clone() for k, p in params.target.items()}

    with torch.no_grad():
        z = models.model.model.process_latent_in(models.vae.encode(images)).float()
        eps = torch.randn((3, *z.shape[1:]), generator=torch.Generator().manual_seed(1234))
        sigmas = models.model.get_model_object("model_sampling").sigmas[torch.tensor(step.timesteps)].float()
        cond, extra = oracle_cond(models, f"embedding:oracle_t_{family} with embedding:oracle_r_{family}")
        prediction, target = oracle_native(models.model, z[1:2], sigmas[0:1], eps[0:1], cond, extra)
        oracle_rec = ((prediction - target) ** 2).mean()
        res_cond, res_extra = oracle_cond(models, f"embedding:oracle_r_{family}")
        null_cond, null_extra = oracle_cond(models, "")
        gaps = []
        for k, j in enumerate(step.anchors):
            args = (z[j:j + 1], sigmas[1 + k:2 + k], eps[1 + k:2 + k])
            gap = oracle_native(models.model, *args, res_cond, res_extra)[0] - oracle_native(models.model, *args, null_cond, null_extra)[0]
            gaps.append((gap ** 2).mean())
        oracle_excl = torch.stack(gaps).mean()

    assert rec == pytest.approx(float(oracle_rec), rel=1e-4, abs=1e-6)
    assert excl == pytest.approx(float(oracle_excl), rel=1e-4, abs=1e-7)
    assert all(torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads.values())
