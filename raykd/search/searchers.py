"""The search algorithms that propose hyperparameters: Optuna (seeded multivariate TPE, or
NSGA-II for several objectives) told what really happened to each trial, the study broker (a
study per distinct value of a study-changing key), and where Optuna's study is stored.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import optuna
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import Searcher

from raykd import config, spaces, storage
from raykd.config import DISTILL, RaykdConfig
from raykd.objective import MODE
from raykd.prepare import prepare_study
from raykd.search.plan import Plan
from raykd.search.schedulers import stopped_at, unseen_rounds
from raykd.study.runspec import Study


class TruthfulOptunaSearch(Searcher):
    """A Tune searcher that drives an Optuna study through its ask-and-tell interface and tells
    it what really happened to a trial.

    Ray's OptunaSearch reports intermediate values at ``training_iteration`` (which restarts on
    resume) and tells Optuna that an ASHA-stopped trial COMPLETED with its last, low-fidelity F1,
    which misleads TPE. Here intermediate values are indexed by the loop's ``round``, and a trial
    whose last result is not its ``final`` round is told as PRUNED (Optuna keeps its intermediate
    values; TPE treats it as the partial result it is).

    One objective: the value of a round, as Optuna sees it, is the trial's score so far under
    ``trial_score`` (``best``: the best round up to it; ``last``: that round), so a COMPLETE
    trial's value and a PRUNED trial's last intermediate value both equal the score the summary
    ranks it by. Each round is reported once (a repeated step is only a warning in Optuna).

    ``space`` is a define-by-run function (:class:`raykd.spaces.DefineByRun`): it suggests the
    searched values on the asked trial and returns the values it fixes (constants, tied alphas),
    which join the trial's config. ``points_to_evaluate`` are enqueued in the study once, when a
    search starts (on resume the study already holds them). The whole state, the study with its
    storage included, is what :meth:`save` writes and :meth:`restore` reads (Tune calls them).
    """

    def __init__(self, space, metric: str | list[str], mode: str | list[str], sampler: optuna.samplers.BaseSampler,
                 study_name: str = "optuna", storage: optuna.storages.BaseStorage | None = None,
                 points_to_evaluate: list[dict[str, Any]] | None = None, trial_score: str = "best",
                 stopped_uri: str | None = None):
        super().__init__(metric=metric, mode=mode)
        self._space = space
        directions = [("minimize" if m == "min" else "maximize") for m in (mode if isinstance(mode, list) else [mode])]
        # The searcher decides when a trial ends (ASHA stops it in Tune), never Optuna's pruner.
        self._study = optuna.create_study(storage=storage, sampler=sampler, pruner=optuna.pruners.NopPruner(),
                                          study_name=study_name, load_if_exists=True, directions=directions)
        for point in points_to_evaluate or []:
            self._study.enqueue_trial(point)
        self._trials: dict[str, optuna.Trial] = {}  # Tune's trial id -> Optuna's trial
        self._ended: set[str] = set()  # trials told to the study as ended
        self._trial_score = trial_score
        self._stopped_uri = stopped_uri  # where ASHA marks the trials it stopped (ResumableASHA)
        self._score: dict[str, float] = {}
        self._reported: dict[str, set[int]] = {}

    @property
    def study(self) -> optuna.Study:
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self._trials:
            self._trials[trial_id] = self._study.ask()
        trial = self._trials[trial_id]
        fixed = self._space(trial)
        return {**trial.params, **(fixed or {})}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

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

    def _end(self, trial_id: str, values: float | list[float] | None, state: optuna.trial.TrialState | None) -> None:
        """Tell the study how the trial ended. Values with no state: COMPLETE, or FAIL when Optuna
        finds them infeasible (NaN). A trial the study already closed (sqlite, written at once,
        while Tune's saved state, older after a hard kill, still had it running) keeps Optuna's
        record."""
        self._study.tell(self._trials[trial_id], values, state=state, skip_if_finished=True)
        self._ended.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ended or self.metric not in result:
            return
        rnd = int(result["round"] if "round" in result else result[TRAINING_ITERATION])
        for missed, value in self._unseen(trial_id, result, rnd):
            self._tell(trial_id, missed, value)
        self._tell(trial_id, rnd, float(result[self.metric]))

    def _tell(self, trial_id: str, rnd: int, value: float) -> None:
        self._keep(trial_id, value)
        if rnd in self._reported.setdefault(trial_id, set()):
            return
        self._reported[trial_id].add(rnd)
        try:
            self._trials[trial_id].report(self._score[trial_id], rnd)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # closed in the study already (see _end): Optuna's record stands

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._ended:
            return
        stop = self._past_stop(trial_id, result)
        past_stop = stop is not None
        if result and self.metric in result and past_stop:
            # ASHA stopped it at an earlier round than this result's (one judged from the
            # history): only the rounds up to the stop are the trial's, and it was pruned.
            for missed, value in self._unseen(trial_id, result, stop + 1):
                self._tell(trial_id, missed, value)
        elif result and self.metric in result:
            # Tune hands a result that ends a trial (ASHA's max_t, or a stop) to on_trial_complete
            # only; record it as the trial's last intermediate value too.
            self.on_trial_result(trial_id, result)
        value = None
        if result and not error and not past_stop and result.get("final", True) and trial_id in self._score:
            value = self._score[trial_id]
        elif error and result and self.metric in result:
            value = float(result[self.metric])  # as Ray's OptunaSearch did: the metric it ended with
        # Without a value: PRUNED (Optuna takes the last intermediate value as the value), or FAIL.
        self._end(trial_id, value, None if value is not None else
                  optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED)


class ParetoOptunaSearch(TruthfulOptunaSearch):
    """The multi-objective search (``search.objectives``): Optuna takes no intermediate values
    from a multi-objective trial, so each trial is told once, when it ends: COMPLETE with
    [its score under ``trial_score``, its costs...] when it ran its final round, PRUNED when the
    scheduler stopped it (its low-fidelity score would mislead the sampler), FAIL on an error."""

    def __init__(self, *args, score: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._score_key = score

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ended or self._score_key not in result:
            return
        rnd = int(result["round"] if "round" in result else result[TRAINING_ITERATION])
        for missed, value in self._unseen(trial_id, result, rnd):
            self._keep(trial_id, value)
            self._reported.setdefault(trial_id, set()).add(missed)
        self._keep(trial_id, float(result[self._score_key]))
        self._reported.setdefault(trial_id, set()).add(rnd)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._ended or trial_id not in self._trials:
            return
        past_stop = self._past_stop(trial_id, result) is not None
        if result and not past_stop:
            self.on_trial_result(trial_id, result)
        values, state = None, optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
        if not error and not past_stop and result and result.get("final", False) and trial_id in self._score \
                and all(m in result for m in self.metric if m != self._score_key):
            values = [self._score[trial_id] if m == self._score_key else float(result[m]) for m in self.metric]
            # Optuna refuses a COMPLETE trial with a NaN value (the search would stop on it); a
            # trial whose scores are not all finite failed.
            state = optuna.trial.TrialState.COMPLETE if all(math.isfinite(v) for v in values) \
                else optuna.trial.TrialState.FAIL
            values = values if state == optuna.trial.TrialState.COMPLETE else None
        self._end(trial_id, values, state)


class StudyBroker:
    """Prepares, on demand, the study of each distinct value of the study-changing keys a trial
    samples (``spaces.STUDY_KEYS``: features for a doc_stride, logits for a teacher, ...), cached
    on disk by fingerprint like the base study. One actor per search, on the driver's node: its
    methods run one at a time, so two trials that need the same study never build it twice (the
    second waits and reuses it)."""

    def __init__(self, base: RaykdConfig, need_logits: bool, known: dict[str, Study]):
        self.base = base
        self.need_logits = need_logits
        self.studies = dict(known)

    def get(self, values: dict[str, Any]) -> Study:
        key = json.dumps(values, sort_keys=True, default=str)
        if key not in self.studies:
            # Not validated here: the asking trial validated its whole config, these values included.
            cfg = config.replace(self.base, values)
            study, info = prepare_study(cfg, DISTILL, need_logits=self.need_logits)
            print(f"[raykd] study for {key}: features {'built' if info['features_built'] else 'reused'}, "
                  f"teacher logits {'computed' if info['teacher_logits_computed'] else 'reused or not needed'}",
                  flush=True)
            self.studies[key] = study
        return self.studies[key]


def optuna_storage(paths: storage.ExperimentPaths) -> optuna.storages.BaseStorage | None:
    """The Optuna study lives beside the experiment (sqlite) when storage is local, so it can be
    inspected after the search (optuna-dashboard, ``optuna.load_study``); in memory otherwise."""
    if paths.optuna_db is None:
        return None
    Path(paths.experiment).mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{paths.optuna_db}")


def load_optuna_study(paths: storage.ExperimentPaths) -> optuna.Study | None:
    """The search's Optuna study (named after the search), or None when it was kept in memory."""
    db = optuna_storage(paths)
    return None if db is None else optuna.load_study(study_name=paths.name, storage=db)


def optuna_trials(paths: storage.ExperimentPaths) -> list[dict[str, Any]]:
    """What Optuna's study holds: per trial its state, value and intermediate values by round."""
    study = load_optuna_study(paths)
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
