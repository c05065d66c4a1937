"""Tiny random diffusers pipelines built from configs and saved to disk (no hub), once per session.

Each builder writes a real pipeline directory with `save_pretrained` (safetensors), so the tests load
it through exactly the path a user's downloaded pipeline takes. The models are random: the tests
check plumbing (loading, seeds, step hooks, quantization), never image quality.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workloads.random_pipelines import build_pixart, build_sd, build_sdxl

__all__ = ["build_pixart", "build_sd", "build_sdxl"]  # tests import the builders from here

@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("pipelines")
        return {
            "sd": build_sd(root / "sd"),
            "sd2": build_sd(root / "sd2", v2=True),
            "pixart": build_pixart(root / "pixart"),
            "pixart_sigma": build_pixart(root / "pixart_sigma", sigma=True),
            "sdxl": build_sdxl(root / "sdxl"),
        }
    finally:
        torch.set_num_threads(n)
