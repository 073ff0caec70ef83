"""The LoRA file layout and header, and the loss picture (no ComfyUI needed)."""
import json

import numpy as np
import pytest
import safetensors
import torch

from comfyui_conceptprism.prism_core.formats.lora_file import (
    BaseFamily, LoraWeights, layer_tensors, lora_metadata, read_lora, save_lora, target_from_summary)
from comfyui_conceptprism.prism_core.pictures.loss_plot import MEAN_COLOUR, Curve, draw_curves, moving_average
from comfyui_conceptprism.prism_core.formats.token_bank import LossHistory, PrismTokens

FAMILY = BaseFamily("sd15", False, "sd_v1", "stable-diffusion-v1/lora")


def _weights():
    g = torch.Generator().manual_seed(0)
    tokens = PrismTokens({"clip_l": torch.randn(1, 8, generator=g)}, {"clip_l": torch.randn(2, 3, 8, generator=g)},
                         ["a", ""], ["x.png", "y.png"], {"beta": 0.05}, LossHistory())
    tensors = layer_tensors("lora_unet_a", torch.randn(5, 2, generator=g), torch.randn(2, 7, generator=g), 4.0)
    return LoraWeights(tensors, lora_metadata(FAMILY, 2, 4.0, 40, {"lr": 4e-4}, tokens, [1.0, 0.5])), tokens


def test_kohya_layout_and_string_header_round_trip(tmp_path):
    weights, tokens = _weights()
    assert sorted(weights) == ["lora_unet_a.alpha", "lora_unet_a.lora_down.weight", "lora_unet_a.lora_up.weight"]
    path = save_lora(weights, tmp_path, "sub/concept", "float16")
    assert path.name == "concept_00001_.safetensors"
    with safetensors.safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        assert handle.get_tensor("lora_unet_a.lora_up.weight").dtype == torch.float16
        assert handle.get_tensor("lora_unet_a.alpha").dtype == torch.float32
    assert all(isinstance(v, str) for v in header.values())
    assert header["ss_network_dim"] == "2" and header["conceptprism.steps"] == "40" and header["conceptprism.save_dtype"] == "float16"
    loaded = read_lora(path)
    assert loaded.steps == 40 and loaded.loss == [1.0, 0.5] and loaded.layer_names() == ["lora_unet_a"]
    up, down, alpha = loaded.layer("lora_unet_a")
    torch.testing.assert_close(up, weights["lora_unet_a.lora_up.weight"], rtol=1e-3, atol=1e-3)
    assert alpha == 4.0
    summary = json.loads(header["conceptprism.tokens"])
    assert torch.equal(target_from_summary(summary)["clip_l"], tokens.target["clip_l"])
    assert summary["image_names"] == ["x.png", "y.png"] and len(summary["sha256"]) == 64
    assert save_lora(weights, tmp_path, "sub/concept").name == "concept_00002_.safetensors"  # never overwrites


def test_files_from_elsewhere_are_refused_with_the_reason(tmp_path):
    safetensors.torch.save_file({"a.lora_up.weight": torch.zeros(1, 1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a ConceptPrism LoRA"):
        read_lora(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="save dtype"):
        save_lora(_weights()[0], tmp_path, "y", "int8")


def test_moving_average_equals_a_naive_trailing_mean_skipping_nans():
    values = np.array([1.0, np.nan, 3.0, 4.0, np.nan, 6.0, 7.0])
    got = moving_average(values, 3)
    for i in range(len(values)):
        window = [v for v in values[max(0, i - 2):i + 1] if v == v]
        expected = sum(window) / len(window) if window else np.nan
        assert (np.isnan(got[i]) and np.isnan(expected)) or got[i] == pytest.approx(expected)


def test_each_curve_gets_a_panel_with_its_average_drawn():
    image = draw_curves([Curve("a", [3.0, 2.0, 1.5, 1.0]), Curve("b", [float("nan"), 0.2, 0.1, 0.1])])
    one = draw_curves([Curve("a", [3.0, 2.0])])
    assert image.shape[2] == 3 and image.shape[0] > one.shape[0] and 0 <= image.min() and image.max() <= 1
    dark = np.all(np.abs(image * 255 - np.array(MEAN_COLOUR)) < 1, axis=2)
    half = image.shape[0] // 2
    assert dark[:half].any() and dark[half:].any()  # both panels carry their moving-average line
