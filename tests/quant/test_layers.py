"""Layer inventory: every Linear / Conv2d by FQN, MACs counted per call with forward hooks.

The inventories of real diffusers denoisers (built-in configs, example inputs) are tested with the
model knowledge that builds them, in tests/workloads/test_denoisers.py.
"""

from __future__ import annotations

import torch
from torch import nn

from quant.layers import inventory


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 16)
        self.conv = nn.Conv2d(4, 6, kernel_size=3, padding=1, groups=2)
        self.unused = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        y = self.shared(x) + self.shared(input=x)  # called twice, once by keyword
        return self.norm(y).sum() + self.conv(image).sum()


def test_inventory_counts_every_call_and_lists_unused_layers() -> None:
    layers = inventory(_Toy(), {"x": torch.randn(2, 5, 8), "image": torch.randn(1, 4, 7, 7)})
    assert [(x.fqn, x.kind, x.weight_shape, x.params) for x in layers] == [
        ("shared", "linear", (16, 8), 128),
        ("conv", "conv", (6, 2, 3, 3), 108),
        ("unused", "linear", (3, 3), 9),
    ]
    macs = {x.fqn: x.macs for x in layers}
    assert macs["shared"] == 2 * (2 * 5) * 8 * 16  # twice: tokens * in_features * out_features
    assert macs["conv"] == (1 * 6 * 7 * 7) * (4 // 2) * 3 * 3  # output numel * in/groups * kh * kw
    assert macs["unused"] == 0
