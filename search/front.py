"""A study's measured points and what users ask of them: Pareto fronts, the best point under a limit,
the candidates worth a full evaluation, the config the page shows. The CLI, the API and the page all
call these; each metric's direction and unit come from the catalogue (`quant.quantities`).

A point's metrics are the union of its evaluations' (a `full` evaluation adds alignment and
distribution metrics to the `cheap` one's fidelity metrics); its costs are computed from its config
(`quant.cost.shown_costs`: MB, ms, G), the latency predicted from the table the study solved with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from quant.budget import Budget
from quant.config import BitConfig, ConfigError
from quant.cost import BOPS, LATENCY, MEMORY, WBITS, Costs, TargetTables, costs, shown_costs
from quant.layers import Layer
from quant.quantities import Quantity, quantity
from storage import EvaluationInfo
from workloads.metrics import QUALITY

PROMOTION_COSTS = (WBITS, BOPS)  # a candidate on the quality front vs either gets the full evaluation
MEASURED_COSTS = (LATENCY, MEMORY)  # measured by every evaluation on real kernels; the tables predict them
PREDICTION_TOLERANCE = 0.15  # a measured latency further than this from its prediction is flagged
DEFAULT_OBJECTIVES = (QUALITY, WBITS)
JsonConfig = dict[str, object]


@dataclass(frozen=True)
class FrontPoint:
    """A candidate's measurements: the union of its evaluations' metrics (`fidelities` says which ran)."""

    candidate_id: int
    origin: str
    metrics: dict[str, float]
    costs: dict[str, float]
    measured: bool
    config: JsonConfig = field(repr=False)
    fidelities: tuple[str, ...] = ()
    formats: dict[str, float] = field(default_factory=dict)  # share of layer slots per run label

    def value(self, name: str) -> float:
        return self.costs[name] if name in self.costs else self.metrics[name]

    def has(self, name: str) -> bool:
        return name in self.costs or name in self.metrics


def measured_points(evaluations: Sequence[EvaluationInfo], layers: Sequence[Layer],
                    tables: TargetTables | None) -> list[FrontPoint]:
    """One point per evaluated candidate (stored metrics are finite: NaN never reaches a front)."""
    by_candidate: dict[int, list[EvaluationInfo]] = {}
    for ev in evaluations:
        by_candidate.setdefault(ev.candidate_id, []).append(ev)
    return [FrontPoint(cid, str(evs[0].origin), {k: v for ev in evs for k, v in ev.metrics.items()},
                       _costs(evs, layers, tables), all(ev.measured for ev in evs), evs[0].config,
                       tuple(ev.fidelity for ev in evs), _labels(evs))
            for cid, evs in by_candidate.items()]


def _costs(evaluations: Sequence[EvaluationInfo], layers: Sequence[Layer],
           tables: TargetTables | None) -> dict[str, float]:
    """The config's computed costs (latency and memory predicted from the target's tables), and the
    latency and memory its evaluation measured on real kernels (a simulated run measures nothing)."""
    predicted = shown_costs(costs(BitConfig.from_dict(evaluations[0].config), layers, tables))
    out = {(f"{name}_predicted" if name in MEASURED_COSTS else name): v for name, v in predicted.items()}
    measured = [ev for ev in evaluations if ev.measured]
    latency = next((measured_latency(ev, tables) for ev in measured if ev.latency_s is not None), None)
    memory = next((ev.peak_memory_bytes for ev in measured if ev.peak_memory_bytes is not None), None)
    if latency is not None:
        out[LATENCY] = latency * quantity(LATENCY).scale
    if memory is not None:
        out[MEMORY] = memory * quantity(MEMORY).scale
    return out


def measured_latency(evaluation: EvaluationInfo, tables: TargetTables | None) -> float:
    """Seconds per denoiser call as measured: the candidate's ratio to the float model timed side by side
    (call by call, same inputs) times the tables' call of the model as loaded (their clock: its prediction
    and budget come from them), so
    that measured, predicted and the budget's cap share one clock whatever loaded the machine meanwhile;
    the latency timed alone where there is no side-by-side float time or no tables."""
    assert evaluation.latency_s is not None
    if evaluation.float_latency_s and tables is not None:
        return evaluation.latency_s / evaluation.float_latency_s * tables.loaded_call_s
    return evaluation.latency_s


def _labels(evaluations: Sequence[EvaluationInfo]) -> dict[str, float]:
    """How the layer slots ran (share of slots per run label) in the candidate's first evaluation."""
    labels = evaluations[0].run_labels
    total = sum(labels.values()) or 1
    return {label: n / total for label, n in sorted(labels.items())}


def prediction_error(point: FrontPoint, cost: str = LATENCY) -> float | None:
    """(measured - predicted) / predicted of `cost`, or None when either is missing."""
    predicted = point.costs.get(f"{cost}_predicted")
    measured = point.costs.get(cost)
    return None if not predicted or measured is None else (measured - predicted) / predicted


def default_objectives(points: Sequence[FrontPoint]) -> tuple[str, ...]:
    """Quality vs what a user pays, measured (latency, memory) when the candidates ran on real kernels;
    quality vs average weight bits (a proxy) for a study whose runs measured nothing."""
    measured = any(p.has(LATENCY) and p.has(MEMORY) for p in points)
    return (QUALITY, LATENCY, MEMORY) if measured else DEFAULT_OBJECTIVES


def dominated_by(point: FrontPoint, others: Sequence[FrontPoint], objectives: Sequence[str]) -> list[FrontPoint]:
    """The points of `others` at least as good as `point` on every objective and better on one."""
    wanted = [objective(o) for o in objectives]
    if not all(point.has(q.name) for q in wanted):
        return []
    mine = [q.minimised(point.value(q.name)) for q in wanted]
    out = []
    for p in others:
        if p.candidate_id == point.candidate_id or not all(p.has(q.name) for q in wanted):
            continue
        theirs = [q.minimised(p.value(q.name)) for q in wanted]
        if all(t <= m for t, m in zip(theirs, mine, strict=True)) and theirs != mine:
            out.append(p)
    return out


def objective(name: str) -> Quantity:
    """A metric or cost by name; `quality` is the quality metric studies rank by (QUALITY)."""
    return quantity(QUALITY if name == "quality" else name)


def pareto(points: Sequence[FrontPoint], objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> list[FrontPoint]:
    """Non-dominated points among those measured on every objective (an alignment metric exists only
    for candidates with a `full` evaluation), sorted by the last objective."""
    from solvers.pareto import non_dominated

    wanted = [objective(o) for o in objectives]
    known = {n for p in points for n in (*p.metrics, *p.costs)}
    missing = [q.name for q in wanted if q.name not in known]
    if points and missing:
        raise ConfigError(f"no point has {missing[0]!r}; measured here: {', '.join(sorted(known))}")
    kept = [p for p in points if all(p.has(q.name) for q in wanted)]
    rows = [[q.minimised(p.value(q.name)) for q in wanted] for p in kept]
    front = [kept[i] for i in non_dominated(rows)] if rows else []
    return sorted(front, key=lambda p: wanted[-1].minimised(p.value(wanted[-1].name)))


def best_under(points: Sequence[FrontPoint], limit: str, by: str = QUALITY) -> FrontPoint:
    """The best point on metric `by` whose cost stays under `limit` (`wbits=4.5`, `size=5`: the units a
    front shows); ConfigError when none does."""
    name, _, text = limit.partition("=")
    try:
        cap = float(text)
    except ValueError:
        raise ConfigError(f"cannot parse limit {limit!r}; write COST=VALUE, e.g. wbits=4.5") from None
    cost, metric = objective(name.strip()), objective(by)
    fits = [p for p in points if p.has(cost.name) and p.value(cost.name) <= cap and p.has(metric.name)]
    if not fits:
        raise ConfigError(f"no evaluated candidate has {cost.name} <= {cap:g} {cost.unit}".rstrip())
    return min(fits, key=lambda p: metric.minimised(p.value(metric.name)))


def best_within(points: Sequence[FrontPoint], budget: Budget, reference: Costs, by: str = QUALITY) -> FrontPoint:
    """The best point on `by` that meets every limit of `budget` as measured (latency and memory from
    its evaluation when it has them, else as predicted), relative limits against `reference` (the
    target's fastest float format); ConfigError when none does."""
    metric = objective(by)
    shown_reference = shown_costs(reference)

    def fits(p: FrontPoint) -> bool:
        for lim in budget.limits:
            q = quantity(lim.metric)
            value = p.costs.get(q.name, p.costs.get(f"{q.name}_predicted"))
            cap = lim.value * shown_reference[q.name] if lim.relative else lim.value * q.scale
            if value is None or value > cap * (1 + 1e-9):
                return False
        return p.has(metric.name)

    inside = [p for p in points if fits(p)]
    if not inside:
        raise ConfigError(f"no evaluated candidate meets the budget {budget} as measured; see `bitsearch pareto`")
    return min(inside, key=lambda p: metric.minimised(p.value(metric.name)))


def promotable(points: Sequence[FrontPoint]) -> list[int]:
    """Candidates that may enter a front of quality vs any PROMOTION_COSTS (the full evaluation's worth)."""
    ranked = [p for p in points if p.has(QUALITY)]
    on_front = {p.candidate_id for cost in PROMOTION_COSTS for p in pareto(ranked, (QUALITY, cost))}
    return sorted(on_front)


def chosen_point(points: Sequence[FrontPoint]) -> FrontPoint | None:
    """The config the page shows: the best-quality point of the default front (None before any)."""
    front = pareto(points) if points else []
    return min(front, key=lambda p: objective(QUALITY).minimised(p.value(QUALITY)), default=None)
