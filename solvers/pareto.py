"""Pareto utilities over minimised objectives: non-dominated filtering and hypervolume.

Points with a NaN or infinite objective never reach a front (a FAILED evaluation is not a trade-off).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """a is no worse than b in every objective and better in at least one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def non_dominated(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated finite points, in input order; of exact duplicates the first is kept."""
    ok = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    if len({len(points[i]) for i in ok}) > 1:
        raise ValueError("all points need the same number of objectives")
    # sort lexicographically: a point can only be dominated by one sorted before it
    order = sorted(ok, key=lambda i: (tuple(points[i]), i))
    front: list[int] = []
    for i in order:
        p = points[i]
        if not any(dominates(points[j], p) or tuple(points[j]) == tuple(p) for j in front):
            front.append(i)
    return sorted(front)


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """Volume dominated by `points` and bounded by `reference` (every objective minimised).

    Exact sweep in 2-D; in more dimensions optuna's exact WFG implementation
    (`optuna._hypervolume.compute_hypervolume`, a private module: pinned by our tests).
    Points not strictly better than the reference in every objective add nothing.
    """
    inside = [tuple(p) for p in points
              if all(math.isfinite(v) for v in p) and all(v < r for v, r in zip(p, reference, strict=True))]
    if not inside:
        return 0.0
    if len(reference) == 1:
        return float(reference[0] - min(p[0] for p in inside))
    if len(reference) == 2:
        front = sorted({inside[i] for i in non_dominated(inside)})  # x ascending, so y descending
        volume, prev_y = 0.0, float(reference[1])
        for x, y in front:
            volume += (reference[0] - x) * (prev_y - y)
            prev_y = y
        return volume
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(np.asarray(inside, dtype=float), np.asarray(reference, dtype=float)))


def trailing_stale(points: Sequence[Point], tolerance: Sequence[float]) -> int:
    """How many of the last points, in the order they were found, did not improve the front of the
    points before them: a point improves it when no earlier point is within `tolerance` of it or
    better in every objective (so a gain smaller than the tolerance does not count). Non-finite
    points never improve it."""
    seen: list[Point] = []
    stale = 0
    for p in points:
        finite = all(math.isfinite(v) for v in p)
        covered = any(all(q_k <= p_k + t for q_k, p_k, t in zip(q, p, tolerance, strict=True)) for q in seen)
        stale = stale + 1 if not finite or covered else 0
        if finite:
            seen.append(p)
    return stale
