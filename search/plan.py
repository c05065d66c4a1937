"""A study's plan: its predicted time and peak memory per stage, from a few measurements, before it runs.

`measure_plan(spec)` loads the workload and measures, on this machine:
- the wall seconds of loading the model (each Ray worker loads its own) and the process's resident
  bytes with it loaded (what every stage starts from);
- one denoiser call at batch 1 and at batch 2 (process CPU seconds of 1 call after a warm-up, the
  median of up to 5 where calls are fast, and the
  peak rise of resident memory during the call, warm-up included: the allocator reuses what the warm-up
  freed), so a call at batch b costs t1 + (t2 - t1)(b - 1) seconds and a1 + (a2 - a1)(b - 1) bytes
  (time and activations are affine in the batch); the sampler's own batching (classifier-free
  guidance) is inside the call, as the workload makes it;
- one calibration call (the same call with the range observers hooked: their overhead), one config
  applied (its seconds, what it holds, one quantized call), for an fp32 model one call of a bf16 copy
  (the reference of relative latency budgets where faster), one 2-step generation of 1 and of 2 images
  less their denoiser calls (the sampler's work besides the denoiser: encoders, decoder);
- one estimator step per estimator of the study: the estimator run for real on 1 image and 2 steps
  (1 timestep group), half its CPU seconds and its peak resident rise.

`predict(spec, measured)` turns those into stages, each a (seconds, peak resident bytes) pair:
- calibration: `calibration_samples` images in one batch, `num_steps` calls, observers hooked;
- sensitivity, per estimator: the one-step time x steps x (a call at batch `n_images` over batch 1:
  estimators run their images as one batch, per step; the decoupled one also per group, which this
  does not count), peak: the one-step peak plus the activations of its extra images;
- latency table: per bit pair and the float reference, an apply, and for each pair the table times
  (`quant.latency.timed_pairs`, judged on a layer of each kind and shape; the float model alone where
  no quantized pair is) 1 + 5 rounds of whole calls, or 1 + 3 where the rounds add up to
  `quant.latency.TABLE_S`, each call made clocked and plain (`quant.latency.in_context`), a quantized
  pair's calls alternating with the float model's (4 calls a round, 2 of them quantized: priced at the
  measured uniform config's speed; the float model alone 2), plus for an fp32 model 1 + up to 21 rounds
  of an fp32 and a bf16 call (as many as add up to `TABLE_S`; the bf16 call priced as the fp32 one);
  peak: the model, an fp32 model's bf16 copy (half), what an applied config holds and one call's
  activations;
- each cheap / full evaluation: applying a config, then `eval_samples` (`full_samples`) images x
  `num_steps` calls, the cheap one plus one batch-1 call per timestep group replayed quantized and
  float for latency, in rounds, after a warm-up (`quant.latency.side_by_side`); quantized calls priced
  at the budget's latency cap (the solver spends it on quality; a relative cap is of the reference
  float's call), or at one measured call with the study's first bit pair applied everywhere where that
  is slower or the budget has no latency limit, the sampler's other work by the 2-step generations;
  metrics are not counted; peak: the
  model, what the applied config holds (measured) and one call's activations;
- all evaluations: the full-precision reference, every baseline and trial cheaply, and at most as many
  full evaluations (none where the workload has no alignment or distribution metric); with W Ray
  workers, each a process that loads its own model and makes its own float reference: the
  evaluations' time over W plus one model's load and one reference (the workers do theirs at once)
  plus Ray's start (`measure_plan` times a local Ray starting W actors that import what an evaluator
  runs), the peak W evaluations' peaks plus the coordinator without its model (it lets it go before
  the workers start).

Times are CPU seconds of the process (every thread counted): wall time on one thread. A plan is a model
with stated assumptions, not a measurement: `bitsearch plan` prints it, `launch --dry-run` too.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, cast

from quant.config import ConfigError, TimestepGroups
from search.spec import StudySpec

if TYPE_CHECKING:
    from torch import nn

    from quant.calibrate import ActivationRanges
    from sensitivity.base import Estimator
    from workloads.base import Workload

TABLE_REPEATS = 5  # quant.targets.measure_tables' default: 1 warm-up + 5 timed rounds per bit pair
FLOAT_ROUNDS = 4 * TABLE_REPEATS + 1  # ... and at most this many rounds of an fp32 and a bf16 call
TIMED_S = 1.0  # CPU seconds of repeated calls after which a call's time is taken as known
# Generations and estimator steps are measured on 2-step runs: the fewest every pipeline samples (PixArt's
# pipelines take a 1-step run for a distilled one-step sampler and index a scheduler output DPM-Solver lacks)
MEASURED_STEPS = 2


@dataclass(frozen=True)
class Call:
    """One denoiser call: CPU seconds and peak resident rise (bytes) at batch 1 and batch 2."""

    seconds: tuple[float, float]
    peak: tuple[int, int]

    def time_at(self, batch: int) -> float:
        return affine(self.seconds, batch)

    def bytes_at(self, batch: int) -> int:
        return int(affine(self.peak, batch))


def affine(at_1_and_2: tuple[float, float], batch: int) -> float:
    """A cost measured at batch 1 and 2 at batch `batch`, never falling with the batch (noise)."""
    one, two = at_1_and_2
    return one + max(0.0, two - one) * (batch - 1)


@dataclass(frozen=True)
class Measured:
    """What `measure_plan` measured (see the module docstring)."""

    load_s: float  # wall seconds to load the workload (each Ray worker loads its own)
    loaded_bytes: int  # resident bytes of the process with the model loaded
    weight_bytes: int  # the denoiser's parameters and buffers
    call: Call
    calibration_overhead: float  # a calibration call's seconds over a plain call's
    overhead_s: tuple[float, float]  # a generation's seconds besides its denoiser calls, at 1 and 2 images
    apply_s: float  # seconds to apply one config (every evaluation applies its own)
    quantized_ratio: float  # a quantized call's seconds over a float call's (the study's first bit pair)
    applied_bytes: int  # the resident rise while one config is applied (codes, scales, kept copies)
    estimator_step: Mapping[str, tuple[float, int]]  # per estimator: one image-step's seconds, peak rise
    estimator_images: Mapping[str, int]
    evaluations: int  # cheap evaluations: baselines and trials
    full_metrics: bool  # whether the workload has alignment or distribution metrics
    measures_latency: bool  # False on a simulating backend: no latency table
    table_pairs: int  # quantized pairs the latency table times (pairs sharing another's kernels are not)
    bf16_copy: bool  # the table also times a bf16 copy (an fp32 model; a bf16 one is its own reference)
    workers_start_s: float = 0.0  # wall seconds for Ray and its workers to start (measured for 2+ workers)
    # the reference float format's call over the loaded model's: an fp32 model's bf16 copy where faster (the
    # reference of relative latency budgets), else 1
    reference_ratio: float = 1.0


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    peak_bytes: int
    how: str
    lighter: str = ""  # what lowers its peak, for the refusal's message


@dataclass(frozen=True)
class Plan:
    spec: StudySpec
    measured: Measured
    stages: tuple[Stage, ...]

    @property
    def total_seconds(self) -> float:
        """Every stage run once, `all evaluations` standing for each evaluation row."""
        return sum(s.seconds for s in self.stages if not s.name.startswith("each "))

    @property
    def peak(self) -> Stage:
        return max(self.stages, key=lambda s: s.peak_bytes)


def measure_plan(spec: StudySpec, workers: int = 1) -> Measured:
    """Load `spec`'s workload and measure what `predict` needs for evaluations on `workers` workers
    (more than 1: Ray's start is measured too; see the module docstring)."""
    import torch

    from quant.apply import quantized
    from quant.backends.base import Quantizable, get_backend, storage_bytes
    from quant.config import BitConfig
    from quant.latency import timed_pairs
    from quant.layers import inventory, quantizable_modules
    from quant.resident import PeakResident, release_freed, resident_bytes
    from quant.targets import FP32, loaded_format, to_bf16
    from search.baselines import baseline_configs
    from search.study import check_float_format
    from workloads.base import denoiser_inputs

    t0 = time.perf_counter()  # wall: loading waits on the disk (and memory-mapped weights fault in later)
    workload = spec.load_workload()
    load_s = time.perf_counter() - t0
    check_float_format(workload, spec.backend)
    inputs = denoiser_inputs(workload)
    layers = inventory(workload.denoiser, inputs)
    loaded = resident_bytes()
    denoiser = workload.denoiser
    one, two = _batched(inputs, 1), _batched(inputs, 2)
    at1, at2 = _time_call(partial(_forward, denoiser, one)), _time_call(partial(_forward, denoiser, two))
    call = Call((at1[0], at2[0]), (at1[1], at2[1]))
    calibration = _time_call(partial(_calibration_call, denoiser, one))[0]
    ranges = _calibration_call(denoiser, one)
    # one config applied (the study's first bit pair everywhere): what applying costs each evaluation, what
    # it holds, and how fast a quantized call runs
    with PeakResident() as held:
        t0 = time.process_time()
        with quantized(denoiser, BitConfig.uniform(1, spec.bits[0]), spec.backend, ranges) as qm:
            qm.set_step(0)
            apply_s = time.process_time() - t0
            quantized_s = _time_call(partial(_forward, denoiser, one))[0]
    reference_ratio = 1.0
    if not get_backend(spec.backend).simulates and loaded_format(denoiser) == FP32:
        half = copy.deepcopy(denoiser).to(torch.bfloat16)  # what the latency table times fp32 against
        reference_ratio = min(1.0, _time_call(partial(_forward, half, to_bf16(one)))[0] / max(call.seconds[0], 1e-9))
        del half
        release_freed()
    steps: dict[str, tuple[float, int]] = {}
    images: dict[str, int] = {}
    with _sampling_steps(workload, MEASURED_STEPS):
        generation = [_run(partial(workload.generate, workload.batch(n)))[0] - MEASURED_STEPS * call.time_at(n)
                      for n in (1, 2)]
        for name in spec.estimators:
            estimator, n = _estimator(spec, name)
            seconds, peak = _run(partial(estimator.estimate, workload, layers, list(spec.bits), 1))
            steps[name], images[name] = (seconds / MEASURED_STEPS, peak), n
    baselines = sum(len(baseline_configs([b], spec.bits, spec.groups, layers)) for b in spec.baselines)
    # kernels are chosen by a layer's kind and shape: one layer of each (SD1.5: 40 of 282) tells the pairs apart
    shapes = {(kind, tuple(cast("Quantizable", m).weight.shape)): (m, kind)
              for m, kind in reversed(quantizable_modules(denoiser).values())}
    timed = sum(not b.is_full_precision for b in timed_pairs(list(shapes.values()), spec.bits, spec.backend))
    measures = not get_backend(spec.backend).simulates  # a simulating backend has no table (any float dtype)
    workers_start_s = 0.0
    if workers > 1:
        from search.executors.ray_executor import start_seconds

        workers_start_s = start_seconds(workers)
    return Measured(load_s, loaded, storage_bytes([*denoiser.parameters(), *denoiser.buffers()]), call,
                    calibration / max(call.seconds[0], 1e-9), (max(0.0, generation[0]), max(0.0, generation[1])), apply_s,
                    quantized_s / max(call.seconds[0], 1e-9), held.peak_increase_bytes, steps, images,
                    baselines + spec.trials, bool(workload.full_metric_families()),
                    measures, timed, measures and loaded_format(denoiser) == FP32, workers_start_s, reference_ratio)


def predict(spec: StudySpec, m: Measured, workers: int = 1) -> Plan:
    """The stages of a study of `spec` from the measurements `m` (see the module docstring), its
    evaluations run by `workers` workers (more than 1: Ray actors, each a process with its model)."""
    from quant.cost import LATENCY
    from quant.latency import REPLAY_ROUNDS, REPLAY_S, TABLE_MIN_ROUNDS, TABLE_S
    from solvers.ilp import SEARCH_GAP, SEARCH_SOLVE_S

    call, steps, base = m.call, spec.num_steps, m.loaded_bytes

    def generation(images: int, ratio: float = 1.0) -> float:
        """Seconds of one generation of `images` images: its denoiser calls (`ratio` of a float call's
        time) and the rest of the sampler."""
        return steps * call.time_at(images) * ratio + affine(m.overhead_s, images)

    # a searched config's calls: the solver spends a latency budget on quality, so they run at its cap, or
    # at the uniform config measured where that is slower or there is no cap (PixArt-size fp32 at
    # latency=0.8x of bf16: the uniform W8A8's 0.21 of an fp32 call put its evaluations at 1.24x of the plan;
    # the cap, 0.8 x 0.43, at 0.95x)
    cap = spec.budget.limit(LATENCY)
    searched = m.quantized_ratio if cap is None else max(
        m.quantized_ratio, cap.value * m.reference_ratio if cap.relative else cap.value / max(call.time_at(1), 1e-9))

    stages = [Stage("calibration", generation(spec.calibration_samples) * m.calibration_overhead,
                    base + call.bytes_at(spec.calibration_samples),
                    f"{spec.calibration_samples} images x {steps} calls, observers hooked",
                    "fewer calibration_samples")]
    for name, (seconds, peak) in m.estimator_step.items():
        n = m.estimator_images[name]
        # its images run as one batch: a step of n images costs what a call of batch n costs over batch 1
        stages.append(Stage(f"sensitivity: {name}", seconds * steps * call.time_at(n) / max(call.time_at(1), 1e-9),
                            base + peak + call.bytes_at(n) - call.bytes_at(1),
                            f"1 image x {MEASURED_STEPS} steps measured; {n} images x {steps} steps",
                            "a lighter estimator, or fewer images (estimator option n_images)"))
    if m.measures_latency:
        def window_rounds(round_s: float, most: int, fewest: int) -> int:
            """Timed rounds of a window: `most`, or fewer (not under `fewest`) once they took TABLE_S."""
            return min(most, max(fewest, math.ceil(TABLE_S / max(round_s, 1e-9))))

        one, ratio = call.time_at(1), m.quantized_ratio
        # each timed pair: 1 + rounds of its call and the float one, each clocked and plain; half of the
        # calls run the pair applied uniformly: priced at the uniform config measured
        per_run = 2 * (1 + window_rounds(2 * one * (1 + ratio), TABLE_REPEATS, TABLE_MIN_ROUNDS))
        alone = 0 if m.table_pairs else 2 * (1 + window_rounds(2 * one, TABLE_REPEATS, TABLE_MIN_ROUNDS))
        floats = 2 * (1 + window_rounds(2 * one, FLOAT_ROUNDS, 1)) if m.bf16_copy else 0
        calls = 2 * per_run * m.table_pairs + alone + floats
        seconds = (per_run * m.table_pairs * (1 + ratio) + alone + floats) * one
        which = f"{m.table_pairs} timed beside the float model" if m.table_pairs else "the float model timed alone"
        stages.append(Stage("latency table", seconds + (len(spec.bits) + 1) * m.apply_s,
                            base + (m.weight_bytes // 2 if m.bf16_copy else 0) + m.applied_bytes + call.bytes_at(1),
                            f"{len(spec.bits) + 1} bit pairs applied, {which}; {calls} whole calls (clocked and "
                            "plain)" + (", fp32 beside bf16" if m.bf16_copy else ""),
                            "a smaller model (the table applies it whole)"))
    # the latency: one call per timestep group replayed quantized and float side by side, after a warm-up
    groups, pair = len(spec.groups), call.time_at(1) * (1 + searched)
    rounds = min(REPLAY_ROUNDS, max(1, math.ceil(REPLAY_S / max(groups * pair, 1e-9))))
    timed = groups * call.time_at(1) * searched + call.time_at(1) + rounds * groups * pair
    cheap = Stage("each cheap evaluation", m.apply_s + generation(spec.eval_samples, searched) + timed,
                  base + m.applied_bytes + call.bytes_at(spec.eval_samples),
                  f"apply + {spec.eval_samples} images x {steps} calls + {rounds} x {groups} calls timed beside "
                  "float",
                  "fewer eval_samples")
    stages.append(cheap)
    reference = generation(spec.eval_samples)  # the float images the cheap evaluations compare with
    work = m.evaluations * cheap.seconds
    peak, how = cheap.peak_bytes, f"the float reference + {m.evaluations} cheap"
    if m.full_metrics:
        full = Stage("each full evaluation", m.apply_s + generation(spec.full_samples, searched),
                     base + m.applied_bytes + call.bytes_at(spec.full_samples),
                     f"apply + {spec.full_samples} images x {steps} calls", "fewer full_samples")
        stages.append(full)
        work, peak = work + m.evaluations * full.seconds, max(peak, full.peak_bytes)
        how += f" + at most {m.evaluations} full"
    else:
        how += "; no full evaluation (the workload has no alignment or distribution metric)"
    total = reference + work
    if workers > 1:  # each worker loads and holds a model and makes its own float reference, all at once;
        # the coordinator has let its model go
        total = m.workers_start_s + m.load_s + reference + work / workers
        peak = workers * peak + max(0, base - m.weight_bytes)
        how += (f"; {workers} Ray workers at once, each loading a model and making the float reference after "
                f"Ray's start ({m.workers_start_s:.0f} s measured; time: wall, each worker's CPU)")
    how += (f"; not counted: the solver's proposing (an integer program's solves stop at a {SEARCH_GAP:g} gap "
            f"or at {SEARCH_SOLVE_S:.0f} s each)")
    stages.append(Stage("all evaluations", total, peak, how, "fewer eval_samples or full_samples, or fewer workers"))
    return Plan(spec, m, tuple(stages))


def check_fits(plan: Plan, limit_bytes: int) -> None:
    """ConfigError naming the first stage whose predicted peak exceeds `limit_bytes`."""
    for stage in plan.stages:
        if stage.peak_bytes > limit_bytes:
            raise ConfigError(f"the study will not fit: its {stage.name} stage is predicted to peak at "
                              f"{stage.peak_bytes / 1e9:.3g} GB resident, above the memory limit of "
                              f"{limit_bytes / 1e9:.3g} GB; try {stage.lighter or 'a smaller model'}")


def available_memory() -> int:
    """The machine's available memory now (MemAvailable of /proc/meminfo), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise ConfigError("cannot read MemAvailable from /proc/meminfo; give --memory-limit, e.g. 16GB")


def parse_bytes(text: str) -> int:
    """`16GB`, `512MB`, `1.5GiB` or a number of bytes, as bytes (read as a memory budget is)."""
    from quant.budget import Limit

    try:
        limit = Limit.parse(f"memory={text}")
    except ConfigError:
        limit = None
    if limit is None or limit.relative:
        raise ConfigError(f"memory limit {text!r}: write a size like 16GB, 512MB or 1.5GiB")
    return int(limit.value)


# ---- measuring ------------------------------------------------------------------------------------


def _time_call(run: Callable[[], object]) -> tuple[float, int]:
    """Median CPU seconds of `run` after one warm-up, and the peak resident rise over all the calls. A
    fast call is repeated (up to 5 times, about TIMED_S in all) so that the noise of a shared machine
    averages out; a slow one (a big model) is timed once."""
    import statistics

    from quant.resident import PeakResident

    times: list[float] = []
    with PeakResident() as peak:
        run()
        while len(times) < 5 and sum(times) < TIMED_S:
            t0 = time.process_time()
            run()
            times.append(time.process_time() - t0)
    return statistics.median(times), peak.peak_increase_bytes


def _run(run: Callable[[], object]) -> tuple[float, int]:
    """CPU seconds of one `run` and its peak resident rise."""
    from quant.resident import PeakResident

    with PeakResident() as peak:
        t0 = time.process_time()
        run()
        seconds = time.process_time() - t0
    return seconds, peak.peak_increase_bytes


def _batched(inputs: Mapping[str, object], n: int) -> dict[str, object]:
    """The denoiser's batch-1 inputs repeated to `n` images: every tensor with the sample's batch size
    along dim 0 (timesteps, text embeddings, nested conditioning dicts alike)."""
    import torch

    first = next(v for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    size = first.shape[0]

    def grow(value: object) -> object:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            return torch.cat([value] * n)
        if isinstance(value, dict):
            return {k: grow(v) for k, v in value.items()}
        return value

    return {k: grow(v) for k, v in inputs.items()}


def _forward(denoiser: nn.Module, inputs: Mapping[str, object]) -> None:
    """One denoiser call without autograd, as a sampler makes it."""
    import torch

    with torch.no_grad():
        denoiser(**inputs)


def _calibration_call(denoiser: nn.Module, inputs: Mapping[str, object]) -> ActivationRanges:
    """One denoiser call with the calibration's range observers hooked; the ranges it saw."""
    from quant.calibrate import calibrate_activations

    def run(set_step: Callable[[int], None]) -> None:
        set_step(0)
        _forward(denoiser, inputs)

    return calibrate_activations(denoiser, TimestepGroups.uniform(1, 1), run)


def _estimator(spec: StudySpec, name: str) -> tuple[Estimator, int]:
    """Estimator `name` with the study's options but on 1 image, and the images the study's one uses."""
    from sensitivity.base import get_estimator

    options = spec.estimator_kwargs(name)
    images: int | None = getattr(get_estimator(name, seed=spec.seed, **options), "n_images", None)
    one = options if images is None else {**options, "n_images": 1}
    return get_estimator(name, seed=spec.seed, progress=False, **one), images or 1


@contextmanager
def _sampling_steps(workload: Workload, steps: int) -> Iterator[None]:
    """The workload sampling `steps` steps inside the block (a Workload reads `num_steps` at each generate)."""
    saved = workload.num_steps
    workload.num_steps = steps
    try:
        yield
    finally:
        workload.num_steps = saved
