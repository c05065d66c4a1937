from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyDenoiser(nn.Module):
    """A conv + attention-like linear stack: the layer kinds diffusion denoisers are built from."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(4, 32, 3, padding=1)
        self.proj = nn.Linear(32, 64)
        self.ff = nn.Linear(64, 32)
        self.conv_out = nn.Conv2d(32, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        b, c, hh, ww = h.shape
        t = h.flatten(2).transpose(1, 2)
        t = t + self.ff(nn.functional.silu(self.proj(t)))
        return self.conv_out(t.transpose(1, 2).reshape(b, c, hh, ww))


@pytest.fixture
def tiny() -> TinyDenoiser:
    torch.manual_seed(0)
    return TinyDenoiser().eval()


@pytest.fixture
def tiny_input() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
