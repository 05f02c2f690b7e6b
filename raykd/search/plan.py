"""What every trial of a search shares, decided before the first trial starts: the rounds, ASHA's
first rung, how a trial is scored, the costs measured per architecture (:class:`Plan`), and how
many trials run at once (:func:`max_concurrent`). What a resume compares of a plan is in
:mod:`raykd.search.resume`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from raykd import objective, spaces
from raykd.config import RaykdConfig, check_grace_period, replace
from raykd.errors import UserError
from raykd.training import trainer as train
from raykd.training.schedule import check_accumulation, expected_rounds

DRIVER_CPU = 0.01  # the trial driver only waits on its TorchTrainer; 0 is rejected by Tune


@dataclass
class Plan:
    """What every trial of a search shares: its rounds, ASHA's first rung (None: no early
    stopping), how a trial is scored (by which metric, its best or last round), and the scores
    the console shows ((key, label), the objective first)."""

    rounds: int
    grace: int | None
    trial_score: str
    metric: str
    scores: list[tuple[str, str]]
    # A Pareto search's objectives ((key, max/min), the score first) and budget, and the measured
    # costs of every architecture the space can build ({architecture key: {cost: value}}).
    objectives: list[tuple[str, str]] = field(default_factory=list)
    max_latency_ms: float | None = None
    costs: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def pareto(self) -> bool:
        return len(self.objectives) > 1

    @property
    def keep_by(self) -> str:
        # The checkpoint a trial's score comes from is the one to keep: its best round by the
        # metric, or simply its latest.
        return self.metric if self.trial_score == "best" else "round"


def plan(cfg: RaykdConfig, params: list[spaces.Param], n_train_features: int, warn=print) -> Plan:
    """Rounds and grace period. The default grace period is the first round at which every
    trial's warm-up is over (the largest warmup_ratio of the space) and at least
    ``search.min_share_before_stop`` of its training has run: earlier rounds of a warming-up,
    barely trained student say little about where it ends. An explicit grace period wins, with a
    warning when it falls inside warm-up; one past the rounds is refused."""
    s = cfg.search
    # The corner of the space with the fewest batches per epoch and the longest accumulation:
    # a trial there whose optimizer step needs more than an epoch is refused before any trial runs.
    # Not validated again: each of these values was, with the space's corners (spaces.check_corners).
    worst = {k: int(spaces.largest(params, cfg, k))
             for k in ("optim.grad_accum_steps", "optim.batch_size", "scaling.num_workers")}
    check_accumulation(replace(cfg, worst), n_train_features)
    rounds = s.rounds or expected_rounds(cfg, n_train_features)
    warm = spaces.largest(params, cfg, "optim.warmup_ratio")
    if s.grace_period is not None:
        check_grace_period(cfg, rounds)  # the config's own check, now that the rounds are counted
        grace = s.grace_period
        if grace < warm * rounds:
            warn(f"[raykd] warning: search.grace_period {grace} compares trials at {grace}/{rounds} of their "
                 f"training, inside a warm-up of {warm:.0%}: ASHA may stop late bloomers")
    else:
        grace = max(1, math.ceil(max(warm, s.min_share_before_stop) * rounds - 1e-9))
    # A first rung at the last round stops nothing: every trial there has finished.
    if s.scheduler == "fifo" or grace >= rounds:
        grace = None
    return Plan(rounds, grace, s.trial_score, objective.metric(cfg), objective.scores(cfg),
                objective.objectives(cfg), s.max_latency_ms)


def max_concurrent(cfg: RaykdConfig, resources: dict[str, float]) -> int:
    """How many trials fit at once: every worker's resources, plus each driver's CPU sliver, in
    the most the cluster can ever have (``resources``: what it has now, used when an autoscaler
    does not say how large it grows)."""
    if cfg.search.max_concurrent_trials:
        return cfg.search.max_concurrent_trials
    # An autoscaling cluster at its largest, not as it is now: a cold one has no worker node, and
    # it adds nodes only for trials queued in Ray.
    largest = train.cluster_at_largest()
    have = largest if largest is not None else resources
    need = {k: v * cfg.scaling.num_workers for k, v in train.worker_resources(cfg).items()}
    fits = []
    for key, amount in need.items():
        per_trial = amount + (DRIVER_CPU if key == "CPU" else 0.0)
        if amount > 0:
            fits.append(math.floor(min(have.get(key, 0.0) / per_trial, 1e6) + 1e-9))
    n = min(fits) if fits else 1
    if largest is None:
        n = max(n, 1)  # queued, so that the autoscaler sees the demand
        print(f"[raykd] the cluster autoscales, but how large it grows cannot be read here: {n} trial(s) at a "
              "time (run the search on the head node, or set search.max_concurrent_trials)", flush=True)
    if n < 1:
        where = f"{cfg.source}: " if cfg.source else ""
        raise UserError(f"{where}scaling: one trial needs {need} (+ CPU {DRIVER_CPU:g} for its driver), but the Ray "
                        f"cluster can have at most { {k: have.get(k, 0.0) for k in need} }: no trial can ever start")
    return n
