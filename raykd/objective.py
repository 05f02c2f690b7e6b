"""The objective of a run or a search: the one reported metric that ranks checkpoints, that ASHA
and Optuna compare, that the summary ranks trials by and that picks the registered student. It is
the task's own (``eval_f1`` for question answering, ``eval_accuracy`` for classification) unless
``search.metric`` names another score the task reports. Every user imports it from here.
"""

from __future__ import annotations

from raykd.config import RaykdConfig

MODE = "max"  # every score raykd reports (F1, exact match, accuracy) is better higher


def metric(cfg: RaykdConfig) -> str:
    from raykd import tasks

    return cfg.search.metric or tasks.get(cfg.task).metric


def scores(cfg: RaykdConfig) -> list[tuple[str, str]]:
    """(key, short label) of every score an evaluation reports, the objective first: what the
    console's round lines and progress table show."""
    from raykd import tasks

    main = metric(cfg)
    others = [(s.key, s.label) for s in tasks.get(cfg.task).scores if s.key != main]
    return [(main, main), *others]
