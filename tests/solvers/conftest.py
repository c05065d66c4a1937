from __future__ import annotations

import random

import pytest

from quant.config import Bits, TimestepGroups
from quant.layers import Layer
from quant.scores import Scores

GROUPS = TimestepGroups.from_spans([(0, 4), (5, 19)])  # 5 and 15 steps: unequal step weights
BITS = tuple(Bits.parse(b) for b in ("W4A8", "W8A8", "W4A16", "W8A16"))


def make_layers(n_blocks: int = 2) -> list[Layer]:
    layers = [Layer("conv_in", "conv", (64, 4, 3, 3), 2304, 2304 * 4096)]
    for i in range(n_blocks):
        for j, name in enumerate(("attn1.to_q", "attn1.to_k", "attn1.to_v", "ff.proj")):
            out = 128 * (j // 3 + 1)
            layers.append(Layer(f"blocks.{i}.{name}", "linear", (out, 128), out * 128, out * 128 * 1024))
    layers.append(Layer("conv_out", "conv", (4, 64, 3, 3), 2304, 2304 * 4096))
    return layers


def make_scores(layers: list[Layer], groups: TimestepGroups = GROUPS, bits: tuple[Bits, ...] = BITS,
                seed: int = 0, metric: str = "quality") -> Scores:
    rng = random.Random(seed)
    values = {}
    for layer in layers:
        s_w, s_a = rng.lognormvariate(0, 1), rng.lognormvariate(-1, 1)
        for g in range(len(groups)):
            for b in bits:
                act = 0.0 if b.a == 16 else s_a * 4.0 ** (-(b.a - 8))
                values[(layer.fqn, g, b)] = (2 - g / len(groups)) * (s_w * 4.0 ** (-(b.w - 4)) + act) * rng.uniform(0.8, 1.2)
    return Scores("test", metric, groups, values)  # type: ignore[arg-type]


@pytest.fixture
def layers() -> list[Layer]:
    return make_layers()


@pytest.fixture
def scores(layers: list[Layer]) -> Scores:
    return make_scores(layers)
