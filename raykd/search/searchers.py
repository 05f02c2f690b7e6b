"""The search algorithms that propose hyperparameters: Optuna (seeded multivariate TPE, or
NSGA-II for several objectives) told what really happened to each trial, the study broker (a
study per distinct value of a study-changing key), and where Optuna's study is stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from raykd import spaces
from raykd.config import DISTILL, RaykdConfig, with_values
from raykd.objective import MODE
from raykd.search.plan import Plan
from raykd.search.schedulers import stopped_at, unseen_rounds
from raykd.study.prepare import prepare_study


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna what really happened to a trial.

    Out of the box Ray reports intermediate values at ``training_iteration`` (which restarts on
    resume) and tells Optuna that an ASHA-stopped trial COMPLETED with its last, low-fidelity F1,
    which misleads TPE. Here intermediate values are indexed by the loop's ``round``, and a trial
    whose last result is not its ``final`` round is told as PRUNED (Optuna keeps its intermediate
    values; TPE treats it as the partial result it is).

    One objective: the value of a round, as Optuna sees it, is the trial's score so far under
    ``trial_score`` (``best``: the best round up to it; ``last``: that round), so a COMPLETE
    trial's value and a PRUNED trial's last intermediate value both equal the score the summary
    ranks it by. Each round is reported once (a repeated step is only a warning in Optuna).
    The per-trial state lives in ``__dict__``, which Ray pickles with the searcher for resume.
    """

    def __init__(self, *args, trial_score: str = "best", stopped_uri: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._trial_score = trial_score
        self._stopped_uri = stopped_uri  # where ASHA marks the trials it stopped (ResumableASHA)
        self._score: dict[str, float] = {}
        self._reported: dict[str, set[int]] = {}

    def _last_told(self, trial_id: str) -> int:
        return max(self._reported.get(trial_id) or {0})

    def _unseen(self, trial_id: str, result: dict, upto: int) -> list[tuple[int, float]]:
        """Rounds before ``upto`` this searcher was never told (an interrupted search's), from the
        result's history; up to the round ASHA stopped the trial at, when it did."""
        missed = unseen_rounds(result, self._last_told(trial_id), upto)
        stop = stopped_at(self._stopped_uri, trial_id) if missed else None  # read only when needed
        return missed if stop is None else [(r, v) for r, v in missed if r <= stop]

    def _past_stop(self, trial_id: str, result: dict | None) -> int | None:
        """The round ASHA stopped the trial at, when ``result`` (the one Tune ends it with) is a
        later round's: a stop judged from the history of rounds Tune never saw."""
        stop = stopped_at(self._stopped_uri, trial_id) if result else None
        return stop if stop is not None and int(result.get("round", 0)) > stop else None

    def _keep(self, trial_id: str, value: float) -> None:
        prev = self._score.get(trial_id)
        self._score[trial_id] = value if prev is None or self._trial_score == "last" else self._better(prev, value)

    def _better(self, a: float, b: float) -> float:
        # Every score is better in MODE's direction (a multi-objective searcher's own mode is a list).
        return max(a, b) if MODE == "max" else min(a, b)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        rnd = int(result.get("round", result[TRAINING_ITERATION]))
        for missed, value in self._unseen(trial_id, result, rnd):
            self._tell(trial_id, result, missed, value)
        self._tell(trial_id, result, rnd, float(result[self.metric]))

    def _tell(self, trial_id: str, result: dict, rnd: int, value: float) -> None:
        self._keep(trial_id, value)
        if rnd in self._reported.setdefault(trial_id, set()):
            return
        self._reported[trial_id].add(rnd)
        try:
            super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: rnd, self.metric: self._score[trial_id]})
        except optuna.exceptions.UpdateFinishedTrialError:
            # Optuna's study (sqlite, written at once) already closed this trial while Tune's
            # saved state, older after a hard kill, still had it running: Optuna's record stands.
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stop = self._past_stop(trial_id, result)
        past_stop = stop is not None
        if result and self.metric in result and past_stop:
            # ASHA stopped it at an earlier round than this result's (one judged from the
            # history): only the rounds up to the stop are the trial's, and it was pruned.
            for missed, value in self._unseen(trial_id, result, stop + 1):
                self._tell(trial_id, result, missed, value)
        elif result and self.metric in result:
            # Tune hands a result that ends a trial (ASHA's max_t, or a stop) to on_trial_complete
            # only; record it as the trial's last intermediate value too.
            self.on_trial_result(trial_id, result)
        if result and not error:
            if past_stop or not result.get("final", True) or trial_id not in self._score:
                # Without the metric, OptunaSearch tells the trial as PRUNED.
                result = {k: v for k, v in result.items() if k != self.metric}
            else:
                result = {**result, self.metric: self._score[trial_id]}
        super().on_trial_complete(trial_id, result=result, error=error)


class ParetoOptunaSearch(TruthfulOptunaSearch):
    """The multi-objective search (``search.objectives``): Optuna takes no intermediate values
    from a multi-objective trial, so each trial is told once, when it ends: COMPLETE with
    [its score under ``trial_score``, its costs...] when it ran its final round, PRUNED when the
    scheduler stopped it (its low-fidelity score would mislead the sampler), FAIL on an error.
    (Ray's OptunaSearch would tell a trial without the metrics as COMPLETE with None values,
    which Optuna rejects, leaving the trial RUNNING in the study.)"""

    def __init__(self, *args, score: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._score_key = score

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self._score_key not in result:
            return
        rnd = int(result.get("round", result[TRAINING_ITERATION]))
        for missed, value in self._unseen(trial_id, result, rnd):
            self._keep(trial_id, value)
            self._reported.setdefault(trial_id, set()).add(missed)
        self._keep(trial_id, float(result[self._score_key]))
        self._reported.setdefault(trial_id, set()).add(rnd)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        past_stop = self._past_stop(trial_id, result) is not None
        if result and not past_stop:
            self.on_trial_result(trial_id, result)
        values, state = None, optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
        if not error and not past_stop and result and result.get("final", False) and trial_id in self._score \
                and all(m in result for m in self.metric if m != self._score_key):
            values = [self._score[trial_id] if m == self._score_key else float(result[m]) for m in self.metric]
            state = optuna.trial.TrialState.COMPLETE
        try:
            self._ot_study.tell(self._ot_trials[trial_id], values, state=state)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError) as exc:
            # Optuna's study (sqlite, written at once) already closed this trial on a resume.
            if not isinstance(exc, optuna.exceptions.UpdateFinishedTrialError) and "finished" not in str(exc):
                raise
        self._completed_trials.add(trial_id)


class StudyBroker:
    """Prepares, on demand, the study of each distinct value of the study-changing keys a trial
    samples (``spaces.STUDY_KEYS``: features for a doc_stride, logits for a teacher, ...), cached
    on disk by fingerprint like the base study. One actor per search, on the driver's node: its
    methods run one at a time, so two trials that need the same study never build it twice (the
    second waits and reuses it)."""

    def __init__(self, base: dict[str, Any], need_logits: bool, known: dict[str, dict[str, Any]]):
        self.base = base
        self.need_logits = need_logits
        self.studies = dict(known)

    def get(self, values: dict[str, Any]) -> dict[str, Any]:
        key = json.dumps(values, sort_keys=True, default=str)
        if key not in self.studies:
            cfg = with_values(RaykdConfig.from_dict(self.base), values)
            study, info = prepare_study(cfg, DISTILL, need_logits=self.need_logits)
            print(f"[raykd] study for {key}: features {'built' if info['features_built'] else 'reused'}, "
                  f"teacher logits {'computed' if info['teacher_logits_computed'] else 'reused or not needed'}",
                  flush=True)
            self.studies[key] = study.__dict__
        return self.studies[key]


def optuna_storage(experiment_path: str) -> optuna.storages.BaseStorage | None:
    """The Optuna study lives beside the experiment (sqlite) when storage is local, so it can be
    inspected after the search (optuna-dashboard, ``optuna.load_study``); in memory otherwise."""
    if "://" in experiment_path:
        return None
    Path(experiment_path).mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{experiment_path}/optuna.db")


def load_optuna_study(cfg: RaykdConfig, experiment_path: str) -> optuna.Study | None:
    storage = optuna_storage(experiment_path)
    return None if storage is None else optuna.load_study(study_name=cfg.search.name, storage=storage)


def optuna_trials(cfg: RaykdConfig, experiment_path: str) -> list[dict[str, Any]]:
    """What Optuna's study holds: per trial its state, value and intermediate values by round."""
    study = load_optuna_study(cfg, experiment_path)
    if study is None:
        return []
    return [
        # A multi-objective trial has values, and no value (Optuna refuses to give one).
        {"number": t.number, "state": t.state.name, "value": t.values[0] if t.values and len(t.values) == 1 else None,
         "values": t.values, "params": t.params,
         "intermediate": {int(k): v for k, v in t.intermediate_values.items()}}
        for t in study.trials
    ]


def make_searcher(cfg: RaykdConfig, params: list[spaces.Param], the_plan: Plan,
                  storage: optuna.storages.BaseStorage | None, stopped_uri: str) -> TruthfulOptunaSearch:
    """The searcher of a new search: seeded multivariate TPE on the score, or a multi-objective
    sampler on the plan's objectives; the study named after the search, in ``storage``."""
    s = cfg.search
    common = {"space": spaces.define_by_run(params), "study_name": s.name, "storage": storage,
              "points_to_evaluate": [spaces.optuna_point(p, params) for p in s.points_to_evaluate] or None,
              "trial_score": the_plan.trial_score, "stopped_uri": stopped_uri}
    tpe = optuna.samplers.TPESampler(seed=s.seed, multivariate=True, n_startup_trials=s.n_startup_trials)
    if not the_plan.pareto:
        return TruthfulOptunaSearch(metric=the_plan.metric, mode=MODE, sampler=tpe, **common)
    # Optuna's multi-objective samplers: TPE (MOTPE when given several objectives) or NSGA-II.
    # NSGA-II's default generation (50) is more trials than a search usually has: it would
    # never leave its random first generation.
    sampler = tpe if s.sampler == "tpe" else optuna.samplers.NSGAIISampler(
        seed=s.seed, population_size=max(2, min(50, s.num_samples // 2)))
    return ParetoOptunaSearch(metric=[k for k, _ in the_plan.objectives], mode=[d for _, d in the_plan.objectives],
                              sampler=sampler, score=the_plan.metric, **common)
