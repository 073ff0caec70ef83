"""Training on a host whose loaders hand out dynamic-VRAM patchers (upstream ModelPatcherDynamic).

Neither release the tests run has one, and on the CPU upstream falls back to the plain patcher, so
these tests stand in for it with subclasses of the host's own ModelPatcher and CLIP that behave as
upstream's do towards a trainer (read in upstream comfy/model_patcher.py and comfy/sd.py at commit
0f1fa67a): `is_dynamic()` is True, a plain `clone()` stays dynamic and shares the modules,
`clone(disable_dynamic=True)` reloads the model into a plain ModelPatcher by calling what the loader
recorded in `cached_patcher_init` (here: a rebuild of the same tiny model), and CLIP.clone(disable_dynamic=True) keeps the old
cond_stage_model. Unverified on a GPU; this proves the pack's decisions, not upstream's streaming.
"""
from __future__ import annotations

import pytest
import torch

from host_setup import require_host

require_host()

import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402

import tiny_models  # noqa: E402
from host_checks import RES, module_state  # noqa: E402
from comfyui_conceptprism.prism_core.concept_input.concept_set import ConceptSet  # noqa: E402
from comfyui_conceptprism.prism_core.training.config import TokenConfig  # noqa: E402
from comfyui_conceptprism.prism_core.host.internals import training_guard  # noqa: E402
from comfyui_conceptprism.prism_core.host.stage1 import learn_tokens  # noqa: E402


class StandInDynamicPatcher(comfy.model_patcher.ModelPatcher):
    """What a trainer sees of upstream's ModelPatcherDynamic."""

    def is_dynamic(self):
        return True

    def clone(self, disable_dynamic=False):
        if not disable_dynamic:
            n = super().clone()
            n.__class__ = StandInDynamicPatcher
            n.cached_patcher_init = getattr(self, "cached_patcher_init", None)
            return n
        reload, args = self.cached_patcher_init
        return reload(*args)


class StandInDynamicCLIP(comfy.sd.CLIP):
    def clone(self, disable_dynamic=False):
        n = comfy.sd.CLIP(no_init=True)
        n.patcher = self.patcher.clone(disable_dynamic=disable_dynamic) if disable_dynamic else self.patcher.clone()
        n.cond_stage_model = self.cond_stage_model  # as upstream: the old model stays here
        n.tokenizer, n.layer_idx = self.tokenizer, self.layer_idx
        n.tokenizer_options = self.tokenizer_options.copy()
        n.use_clip_schedule = getattr(self, "use_clip_schedule", False)
        n.apply_hooks_to_conds = getattr(self, "apply_hooks_to_conds", None)
        if not disable_dynamic:
            n.__class__ = StandInDynamicCLIP
        return n


def dynamic_twins(models, recorded=True):
    """(MODEL, CLIP) sharing the tiny models' modules, as dynamic patchers; their recorded reload
    rebuilds the same tiny models (same values, new modules, plain patchers)."""
    model = StandInDynamicPatcher(models.model.model, models.model.load_device, models.model.offload_device)
    clip = models.clip.clone()
    clip.__class__ = StandInDynamicCLIP
    clip.patcher = StandInDynamicPatcher(models.clip.patcher.model, models.clip.patcher.load_device,
                                         models.clip.patcher.offload_device)
    model.cached_patcher_init = (lambda: tiny_models.build(models.family).model, ()) if recorded else None
    clip.patcher.cached_patcher_init = (lambda: tiny_models.build(models.family).clip.patcher, ()) if recorded else None
    return model, clip


def _concept():
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        images = torch.rand(3, RES, RES, 3, generator=g)
    return ConceptSet(images, ("0.png", "1.png", "2.png"), ("a red ball", "a red ball on a table", "a red ball in snow"),
                      RES, "test")


def test_ordinary_patchers_are_not_dynamic(tiny):
    models = tiny("sd15")
    assert not training_guard.is_dynamic(models.model) and not training_guard.is_dynamic(models.clip.patcher)
    assert training_guard.static_patcher(models.model) is models.model
    assert training_guard.static_clip(models.clip) is models.clip


def test_dynamic_model_trains_on_a_reloaded_plain_copy_with_the_same_result(tiny):
    models = tiny("sd15")
    model, clip = dynamic_twins(models)
    state = (module_state(models.model.model), module_state(models.clip.cond_stage_model))
    config = TokenConfig(steps=2, gradient_accumulation=1, residual_length=2)

    with torch.inference_mode(False):
        with training_guard.loaded_training_clones(model, clip) as (train_model, train_clip):
            assert not training_guard.is_dynamic(train_model) and not training_guard.is_dynamic(train_clip.patcher)
            assert train_model.model is not models.model.model  # the reloaded copy, not the streamed modules
            assert train_clip.cond_stage_model is train_clip.patcher.model is not models.clip.cond_stage_model
            # Training patches (out-of-place CLIP forwards) land on the copy, never on the incoming modules.
            assert module_state(models.clip.cond_stage_model) == state[1]

    with torch.inference_mode():
        dynamic = learn_tokens(model, clip, models.vae, _concept(), config)
    assert (module_state(models.model.model), module_state(models.clip.cond_stage_model)) == state
    with torch.inference_mode():
        plain = learn_tokens(models.model, models.clip, models.vae, _concept(), config)
    assert all(torch.equal(dynamic.target[k], plain.target[k]) for k in plain.target)
    assert all(torch.equal(dynamic.residuals[k], plain.residuals[k]) for k in plain.residuals)


@pytest.mark.parametrize("which", ["model", "clip"])
def test_dynamic_patcher_without_a_reload_path_is_refused(tiny, which):
    models = tiny("sd15")
    model, clip = dynamic_twins(models, recorded=False)
    if which == "model":
        clip = models.clip
    else:
        model = models.model
    with torch.inference_mode(), pytest.raises(RuntimeError, match="--disable-dynamic-vram") as error:
        learn_tokens(model, clip, models.vae, _concept(), TokenConfig(steps=1))
    assert ("MODEL" if which == "model" else "CLIP") in str(error.value)
