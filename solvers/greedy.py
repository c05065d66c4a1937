"""`greedy`: the AIMET-style baseline, for comparison with the exact `ilp`.

Start every (unit, group) at its highest candidate bits; while some limit is exceeded, take the
lowering step with the smallest increase of predicted degradation per unit of cost saved, where cost
saved is the drop of every still-exceeded limit, each divided by its W16A16 reference. A step changes
one (unit, group) choice, or one unit's weight width in every group, and never raises any budgeted cost; steps that would break a switch limit
or a max_degradation cap are not taken. Each step rescans only the unit it changed (a heap with
stale-entry versions), so SDXL-size problems take seconds.
"""

from __future__ import annotations

import heapq

from quant.config import BitConfig, Bits
from quant.cost import HELD_COSTS, LATENCY, STEP_COSTS, cost_of
from solvers.base import OneShot, register
from solvers.problem import Plan, Problem


@register("greedy")
class GreedySolver(OneShot):
    def __init__(self) -> None:
        pass

    def propose(self, problem: Problem) -> list[BitConfig]:
        return [greedy(problem)]


def greedy(problem: Problem) -> BitConfig:
    p = problem
    units = p.units
    pos = [[c.index(max(c)) for c in unit.candidates] for unit in units]  # choice index per (unit, group)
    limits = list(p.caps)
    ref = {name: cost_of(p.reference, name) if name != LATENCY or p.reference.latency_s else 1.0
           for name in (*STEP_COSTS, *HELD_COSTS)}

    def plan(u: int, choice: list[int]) -> Plan:
        return tuple(units[u].candidates[g][i] for g, i in enumerate(choice))

    unit_cost = [p.unit_costs(u, plan(u, pos[u])) for u in range(len(units))]
    unit_deg = [p.unit_terms(u, plan(u, pos[u]))[1] for u in range(len(units))]
    total = {m: sum(c[m] for c in unit_cost) for m in limits}
    deg_total = {m: sum(d[m] for d in unit_deg) for m in p.max_degradation}

    def exceeded() -> frozenset[str]:
        return frozenset(m for m in limits if total[m] > p.layer_caps[m])

    def moves(u: int) -> list[list[int]]:
        """Choices one step from the current one: one group to another candidate, or every group's
        weight bits to another width at unchanged activation bits (a held-cost budget, size or
        memory, can only drop when all groups leave a weight precision together)."""
        unit, out = units[u], []
        for g, cands in enumerate(unit.candidates):
            for i in range(len(cands)):
                if i != pos[u][g]:
                    out.append([*pos[u][:g], i, *pos[u][g + 1:]])
        for w in unit.weight_bits():
            idx = [{b: k for k, b in enumerate(c)}.get(Bits(w, c[pos[u][g]].a)) for g, c in enumerate(unit.candidates)]
            choice = [k for k in idx if k is not None]
            if len(choice) == len(idx) and choice != pos[u] and sum(a != b for a, b in zip(choice, pos[u], strict=False)) > 1:
                out.append(choice)
        return out

    def best_move(u: int, over: frozenset[str]) -> tuple[float, list[int]] | None:
        unit, best = units[u], None
        obj0 = sum(unit.objective[g][i] for g, i in enumerate(pos[u]))
        for choice in moves(u):
            new_plan = plan(u, choice)
            if p.max_weight_switches is not None and p.switches(new_plan) > p.max_weight_switches:
                continue
            cost = p.unit_costs(u, new_plan)
            if any(cost[m] > unit_cost[u][m] for m in limits):
                continue  # only lowering steps
            saved = sum((unit_cost[u][m] - cost[m]) / ref[m] for m in over)
            if saved <= 0:
                continue
            obj, deg = p.unit_terms(u, new_plan)
            if any(deg_total[m] - unit_deg[u][m] + deg[m] > cap for m, cap in p.max_degradation.items()):
                continue
            ratio = (obj - obj0) / saved
            if best is None or ratio < best[0]:
                best = (ratio, choice)
        return best

    over = exceeded()
    version = [0] * len(units)
    heap: list[tuple[float, int, int, list[int]]] = []

    def push(u: int) -> None:
        move = best_move(u, over)
        if move is not None:
            heapq.heappush(heap, (move[0], u, version[u], move[1]))

    for u in range(len(units)):
        push(u)
    while over:
        if not heap:
            return _stuck(p, over)
        _, u, ver, choice = heapq.heappop(heap)
        if ver != version[u]:
            continue
        pos[u] = choice
        version[u] += 1
        new_cost = p.unit_costs(u, plan(u, pos[u]))
        new_deg = p.unit_terms(u, plan(u, pos[u]))[1]
        for m in limits:
            total[m] += new_cost[m] - unit_cost[u][m]
        for m in deg_total:
            deg_total[m] += new_deg[m] - unit_deg[u][m]
        unit_cost[u], unit_deg[u] = new_cost, new_deg
        now = exceeded()
        if now != over:  # the weighting of savings changed: rescore every unit
            over = now
            version = [v + 1 for v in version]
            heap.clear()
            for w in range(len(units)):
                push(w)
        else:
            push(u)
    # running totals drift by float rounding; the exact check below is the authority
    return p.check(p.config([plan(u, pos[u]) for u in range(len(units))]))


def _stuck(problem: Problem, over: frozenset[str]) -> BitConfig:
    from solvers.ilp import smallest

    if any((low := smallest(problem, m)) is None or low > problem.caps[m] * (1 + 1e-9) for m in over):
        raise problem.diagnose()
    raise RuntimeError(
        f"greedy could not meet {', '.join(sorted(over))} by lowering bits step by step although some "
        "config does; use the 'ilp' solver"
    )
