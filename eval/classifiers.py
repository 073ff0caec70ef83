"""Attribute classifiers: one small CNN with a head per factor of the world (the eval's ruler).

Heads: shape, colour, pattern, size, position (object factors, only meaningful when an object is
present), bg_colour, bg_pattern, and present (object or not).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import world

HEADS: dict[str, int] = {**{f: len(world.FACTOR_VALUES[f]) for f in world.FACTORS}, "present": 2}


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


class AttributeNet(nn.Module):
    """[B, 3, 64, 64] in [0, 1] -> {head: logits [B, classes]}. The final 8x8 map is flattened (not
    pooled) so that position survives to the heads."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_block(3, 24), _block(24, 48), _block(48, 64), nn.Conv2d(64, 16, 1), nn.ReLU())
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 192), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(192, n) for name, n in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(self.features(x * 2.0 - 1.0))
        return {name: head(h) for name, head in self.heads.items()}


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[B, 64, 64, 3] (uint8 or float in [0, 1], ComfyUI's IMAGE layout) -> [B, 3, 64, 64] float."""
    x = torch.as_tensor(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict(net: AttributeNet, images: np.ndarray | torch.Tensor, batch: int = 256) -> dict[str, np.ndarray]:
    """{head: predicted class index int64 [N]} for IMAGE-layout pixels."""
    net.eval()
    outs: dict[str, list[np.ndarray]] = {name: [] for name in HEADS}
    for start in range(0, len(images), batch):
        logits = net(to_input(images[start:start + batch]))
        for name, value in logits.items():
            outs[name].append(value.argmax(dim=1).numpy())
    return {name: np.concatenate(v) for name, v in outs.items()}


def accuracy(predicted: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-head accuracy; object heads are scored only on scenes that have an object."""
    has_object = labels["present"] == 1
    out = {}
    for name in HEADS:
        mask = has_object if name in world.OBJECT_FACTORS else np.ones_like(has_object)
        out[name] = float((predicted[name][mask] == labels[name][mask]).mean()) if mask.any() else float("nan")
    return out


def load(path: Path) -> AttributeNet:
    from safetensors.torch import load_file
    net = AttributeNet()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return net.eval()
