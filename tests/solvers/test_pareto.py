from __future__ import annotations

import math

import pytest

from solvers.pareto import dominates, hypervolume, non_dominated


def test_non_dominated_on_hand_built_points() -> None:
    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3), (5, 5), (math.nan, 0), (0, math.inf)]
    # (3,4) dominated by (2,3); (5,5) by all; duplicates keep the first; NaN/inf never on a front
    assert non_dominated(pts) == [0, 1, 3]
    assert dominates((1, 1), (1, 2)) and not dominates((1, 2), (1, 2))
    assert non_dominated([(1, 2, 3), (2, 1, 3), (2, 2, 3), (1, 2, 2)]) == [1, 3]


def test_hypervolume_2d_hand_computed() -> None:
    # staircase of (1,3), (2,2), (3,1) against (4,4): 3*1 + 2*1 + 1*1 = 6... plus the steps below:
    # columns x in [1,2): height 4-3=1; [2,3): 4-2=2; [3,4): 4-1=3 -> 1 + 2 + 3 = 6
    assert hypervolume([(1, 3), (2, 2), (3, 1), (3, 3)], (4, 4)) == pytest.approx(6.0)
    assert hypervolume([(5, 1)], (4, 4)) == 0.0
    assert hypervolume([(0, 0)], (2, 3)) == pytest.approx(6.0)


def test_hypervolume_3d_matches_inclusion_exclusion() -> None:
    # two boxes against (2,2,2): (0,1,1)-> 2*1*1=2, (1,0,1) -> 1*2*1=2, overlap [1,2]x[1,2]x[1,2] = 1
    assert hypervolume([(0, 1, 1), (1, 0, 1)], (2, 2, 2)) == pytest.approx(3.0)


def test_trailing_stale_counts_points_since_the_front_last_improved() -> None:
    from solvers.pareto import trailing_stale

    tol = (0.1, 0.0)
    assert trailing_stale([], tol) == 0
    # (degradation, cost): the 2nd is cheaper (improves), the 3rd is worse, the 4th better by < tol, the 5th NaN
    pts = [(1.0, 4.0), (2.0, 3.0), (2.5, 4.0), (0.95, 4.0), (math.nan, 1.0)]
    assert trailing_stale(pts, tol) == 3
    assert trailing_stale([*pts, (0.5, 4.0)], tol) == 0  # a real gain resets the count
