"""The objective of a run or a search: the one reported metric that ranks checkpoints, that ASHA
and Optuna compare, that the summary ranks trials by and that picks the registered student. It is
the task's own (``eval_f1`` for question answering, ``eval_accuracy`` for classification) unless
``search.metric`` names another score the task reports (or ``search.objectives`` does, in a
Pareto search, beside the serving costs it minimises). Every user imports it from here.
"""

from __future__ import annotations

from raykd.config import COSTS, RaykdConfig

MODE = "max"  # every score raykd reports (F1, exact match, accuracy) is better higher

# Reported with every round: the objective of every round so far, as JSON [[round, value], ...].
# Rounds a run reported while its search was being interrupted reach Train's checkpoints but not
# Tune; on resume the scheduler and the searcher judge them from this (a string: metric loggers
# skip it).
ROUND_SCORES = "round_scores"


def metric(cfg: RaykdConfig) -> str:
    from raykd import tasks

    task = tasks.get(cfg.task)
    scored = [o for o in cfg.search.objectives if o in task.score_keys()]
    return cfg.search.metric or (scored[0] if scored else task.metric)


def costs(cfg: RaykdConfig) -> list[str]:
    """The serving costs a Pareto search minimises, in the order search.objectives gives them."""
    return [o for o in cfg.search.objectives if o in COSTS]


def objectives(cfg: RaykdConfig) -> list[tuple[str, str]]:
    """(key, "max"/"min") of every objective: the score first, then the costs; one entry when
    the search has a single objective."""
    return [(metric(cfg), MODE), *((c, "min") for c in costs(cfg))]


def needs_costs(cfg: RaykdConfig) -> bool:
    """Whether trials must carry their architecture's measured costs (a Pareto search or a
    latency budget)."""
    return bool(costs(cfg)) or cfg.search.max_latency_ms is not None


def scores(cfg: RaykdConfig) -> list[tuple[str, str]]:
    """(key, short label) of every score an evaluation reports, the objective first: what the
    console's round lines and progress table show."""
    from raykd import tasks

    main = metric(cfg)
    others = [(s.key, s.label) for s in tasks.get(cfg.task).scores if s.key != main]
    return [(main, main), *others]
