"""A study's intermediate results, each computed once, stored in its database and reused: the layer
inventory, the activation ranges, the sensitivity scores and the target's measured tables. A resumed
study, a worker in another process and a read-only query all read what the first run stored.

Every entry follows one rule (`once`): read what is stored; if nothing is, compute it, store it, and
return it. The target tables are keyed by the machine and thread count that measured them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, TypeVar

from quant.config import FULL_PRECISION, TimestepGroups
from search.spec import StudySpec
from storage import Storage

if TYPE_CHECKING:
    from quant.calibrate import ActivationRanges
    from quant.cost import TargetTables
    from quant.layers import Layer
    from quant.scores import Scores
    from workloads.base import Workload

T = TypeVar("T")
Progress = Callable[[str], None]
Json = dict[str, object] | list[object] | str
TABLES = "target_tables"  # the artifact kind of the measured tables


def once(load: Callable[[], T | None], compute: Callable[[], T], store: Callable[[T], None]) -> T:
    """What `load` finds, else `compute`d and `store`d: compute once, store, reuse."""
    found = load()
    if found is not None:
        return found
    value = compute()
    store(value)
    return value


class StudyCache:
    def __init__(self, name: str, spec: StudySpec, storage: Storage, workload: Callable[[], Workload]) -> None:
        self.name, self.spec, self.storage = name, spec, storage
        self._workload = workload  # loaded on first need: reads of a finished study never load the model
        self._layers: list[Layer] | None = None

    def layers(self, progress: Progress = print) -> list[Layer]:
        from quant.layers import Layer, inventory
        from workloads.base import denoiser_inputs

        def compute() -> list[Layer]:
            progress("inventory: one forward with hooks")
            workload = self._workload()
            return inventory(workload.denoiser, denoiser_inputs(workload))

        if self._layers is None:
            self._layers = once(lambda: [Layer(d["fqn"], d["kind"], tuple(d["weight_shape"]), d["params"], d["macs"])
                                         for d in self.storage.get_layers(self.name)] or None,
                                compute, lambda found: self.put_layers(found))
        return self._layers

    def put_layers(self, layers: list[Layer]) -> None:
        self.storage.add_layers(self.name, [asdict(layer) for layer in layers])

    def activation_ranges(self, progress: Progress = print) -> ActivationRanges:
        from quant.calibrate import ActivationRanges, calibrate_activations

        def compute() -> ActivationRanges:
            progress(f"calibration: {self.spec.calibration_samples} images x {self.spec.num_steps} steps")
            from tqdm.auto import tqdm

            wl = self._workload()
            per_step = TimestepGroups.uniform(self.spec.num_steps, self.spec.num_steps)  # serves any grouping
            run = wl.calibration_run(wl.batch(self.spec.calibration_samples, "calibration"))

            def counted(set_step: Callable[[int], None]) -> None:  # a bar over the denoiser calls, with its ETA
                with tqdm(total=self.spec.num_steps, desc="calibration", unit="call", leave=False) as bar:
                    def step(i: int) -> None:
                        bar.update(max(0, i + 1 - bar.n))  # calls begun
                        set_step(i)

                    run(step)

            return calibrate_activations(wl.denoiser, per_step, counted)

        def load() -> ActivationRanges | None:
            stored = self.get_json("activation_ranges")
            return ActivationRanges.from_dict(stored) if isinstance(stored, dict) else None

        return once(load, compute, lambda ranges: self.put_json("activation_ranges", ranges.to_dict()))

    def scores(self, layers: list[Layer], progress: Progress = print) -> list[Scores]:
        """Every score set of the study's estimators, in `spec.estimators` order."""
        from quant.resident import release_freed
        from quant.scores import Scores
        from sensitivity.base import get_estimator

        out: list[Scores] = []
        for name in self.spec.estimators:
            metrics = sorted({s["metric"] for s in self.storage.list_score_sets(self.name) if s["estimator"] == name})
            stored = [Scores.from_table(self.storage.get_scores(self.name, name, m) or {}) for m in metrics]
            if not stored:  # one estimate may hold several metrics' sets (decoupled: quality and alignment)
                progress(f"sensitivity: {name} over {len(layers)} layers x {self.spec.timestep_groups} groups")
                estimator = get_estimator(name, seed=self.spec.seed, **self.spec.estimator_kwargs(name))
                stored = [estimator.estimate(self._workload(), layers, list(self.spec.bits), self.spec.groups)]
                for scores in stored:
                    self.storage.put_scores(self.name, **scores.to_table())
                release_freed()  # the estimator's copies and activations: kept by the process otherwise
            out += stored
        return out

    def tables(self, progress: Progress = print) -> TargetTables | None:
        """What the model costs on the study's target and this machine and thread count, measured once
        (`quant.targets.measure_tables`: per-layer latency and held bytes at every candidate bit pair,
        the rest of the model, the fastest float format); None on a simulating backend, whose runs
        measure nothing. Stored with the study, keyed by the machine that measured it."""
        import torch

        from quant.backends.base import get_backend
        from quant.cost import TargetTables
        from quant.resident import release_freed
        from quant.targets import measure_tables
        from workloads.base import denoiser_inputs

        if get_backend(self.spec.backend).simulates:
            return None
        machine = f"{socket.gethostname()}/{torch.get_num_threads()}t"

        def load() -> TargetTables | None:
            stored = self.get_json(TABLES)
            if not isinstance(stored, dict) or stored.get("machine") != machine:
                return None
            return TargetTables.from_dict(stored["tables"])  # type: ignore[arg-type]

        def compute() -> TargetTables:
            progress(f"target tables: {len(self.layers())} layers x {len(self.spec.bits) + 1} bit pairs on {machine} "
                     f"({self.spec.backend} kernels): latency and held bytes, and the fastest float format")
            workload = self._workload()
            tables = measure_tables(workload.denoiser, denoiser_inputs(workload), [FULL_PRECISION, *self.spec.bits],
                                    self.spec.backend, self.activation_ranges(progress))
            release_freed()  # each applied pair's codes and an fp32 model's bf16 copy
            return tables

        return once(load, compute, lambda t: self.put_json(TABLES, {"machine": machine, "tables": t.to_dict()}))

    def solved_tables(self) -> TargetTables | None:
        """The tables this study solved with (read from the database, never measured), or None."""
        from quant.cost import TargetTables

        stored = self.get_json(TABLES)
        return TargetTables.from_dict(stored["tables"]) if isinstance(stored, dict) else None  # type: ignore[arg-type]

    def get_json(self, kind: str) -> Json | None:
        """The study's latest artifact of `kind`, decoded, or None."""
        stored = self.storage.list_artifacts(self.name, kind=kind)
        if not stored:
            return None
        data = self.storage.get_artifact(max(a.id for a in stored)).data
        value: Json | None = None if data is None else json.loads(data)
        return value

    def put_json(self, kind: str, value: Json) -> None:
        self.storage.put_artifact(self.name, kind, f"{kind}.json", data=json.dumps(value).encode(),
                                  media_type="application/json")
