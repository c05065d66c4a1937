"""A workload written outside the packages, as a plugin author would: it registers by name and runs
through a whole study with no change to search/ (issue 12's acceptance for the extension kit)."""

from __future__ import annotations

from pathlib import Path

import torch

from workloads.base import register
from workloads.testing import TinyWorkload


@register("toy-workload")
class ToyWorkload(TinyWorkload):
    """The random tiny UNet with its 4-step sampler, under a name of its own."""


def test_toy_workload_runs_a_whole_study(tmp_path: Path) -> None:
    from search.spec import StudySpec
    from search.study import Study

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = StudySpec(model="toy-workload", budget=("wbits=6.5",), estimators=("mse",), timestep_groups=2,
                         num_steps=4, trials=2, eval_samples=2, calibration_samples=2, full_samples=2,
                         baselines=("W8A8",))
        study = Study.create("toy", spec, str(tmp_path / "toy.db"))
        study.run(progress=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    assert study.storage.get_study("toy").state.value == "COMPLETE"
    assert study.front_points()
