import random

import pytest

from raykd.serving import pareto
from raykd.serving.pareto import Objective, ParetoError

F1_LAT = pareto.objectives(["eval_f1", "latency_ms"])


def row(tid, f1, lat, **extra):
    return {"trial_id": tid, "eval_f1": f1, "latency_ms": lat, **extra}


def ids(records):
    return [r["trial_id"] for r in records]


def test_known_directions_and_explicit_ones():
    assert F1_LAT == [Objective("eval_f1", "max"), Objective("latency_ms", "min")]
    assert pareto.objectives([("score", "min")]) == [Objective("score", "min")]
    with pytest.raises(ParetoError, match="unknown"):
        pareto.objectives(["accuracy"])
    with pytest.raises(ParetoError, match="twice"):
        pareto.objectives(["eval_f1", ("eval_f1", "max")])
    with pytest.raises(ParetoError, match="direction"):
        Objective("x", "up")
    with pytest.raises(ParetoError, match="no objectives"):
        pareto.objectives([])


def test_front_of_a_hand_made_study():
    rows = [
        row("big", 80.0, 40.0),
        row("mid", 70.0, 20.0),
        row("mid_worse", 65.0, 20.0),   # same latency as mid, lower F1: dominated
        row("small", 50.0, 8.0),
        row("slow_bad", 60.0, 45.0),    # slower and worse than big: dominated
        row("tiny_bad", 40.0, 9.0),     # slower and worse than small: dominated
    ]
    assert ids(pareto.front(rows, F1_LAT)) == ["big", "mid", "small"]  # best F1 first
    assert pareto.front_indices(rows, F1_LAT) == [0, 1, 3]
    assert ids(pareto.dominators(rows[2], rows, F1_LAT)) == ["mid"]
    assert pareto.dominators(rows[0], rows, F1_LAT) == []


def test_direction_matters():
    rows = [row("a", 80.0, 40.0), row("b", 70.0, 20.0)]
    # Both objectives maximised: a (higher on both) dominates b.
    assert ids(pareto.front(rows, [Objective("eval_f1", "max"), Objective("latency_ms", "max")])) == ["a"]
    # Both minimised: b dominates a.
    assert ids(pareto.front(rows, [Objective("eval_f1", "min"), Objective("latency_ms", "min")])) == ["b"]


def test_ties_all_stay_on_the_front():
    rows = [row("a", 70.0, 20.0), row("b", 70.0, 20.0), row("c", 70.0, 25.0), row("d", 75.0, 20.0)]
    # a and b are equal (neither dominates) but both are dominated by d (same latency, higher F1);
    # c is dominated by a, b and d.
    assert ids(pareto.front(rows, F1_LAT)) == ["d"]
    rows = [row("a", 70.0, 20.0), row("b", 70.0, 20.0), row("c", 70.0, 25.0)]
    assert ids(pareto.front(rows, F1_LAT)) == ["a", "b"]
    # Equal records do not dominate each other; equal on one objective only, the other one decides.
    assert pareto.dominators(rows[0], [rows[1]], F1_LAT) == []
    assert ids(pareto.dominators(rows[2], [rows[0]], F1_LAT)) == ["a"]


def test_single_and_three_objectives():
    rows = [row("a", 80.0, 40.0, params=9e6), row("b", 80.0, 40.0, params=4e6), row("c", 90.0, 50.0, params=9e6)]
    assert ids(pareto.front(rows, pareto.objectives(["eval_f1"]))) == ["c"]
    assert ids(pareto.front(rows, pareto.objectives(["eval_f1", "latency_ms", "params"]))) == ["c", "b"]
    assert pareto.front([], F1_LAT) == []


@pytest.mark.parametrize("bad", [None, float("nan"), "80", True])
def test_missing_or_nan_is_refused_with_the_trial_named(bad):
    rows = [row("ok", 80.0, 10.0), row("t7", bad, 10.0)]
    if bad is None:
        del rows[1]["eval_f1"]
    with pytest.raises(ParetoError, match="trial_id t7: objective 'eval_f1'"):
        pareto.front(rows, F1_LAT)


def test_best_under_budget():
    rows = [row("big", 80.0, 40.0), row("mid", 70.0, 20.0), row("mid_fast", 70.0, 15.0), row("small", 50.0, 8.0)]
    f1 = Objective("eval_f1", "max")
    assert pareto.best_under_budget(rows, f1, "latency_ms", 100)["trial_id"] == "big"
    assert pareto.best_under_budget(rows, f1, "latency_ms", 40.0)["trial_id"] == "big"  # the budget is inclusive
    # Equal F1 under the budget: the faster one.
    assert pareto.best_under_budget(rows, f1, "latency_ms", 30)["trial_id"] == "mid_fast"
    assert pareto.best_under_budget(rows, f1, "latency_ms", 10)["trial_id"] == "small"
    assert pareto.best_under_budget(rows, f1, "latency_ms", 5) is None
    with pytest.raises(ParetoError, match="finite"):
        pareto.best_under_budget(rows, f1, "latency_ms", float("nan"))


def test_random_studies_front_is_exactly_the_undominated_set():
    rng = random.Random(0)
    for _ in range(50):
        rows = [row(str(i), rng.choice([50.0, 60.0, 70.0, rng.uniform(40, 90)]), rng.choice([5.0, 10.0, 20.0]))
                for i in range(rng.randint(1, 25))]
        on_front = ids(pareto.front(rows, F1_LAT))
        for r in rows:
            beaten = pareto.dominators(r, rows, F1_LAT)
            assert (r["trial_id"] in on_front) == (not beaten)
        f1s = [r["eval_f1"] for r in pareto.front(rows, F1_LAT)]
        assert f1s == sorted(f1s, reverse=True)
        # The best under any budget is on the front.
        for budget in (5.0, 10.0, 20.0):
            pick = pareto.best_under_budget(rows, F1_LAT[0], "latency_ms", budget)
            assert pick is None or pick["trial_id"] in on_front
