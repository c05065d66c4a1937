from __future__ import annotations

import math

import torch

from workloads.base import Generation
from workloads.metrics import fidelity, psnr_db, sqnr_db, ssim


def test_metrics_on_known_perturbations() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(8, 1, 16, 16, generator=g)
    small = (ref + 0.01 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    large = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    assert psnr_db(ref, ref) == math.inf and sqnr_db(ref, ref) == math.inf
    assert 38 < psnr_db(ref, small) < 42  # noise std 0.01 -> MSE ~1e-4 -> ~40 dB
    assert psnr_db(ref, small) > psnr_db(ref, large) + 15
    assert ssim(ref, ref) > 0.99999 > ssim(ref, small) > ssim(ref, large)
    # SQNR = 10 log10(E[ref^2] / E[noise^2]); E[U(0,1)^2] = 1/3
    assert abs(sqnr_db(ref, ref + 0.01) - 10 * math.log10((1 / 3) / 1e-4)) < 0.5


def test_fidelity_reports_step_sqnr_only_when_recorded() -> None:
    ref = Generation(torch.rand(2, 1, 8, 8), [torch.ones(2, 3), torch.ones(2, 3)])
    test = Generation(ref.images * 0.9, [torch.ones(2, 3) * 1.1, torch.ones(2, 3)])
    out = fidelity(ref, test)
    assert set(out) == {"psnr_db", "ssim", "sqnr_db"}
    assert abs(out["sqnr_db"] - 10 * math.log10(12 / (6 * 0.01))) < 1e-4  # float32 1.1
    assert "sqnr_db" not in fidelity(Generation(ref.images), Generation(test.images))
