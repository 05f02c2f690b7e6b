"""Pareto fronts over trial records: which trials no other trial beats on every objective at once
(e.g. higher F1 *and* lower latency), and the best trial under a budget on one of them. Pure
functions on plain mappings (the search summary's rows); no Ray, no MLflow, no numpy.

A record ``a`` dominates ``b`` when ``a`` is at least as good on every objective and strictly
better on at least one. Ties: records with equal values on every objective do not dominate each
other, so all of them stay on the front (two trials of one architecture that score the same are
both reported; neither is hidden behind the other). A missing, non-numeric or NaN value is refused
with the record and key named, never read as "worst": the caller decides what a failed trial is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from raykd import tasks
from raykd.config import COSTS
from raykd.objective import MODE

Direction = Literal["max", "min"]

# The objectives raykd knows and which way each is better: every task's scores (better in MODE's
# direction) and the serving costs (better lower); anything else needs its direction given.
DIRECTIONS: dict[str, Direction] = {
    **{key: MODE for name in tasks.names() for key in tasks.get(name).score_keys()},
    **dict.fromkeys(COSTS, "min"),
}


class ParetoError(ValueError):
    """Records or objectives a front cannot be computed from (the message names which)."""


@dataclass(frozen=True)
class Objective:
    name: str
    direction: Direction

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min"):
            raise ParetoError(f"objective {self.name!r}: direction must be 'max' or 'min', got {self.direction!r}")

    def oriented(self, value: float) -> float:
        """The value on a larger-is-better scale."""
        return value if self.direction == "max" else -value


def objectives(spec: Iterable[str | tuple[str, str] | Objective]) -> list[Objective]:
    """``["eval_f1", "latency_ms"]`` (known directions), ``[("score", "max")]`` or Objective
    objects → a list of distinct objectives; an unknown name without a direction is refused."""
    out: list[Objective] = []
    for item in spec:
        if isinstance(item, Objective):
            obj = item
        elif isinstance(item, str):
            if item not in DIRECTIONS:
                raise ParetoError(f"objective {item!r}: unknown; known: {', '.join(DIRECTIONS)} "
                                  "(or give its direction as (name, 'max'|'min'))")
            obj = Objective(item, DIRECTIONS[item])
        else:
            name, direction = item
            obj = Objective(name, direction)  # type: ignore[arg-type]
        if any(o.name == obj.name for o in out):
            raise ParetoError(f"objective {obj.name!r} is given twice")
        out.append(obj)
    if not out:
        raise ParetoError("no objectives given")
    return out


def _label(record: Mapping[str, Any], index: int, id_key: str) -> str:
    return f"{id_key} {record[id_key]}" if id_key in record else f"record {index}"


def _value(record: Mapping[str, Any], obj: Objective, index: int, id_key: str) -> float:
    value = record.get(obj.name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParetoError(f"{_label(record, index, id_key)}: objective {obj.name!r} is "
                          f"{'missing' if value is None else repr(value)}; expected a number")
    if math.isnan(value):
        raise ParetoError(f"{_label(record, index, id_key)}: objective {obj.name!r} is NaN")
    return float(value)


def vector(record: Mapping[str, Any], objs: Sequence[Objective], index: int = 0,
           id_key: str = "trial_id") -> tuple[float, ...]:
    """The record's objective values, each on a larger-is-better scale."""
    return tuple(o.oriented(_value(record, o, index, id_key)) for o in objs)


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def front_indices(records: Sequence[Mapping[str, Any]], objs: Sequence[Objective],
                  id_key: str = "trial_id") -> list[int]:
    """Indices of the non-dominated records, best first by the first objective (then the next
    ones; equal records keep their input order). O(n²): a study has tens to hundreds of trials."""
    vecs = [vector(r, objs, i, id_key) for i, r in enumerate(records)]
    keep = [i for i, v in enumerate(vecs) if not any(_dominates(w, v) for j, w in enumerate(vecs) if j != i)]
    return sorted(keep, key=lambda i: tuple(-x for x in vecs[i]))


def front(records: Sequence[Mapping[str, Any]], objs: Sequence[Objective],
          id_key: str = "trial_id") -> list[Mapping[str, Any]]:
    """The non-dominated records (see :func:`front_indices`)."""
    return [records[i] for i in front_indices(records, objs, id_key)]


def dominators(record: Mapping[str, Any], others: Iterable[Mapping[str, Any]],
               objs: Sequence[Objective]) -> list[Mapping[str, Any]]:
    """The records among ``others`` that dominate ``record`` (empty: it is on their front)."""
    v = vector(record, objs)
    return [o for i, o in enumerate(others) if _dominates(vector(o, objs, i + 1), v)]


def best_under_budget(records: Sequence[Mapping[str, Any]], objective: Objective, budget_key: str,
                      budget: float, id_key: str = "trial_id") -> Mapping[str, Any] | None:
    """The best record by ``objective`` among those whose ``budget_key`` (e.g. ``latency_ms``) is
    at most ``budget``; among equals the one with the lowest ``budget_key`` (then the first), so
    with the two objectives (objective, budget_key) the pick is always on the front. None when
    no record fits the budget."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise ParetoError(f"budget on {budget_key!r} must be a finite number, got {budget!r}")
    cost = Objective(budget_key, "min")
    best, best_rank = None, None
    for i, r in enumerate(records):
        c = _value(r, cost, i, id_key)
        if c > budget:
            continue
        rank = (objective.oriented(_value(r, objective, i, id_key)), -c)
        if best_rank is None or rank > best_rank:
            best, best_rank = r, rank
    return best
