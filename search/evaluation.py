"""Real quantized evaluations of a study's candidates, at two fidelities.

Every candidate gets the `cheap` one: `eval_samples` images, fidelity to full precision on the same
seeds (PSNR, SSIM, per-step SQNR). Candidates that may enter a front (`search.front.promotable`) get
the `full` one: alignment and distribution metrics on `full_samples` other images (none for a workload
whose `full_metric_families()` is empty: the study skips it, see `Study.promote`).

`StudyEvaluator` is what an executor runs: picklable (a Ray actor receives the study's name, spec and
storage), it loads the workload, the stored activation ranges and the full-precision reference once,
then evaluates many candidates.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from quant.calibrate import ActivationRanges
from quant.config import BitConfig, ConfigError
from search.cache import StudyCache
from search.executors.base import Evaluator, Outcome
from search.spec import StudySpec
from storage import CandidateInfo, Storage
from workloads.base import Batch, Generation, Workload, denoiser_inputs

CHEAP, FULL = "cheap", "full"
Reference = Callable[[], tuple[Batch, Generation]]


def measure(workload: Workload, spec: StudySpec, config: BitConfig, fidelity: str, ranges: ActivationRanges,
            reference: Reference) -> Outcome:
    """One real quantized run of `config` at `fidelity`: `cheap`, fidelity to the full-precision images of
    `reference()` (batch, generation); `full`, alignment and distribution metrics on `full_samples` eval
    images after those (other seeds). The cheap one also measures what a user pays: latency_s, the
    CPU seconds of one denoiser call at batch 1 averaged over the steps (the unit the target's tables
    predict), float_latency_s, the same calls run by the float layers side by side
    (`quant.latency.side_by_side`: one call per timestep group, replayed), and the resident bytes of the
    quantized denoiser."""
    from quant.apply import VerificationError, quantized
    from quant.backends.base import measurement
    from quant.latency import side_by_side
    from quant.targets import resident_bytes

    full = fidelity == FULL
    if full:
        batch, ref = workload.batch(spec.full_samples, offset=spec.eval_samples), None
    else:
        batch, ref = reference()
    try:
        with quantized(workload.denoiser, config, spec.backend, ranges) as qm:
            qm.reset_record()
            memory = resident_bytes(qm)
            t0 = time.process_time()
            test = workload.generate(batch, on_step=qm.set_step, record_steps=not full)
            seconds = time.process_time() - t0
            # how the layers ran during this generation (each layer and group that was called),
            # not only how they were planned to run
            labels = dict(Counter[str](lbl for per in qm.executed_labels().values() for lbl in per.values()))
            latency = float_latency = None
            if not full:  # one image's denoiser call at each timestep group, timed quantized and float side by side
                latency, float_latency = side_by_side(qm, denoiser_inputs(workload), config.groups)
    except VerificationError as e:
        return Outcome(invalid=f"verification failed: {e}")
    except (ConfigError, ValueError, RuntimeError) as e:  # RuntimeError includes torch's OOM
        return Outcome(failed=f"{type(e).__name__}: {e}")
    try:  # one bad metric (a bug, too few images, a singular covariance) fails this evaluation only
        if full:
            metrics = {**workload.alignment(batch, test), **workload.distribution(test, offset=spec.eval_samples)}
        else:
            assert ref is not None
            metrics = workload.quality(ref, test)
    except Exception as e:
        family = "alignment/distribution" if full else "quality"
        return Outcome(failed=f"{family} metric failed: {type(e).__name__}: {e}")
    return Outcome(metrics=metrics, run_labels=labels, backend=spec.backend, latency_s=latency,
                   float_latency_s=float_latency, peak_memory_bytes=memory,
                   measured=measurement(spec.backend, labels).measured, duration_s=seconds)


class StudyEvaluator(Evaluator):
    """Real quantized evaluations of one study's candidates (see the module docstring)."""

    def __init__(self, name: str, spec: StudySpec, storage: Storage, *, workload: Workload | None = None,
                 ranges: ActivationRanges | None = None) -> None:
        self.name, self.spec, self.storage = name, spec, storage
        self.workload, self.ranges = workload, ranges  # given by a coordinator that has them loaded
        self._reference: tuple[Batch, Generation] | None = None  # made at the first cheap evaluation

    def __getstate__(self) -> dict[str, object]:
        return {"name": self.name, "spec": self.spec.to_dict(), "storage": self.storage}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["name"], StudySpec.from_dict(state["spec"]), state["storage"])  # type: ignore[misc, arg-type]

    def setup(self) -> None:
        if self.workload is None:  # load the model before the first claim
            self.workload = self.spec.load_workload()
        if self.ranges is None:  # stored by the coordinator before any evaluation
            workload = self.workload
            self.ranges = StudyCache(self.name, self.spec, self.storage, lambda: workload).activation_ranges(
                lambda _m: None)

    def __call__(self, candidate: CandidateInfo) -> Outcome:
        self.setup()
        assert self.workload is not None and self.ranges is not None
        try:
            config = BitConfig.from_dict(candidate.config)
        except ConfigError as e:
            return Outcome(failed=f"{type(e).__name__}: {e}")
        return measure(self.workload, self.spec, config, candidate.fidelity, self.ranges, self.reference)

    def reference(self) -> tuple[Batch, Generation]:
        if self._reference is None:
            assert self.workload is not None
            batch = self.workload.batch(self.spec.eval_samples)
            self._reference = batch, self.workload.generate(batch, record_steps=True)
        return self._reference


def evaluation_counts(storage: Storage, name: str) -> dict[str, tuple[int, int]]:
    """(done, queued so far) evaluations per fidelity: done counts stored evaluations and candidates
    that ended FAILED or INVALID at that fidelity; queued adds those WAITING or RUNNING."""
    counts = storage.count_by_fidelity(name)
    out = {}
    for f in (CHEAP, FULL):
        c = counts.get(f, {})
        done = c.get("evaluations", 0) + c.get("FAILED", 0) + c.get("INVALID", 0)
        out[f] = (done, done + c.get("WAITING", 0) + c.get("RUNNING", 0))
    return out
