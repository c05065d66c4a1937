"""A study's intermediate results, each computed once, stored in its database and reused: the layer
inventory, the activation ranges, the sensitivity scores and the latency table. A resumed study, a
worker in another process and a read-only query all read what the first run stored.

Every entry follows one rule (`once`): read what is stored; if nothing is, compute it, store it, and
return it. Only the latency table is shared between studies (per model, backend and machine).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, TypeVar

from quant.config import FULL_PRECISION, Bits, TimestepGroups
from search.spec import StudySpec
from storage import Storage

if TYPE_CHECKING:
    from quant.calibrate import ActivationRanges
    from quant.cost import LatencyTable
    from quant.layers import Layer
    from quant.scores import Scores
    from workloads.base import Workload

T = TypeVar("T")
Progress = Callable[[str], None]
Json = dict[str, object] | list[object] | str


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
            wl = self._workload()
            per_step = TimestepGroups.uniform(self.spec.num_steps, self.spec.num_steps)  # serves any grouping
            return calibrate_activations(wl.denoiser, per_step,
                                         wl.calibration_run(wl.batch(self.spec.calibration_samples, "calibration")))

        def load() -> ActivationRanges | None:
            stored = self.get_json("activation_ranges")
            return ActivationRanges.from_dict(stored) if isinstance(stored, dict) else None

        return once(load, compute, lambda ranges: self.put_json("activation_ranges", ranges.to_dict()))

    def scores(self, layers: list[Layer], progress: Progress = print) -> list[Scores]:
        """Every score set of the study's estimators, in `spec.estimators` order."""
        from quant.scores import Scores
        from sensitivity.base import get_estimator

        out: list[Scores] = []
        for name in self.spec.estimators:
            metrics = sorted({s["metric"] for s in self.storage.list_score_sets(self.name) if s["estimator"] == name})
            stored = [Scores.from_table(self.storage.get_scores(self.name, name, m) or {}) for m in metrics]
            if not stored:  # one estimate may hold several metrics' sets (decoupled: quality and alignment)
                progress(f"sensitivity: {name} over {len(layers)} layers x {self.spec.timestep_groups} groups")
                estimator = get_estimator(name, seed=self.spec.seed)
                stored = [estimator.estimate(self._workload(), layers, list(self.spec.bits), self.spec.groups)]
                for scores in stored:
                    self.storage.put_scores(self.name, **scores.to_table())
            out += stored
        return out

    def latency_table(self, progress: Progress = print) -> LatencyTable:
        """Per-layer seconds per denoiser forward at each candidate bit-width on this machine and thread
        count (quant.latency), measured once for every study of the model and backend. The study records
        which machine's table it solved with (`solved_latency_table`)."""
        import torch

        from quant.latency import measure_latency
        from workloads.base import denoiser_inputs

        machine = f"{socket.gethostname()}/{torch.get_num_threads()}t"
        wanted = {FULL_PRECISION, *self.spec.bits}
        if self.get_json("latency_machine") is None:
            self.put_json("latency_machine", machine)

        def compute() -> LatencyTable:
            progress(f"latency table: {len(self.layers())} layers x {len(wanted)} bit-widths on {machine}")
            workload = self._workload()
            inputs = denoiser_inputs(workload)
            return measure_latency(workload.denoiser, lambda: workload.denoiser(**inputs), sorted(wanted),
                                   self.spec.backend, self.activation_ranges(progress))

        def complete() -> LatencyTable | None:
            table = self._stored_latency(machine)
            return table if table and all(wanted <= set(per) for per in table.values()) else None

        return once(complete, compute, lambda table: self.storage.put_latency(
            self.spec.model, self.spec.backend, machine,
            {(fqn, b.w, b.a): s for fqn, per in table.items() for b, s in per.items()}))

    def solved_latency_table(self) -> LatencyTable | None:
        """The latency table this study solved with (read from the database, never measured), or None."""
        machine = self.get_json("latency_machine")
        return None if not isinstance(machine, str) else self._stored_latency(machine) or None

    def _stored_latency(self, machine: str) -> dict[str, dict[Bits, float]]:
        table: dict[str, dict[Bits, float]] = {}
        for (fqn, w, a), seconds in self.storage.get_latency(self.spec.model, self.spec.backend, machine).items():
            table.setdefault(fqn, {})[Bits(w, a)] = seconds
        return table

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
