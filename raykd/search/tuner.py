"""The search: a Ray Tune ``Tuner`` over a per-trial driver function that builds the trial's
``TorchTrainer`` (Train V2 + ``TuneReportCallback``), with ``OptunaSearch`` (seeded multivariate
TPE) proposing hyperparameters and ``ASHAScheduler`` stopping bad trials on the objective (the
task's metric, ``eval_f1`` for QA, ``eval_accuracy`` for classification; :mod:`raykd.objective`). Also: the
study broker (a study per distinct value of a study-changing key), concurrency derived from cluster
resources, resume, and the summary of all trials.

Rounds: every trial reports ``search.rounds`` evaluation rounds, round k after k/R of its own
optimizer steps, whatever its batch size or epochs; ``round`` is ASHA's time unit, so trials are
compared at the same share of their schedules, and a trial that runs its schedule reports round R
with ``final`` true. A trial's score (``search.trial_score``: its best or its last round) is what
Optuna is told, what the summary ranks by and what the registry registers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from raykd import errors, objective, spaces, storage
from raykd.config import COSTS, DISTILL, RaykdConfig, storage_root, with_values
from raykd.errors import TrialFailed, UserError
from raykd.objective import MODE
from raykd.search.schedulers import PerArchitectureScheduler
from raykd.serving import architectures, pareto
from raykd.study import cache as teacher_cache
from raykd.study.prepare import prepare_study
from raykd.study.runspec import RunSpec, Study
from raykd.training import trainer as train
from raykd.training.checkpoints import META_FILE
from raykd.training.schedule import check_accumulation, expected_rounds

DRIVER_CPU = 0.01  # the trial driver only waits on its TorchTrainer; 0 is rejected by Tune
TRAIN_RUNS = "train_runs"
SUMMARY = "summary.json"
ASHA_STATE = "asha_state.pkl"


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


class ResumableASHA(ASHAScheduler):
    """ASHA that judges a trial by its score, never stops a trial on its final round, and whose
    rungs survive an interrupted search.

    - The score: Ray's ASHA compares the value a trial reports *this* round. Under
      ``trial_score: best`` Optuna, the summary, the kept checkpoint and the registry judge a trial
      by its best round so far, so ASHA is handed that number too (under ``last``, this round's):
      one number everywhere.
    - A final round (``final`` in the result) is never stopped, whatever rung it lands on (a trial
      with fewer optimizer steps than rounds reports merged rounds, its last one possibly on a
      rung): a trial that ran its schedule is COMPLETED. It still enters its rung when it ends
      (``on_trial_complete``), so later trials are compared with it.
    - Resume: Tune's restore rebuilds the scheduler from its initial state (it saves the searcher's
      state, not the scheduler's), so a resumed search would forget which trial reached which rung
      with which score. The rungs are written beside the experiment after every result and read
      back on resume. A trial ASHA stopped also gets a marker file (``stopped/<trial id>.json``,
      with the round it was stopped at): after a hard kill Tune's saved state can be older and
      resume it, and the trial driver reads the marker and trains nothing more.
    """

    def __init__(self, state_uri: str, stopped_uri: str, trial_score: str = "best", **kwargs):
        super().__init__(**kwargs)
        self._stopped: dict[str, int] = {}  # trial id -> the round ASHA stopped it at
        self._score: dict[str, float] = {}  # trial id -> its score so far
        self._seen: dict[str, int] = {}  # trial id -> the last round this scheduler judged
        self._trial_score = trial_score
        self._score_metric = kwargs.get("metric")
        self._score_mode = kwargs.get("mode")
        self._round_attr = kwargs.get("time_attr", TRAINING_ITERATION)
        self._state_uri = state_uri
        self._stopped_uri = stopped_uri
        fs, path = storage.filesystem(state_uri)
        if fs.get_file_info(path).type == pafs.FileType.File:
            fs.delete_file(path)  # a fresh search starts with empty rungs

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        ok = super().set_search_properties(metric, mode, **spec)
        if ok:
            self._score_metric = metric or self._score_metric
            self._score_mode = mode or self._score_mode
        return ok

    def __setstate__(self, state: dict) -> None:
        # Tuner.restore unpickles the scheduler as it was when the search started: bring the
        # rungs up to date from the file written during the search.
        self.__dict__.update(state)
        fs, path = storage.filesystem(self._state_uri)
        if fs.get_file_info(path).type == pafs.FileType.File:
            with fs.open_input_stream(path) as f:
                saved = pickle.loads(f.read())
            self._brackets, self._trial_info = saved["brackets"], saved["trial_info"]
            self._num_stopped = saved["num_stopped"]
            self._stopped, self._score, self._seen = saved["stopped"], saved["score"], saved["seen"]
            for trial_id, round_ in self._stopped.items():
                write_stopped(self._stopped_uri, trial_id, round_)

    def _save(self) -> None:
        fs, path = storage.filesystem(self._state_uri)
        tmp = path + ".tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(pickle.dumps({"brackets": self._brackets, "trial_info": self._trial_info,
                                  "num_stopped": self._num_stopped, "stopped": self._stopped,
                                  "score": self._score, "seen": self._seen}))
        fs.move(tmp, path)

    def _scored(self, trial_id: str, result: dict) -> dict:
        """The result with the metric replaced by the trial's score so far."""
        metric = self._score_metric
        if metric not in result:
            return result
        value, prev = float(result[metric]), self._score.get(trial_id)
        if prev is not None and self._trial_score == "best":
            value = max(prev, value) if self._score_mode == "max" else min(prev, value)
        self._score[trial_id] = value
        return {**result, metric: value}

    def on_trial_add(self, tune_controller, trial) -> None:
        # A restored trial keeps the bracket it had; only a new one is assigned.
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self._stopped:
            return self.STOP
        decision, rnd = self.CONTINUE, int(result.get(self._round_attr, 0))
        # Rounds this scheduler never saw (reported to Train while an interrupted search was
        # stopping, then resumed past): judged first, each as it would have been, so a resumed
        # trial meets every rung it passed with its score there.
        for missed, value in unseen_rounds(result, self._seen.get(trial.trial_id, 0), rnd):
            decision = self._judge(tune_controller, trial, {self._round_attr: missed, self._score_metric: value})
            if decision == self.STOP:
                self._stopped[trial.trial_id] = missed
                break
        if decision != self.STOP:
            decision = self._judge(tune_controller, trial, result)
            if decision == self.STOP:
                self._stopped[trial.trial_id] = rnd
        self._seen[trial.trial_id] = max(rnd, self._seen.get(trial.trial_id, 0))
        # The rungs first, then the marker: a kill between the two leaves a stop the restored
        # rungs know of, and __setstate__ writes its marker.
        self._save()
        if decision == self.STOP:
            write_stopped(self._stopped_uri, trial.trial_id, self._stopped[trial.trial_id])
        return decision

    def _judge(self, tune_controller, trial, result: dict) -> str:
        result = self._scored(trial.trial_id, result)
        if result.get("final", False):
            # Its rung gets it in on_trial_complete, when fit() has returned.
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self._trial_info and trial.trial_id not in self._stopped:
            # The last result was already scored in on_trial_result (scoring again is idempotent).
            # A stopped trial is in the rung it was stopped at already: the result Tune ends it
            # with may be a later round's (one judged from the history), which must enter no rung.
            super().on_trial_complete(tune_controller, trial, self._scored(trial.trial_id, result))
        self._save()


STOPPED = "stopped"


def unseen_rounds(result: dict, seen: int, current: int) -> list[tuple[int, float]]:
    """(round, objective) of the rounds after ``seen`` and before ``current`` that the result's
    history (:data:`raykd.objective.ROUND_SCORES`) holds: rounds a trial reported to Train that
    never reached Tune (an interrupted search), in order."""
    text = result.get(objective.ROUND_SCORES)
    if not text:
        return []
    return [(int(r), float(v)) for r, v in json.loads(text) if seen < int(r) < current]


def write_stopped(stopped_uri: str, trial_id: str, round_: int) -> None:
    storage.write_text(storage.join(stopped_uri, f"{trial_id}.json"), json.dumps({"round": round_}))


def stopped_at(stopped_uri: str | None, trial_id: str) -> int | None:
    """The round ASHA stopped the trial at, or None when it did not stop it."""
    if stopped_uri is None:
        return None
    text = storage.read_text(storage.join(stopped_uri, f"{trial_id}.json"))
    return None if text is None else int(json.loads(text)["round"])


def all_stopped(stopped_uri: str) -> dict[str, int]:
    fs, root = storage.filesystem(stopped_uri)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
            with fs.open_input_stream(info.path) as f:
                out[info.base_name[:-len(".json")]] = int(json.loads(f.read())["round"])
    return out


class ProgressTable(tune.CLIReporter):
    """Tune's progress table with what a user watches as columns: the round, the task's scores
    (the objective by its full name, e.g. ``eval_f1`` and EM, or ``eval_accuracy`` and F1), the
    loss, and the searched parameters. Printed when a trial ends (and once at the end, if that
    adds anything), not every few seconds; without the scheduler's brackets and the resource
    lines, which are Ray's internals."""

    def __init__(self, keys: list[str], scores: list[tuple[str, str]]):
        short = [k.rsplit(".", 1)[-1] for k in keys]
        params = {k: (s if short.count(s) == 1 else k) for k, s in zip(keys, short)}
        super().__init__(metric_columns={"round": "round", **dict(scores), "train_loss": "loss"},
                         parameter_columns=params, max_report_frequency=0)
        self._printed_at = 0  # trials ended when the table was last printed

    def should_report(self, trials: list[Trial], done: bool = False) -> bool:
        ended = sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials)
        if ended == self._printed_at:
            return False
        self._printed_at = ended
        return True

    def report(self, trials: list[Trial], done: bool, *sys_info: str) -> None:
        # Dropped: Ray's temporary artifacts folder (the experiment's folder is in the summary) and
        # the "current best trial" by its last round, which is not a trial's score under
        # trial_score: best.
        lines = [line for line in self._progress_str(trials, done).splitlines()
                 if not line.startswith(("Result logdir:", "Current best trial:"))]
        self._print("\n".join(lines).rstrip("\n") + "\n")


class RoundLines(tune.Callback):
    """One line per trial round, printed by the search's driver as each result arrives. The
    workers' own lines are not shown in a search: Ray forwards them late, and its log
    deduplication merges lines of different trials that differ only in numbers."""

    def __init__(self, rounds: int, scores: list[tuple[str, str]]):
        self.rounds = rounds
        self.scores = scores  # (key, label), the objective first
        self._printed: set[tuple[str, int]] = set()

    def _line(self, trial: Trial, result: dict) -> None:
        metric = self.scores[0][0]
        if metric not in result or (trial.trial_id, result.get("round")) in self._printed:
            return
        self._printed.add((trial.trial_id, result.get("round")))
        shown = " ".join(f"{label}={result.get(key, float('nan')):.2f}" for key, label in self.scores)
        print(f"[raykd] trial {trial.trial_id} round {result.get('round')}/{self.rounds}: "
              f"{shown} loss={result.get('train_loss', float('nan')):.4f}", flush=True)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        self._line(trial, result)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        last = trial.last_result or {}
        self._line(trial, last)
        if self.scores[0][0] in last and not last.get("final", True):
            print(f"[raykd] trial {trial.trial_id} stopped early by ASHA after round {last.get('round')}/{self.rounds}",
                  flush=True)


def _trial_driver(config: dict[str, Any], base: dict[str, Any], study: dict[str, Any], runs_path: str,
                  rounds: int, keep_by: str, study_keys: list[str], broker=None,
                  costs: dict[str, dict[str, float]] | None = None, stopped_uri: str | None = None) -> None:
    """One trial: the sampled values on top of the base config, run by a TorchTrainer whose
    reports become this trial's Tune results. The Train run is named after the trial, so a
    resumed trial continues from its own checkpoint. ``costs``: each architecture's measured
    serving costs (a Pareto search), of which the trial reports its own. A trial ASHA already
    stopped (a resume after a hard kill whose saved state still had it running) trains nothing:
    it returns at once, and Tune ends it with the results it had."""
    trial_id = tune.get_context().get_trial_id()
    stopped = stopped_at(stopped_uri, trial_id)
    if stopped is not None:
        print(f"[raykd] trial {trial_id} was stopped by ASHA after round {stopped} before the interruption: "
              "not trained further", flush=True)
        return
    cfg = with_values(RaykdConfig.from_dict(base), config)
    if study_keys:
        study = ray.get(broker.get.remote({k: config[k] for k in study_keys}))
    mine = None
    if costs:
        mine = costs.get(architectures.key_of(architectures.of_config(cfg)))
        if mine is None:
            raise TrialFailed(f"architecture {architectures.describe(architectures.of_config(cfg))} was not "
                              "measured before the search")
    trainer = train.build_trainer(
        RunSpec.of(cfg, DISTILL, Study(**study), eval_rounds=rounds, costs=mine), name=trial_id,
        storage_path=runs_path, callbacks=[TuneReportCallback()], keep_by=keep_by,
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        # Train's error carries every worker's traceback; the trial's error says why in one line
        # (the traceback stays in the Train run's logs).
        causes = getattr(exc, "worker_failures", None) or {"": exc}
        raise TrialFailed("; ".join(sorted({errors.reason(e) for e in causes.values()}))) from None


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
    worst = {k: int(spaces.largest(params, cfg, k))
             for k in ("optim.grad_accum_steps", "optim.batch_size", "scaling.num_workers")}
    check_accumulation(with_values(cfg, worst), n_train_features)
    rounds = s.rounds or expected_rounds(cfg, n_train_features)
    warm = spaces.largest(params, cfg, "optim.warmup_ratio")
    if s.grace_period is not None:
        if s.grace_period > rounds:
            raise spaces.SpaceError(f"{cfg.source or 'config'}: search.grace_period ({s.grace_period}) is "
                                    f"past the last of the {rounds} rounds every trial runs; lower it or "
                                    "set search.scheduler: fifo")
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


@dataclass
class SearchSetup:
    tuner: tune.Tuner
    experiment_path: str


def _tuner(cfg: RaykdConfig, study: Study, params: list[spaces.Param], the_plan: Plan,
           callbacks: list, resume: bool) -> SearchSetup:
    s = cfg.search
    root = storage_root(cfg)
    experiment_path = storage.join(root, s.name)
    runs_path = f"{experiment_path}/{TRAIN_RUNS}"
    stopped_uri = f"{experiment_path}/{STOPPED}"
    keys = spaces.study_keys(params)
    broker = None
    if keys:
        # A teacher raykd fine-tuned for the base study is the teacher of every study: fine-tuning
        # one per searched data value would confound the comparison (and cost a fine-tune each).
        broker_base = cfg
        if cfg.models.teacher is None and study.teacher:
            broker_base = with_values(cfg, {"models.teacher": study.teacher})
        # On the driver's node, where the base study was prepared.
        here = ray.get_runtime_context().get_node_id()
        broker = ray.remote(num_cpus=0)(StudyBroker).options(
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(broker_base.to_dict(), spaces.may_use_teacher_logits(cfg, params),
                 {json.dumps({k: spaces.values_of([], cfg, k)[0] for k in keys}, sort_keys=True, default=str):
                  study.__dict__})
    trainable = tune.with_resources(
        tune.with_parameters(_trial_driver, base=cfg.to_dict(), study=study.__dict__, runs_path=runs_path,
                             rounds=the_plan.rounds, keep_by=the_plan.keep_by, study_keys=keys, broker=broker,
                             costs=the_plan.costs or None, stopped_uri=stopped_uri),
        {"CPU": DRIVER_CPU},
    )
    # Tune's newer console output ignores a progress reporter (ProgressTable); the classic one,
    # chosen by this variable when fit() starts, takes its columns.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    if resume:
        if not tune.Tuner.can_restore(experiment_path):
            raise UserError(f"--resume: {experiment_path} holds no Tune experiment to resume; "
                            "drop --resume and pass --overwrite to start afresh")
        # A failed trial stays failed (its reason is recorded; a NaN loss would fail again): resume
        # continues only the trials the interruption left unfinished.
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False)
        return SearchSetup(tuner, experiment_path)
    common = {"space": spaces.define_by_run(params), "study_name": s.name, "storage": optuna_storage(experiment_path),
                  "points_to_evaluate": [spaces.optuna_point(p, params) for p in s.points_to_evaluate] or None,
                  "trial_score": the_plan.trial_score, "stopped_uri": stopped_uri}
    tpe = optuna.samplers.TPESampler(seed=s.seed, multivariate=True, n_startup_trials=s.n_startup_trials)
    if the_plan.pareto:
        # Optuna's multi-objective samplers: TPE (MOTPE when given several objectives) or NSGA-II.
        # NSGA-II's default generation (50) is more trials than a search usually has: it would
        # never leave its random first generation.
        sampler = tpe if s.sampler == "tpe" else optuna.samplers.NSGAIISampler(
            seed=s.seed, population_size=max(2, min(50, s.num_samples // 2)))
        searcher = ParetoOptunaSearch(metric=[k for k, _ in the_plan.objectives],
                                      mode=[d for _, d in the_plan.objectives], sampler=sampler,
                                      score=the_plan.metric, **common)
    else:
        searcher = TruthfulOptunaSearch(metric=the_plan.metric, mode=MODE, sampler=tpe, **common)
    if the_plan.grace is None:
        scheduler = FIFOScheduler()
    else:
        # max_t one past the last round: a trial that completes ends by returning from fit() (Train
        # shuts its workers down cleanly) instead of being killed by ASHA at max_t, which leaves
        # its placement group to Train's asynchronous cleaner.
        def asha(state_file: str) -> ResumableASHA:
            return ResumableASHA(f"{experiment_path}/{state_file}", stopped_uri, trial_score=the_plan.trial_score,
                                 time_attr="round",
                                 max_t=the_plan.rounds + 1, grace_period=the_plan.grace,
                                 reduction_factor=s.reduction_factor)

        if len(the_plan.costs) > 1:
            # Students of different sizes are never compared with each other (raykd.fair_stopping).
            scheduler = PerArchitectureScheduler(
                architectures.KeyOf(architectures.of_config(cfg)),
                lambda key: asha(f"asha_state-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pkl"),
                keys=list(the_plan.costs))
        else:
            scheduler = asha(ASHA_STATE)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=the_plan.metric, mode=MODE, search_alg=searcher, scheduler=scheduler, num_samples=s.num_samples,
            max_concurrent_trials=max_concurrent(cfg, ray.cluster_resources()),
        ),
        run_config=tune.RunConfig(
            name=s.name, storage_path=root, callbacks=[RoundLines(the_plan.rounds, the_plan.scores), *callbacks],
            verbose=1, progress_reporter=ProgressTable(spaces.searched_keys(params)
                                                       + [p.key for p in params if p.kind == "complement"],
                                                       the_plan.scores
                                                       + ([("latency_ms", "ms")] if the_plan.costs else []))),
    )
    return SearchSetup(tuner, experiment_path)


def plan_record(the_plan: Plan) -> dict[str, Any]:
    """What a search planned, as a resume compares it (:mod:`raykd.resume`)."""
    return {"rounds": the_plan.rounds, "grace_period": the_plan.grace, "trial_score": the_plan.trial_score,
            "metric": the_plan.metric, "objectives": [list(o) for o in the_plan.objectives],
            "max_latency_ms": the_plan.max_latency_ms,
            # What each architecture was measured to cost: re-measured differently (another
            # latency: setting, machine), finished and resumed trials would not compare.
            "costs": the_plan.costs or None}


def study_record(study: Study) -> dict[str, Any]:
    """What a search's study is, as a resume compares it: the features (their folder is named by
    their fingerprint), the teacher and its logits (named by the teacher's fingerprint). Without
    cached logits (an online teacher) a local teacher folder is identified by its files."""
    out = {"features": storage.join(study.prepared).rsplit("/", 1)[-1], "teacher": study.teacher,
           "teacher_logits": study.teacher_file}
    if study.teacher and not study.teacher_file and not storage.is_remote(study.teacher):
        out["teacher_files"] = teacher_cache.model_identity(study.teacher)
    return out


def run_search(cfg: RaykdConfig, study: Study, the_plan: Plan, callbacks: list | None = None,
               resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the search; returns the summary (also written to <experiment>/summary.json)."""
    params = spaces.parse(cfg.space, cfg.source)
    setup = _tuner(cfg, study, params, the_plan, callbacks or [], resume)
    with _hangup_is_ctrl_c():
        grid = setup.tuner.fit()
    statuses = _saved_statuses(setup.experiment_path, grid)
    interrupted = any(st not in ("TERMINATED", "ERROR") for st in statuses.values()) \
        or len(grid) < cfg.search.num_samples
    # Summarize before pruning: a trial resumed by --resume finds its earlier rounds in its latest
    # checkpoint, which pruning may remove.
    # Trials ASHA stopped, with their round: after a hard kill a stopped trial's Train run can hold
    # rounds past it (reported while Tune was stopping it); they are not part of the search.
    stopped = all_stopped(f"{setup.experiment_path}/{STOPPED}")
    summary = summarize(grid, spaces.searched_keys(params) + [p.key for p in params if p.kind == "complement"],
                        the_plan, statuses, runs_path=f"{setup.experiment_path}/{TRAIN_RUNS}", stopped=stopped)
    summary["interrupted"] = interrupted
    if not interrupted:
        # Only a finished search prunes: an unfinished trial resumes from Train's latest
        # checkpoint, which Train refuses to do when a checkpoint it recorded is gone.
        prune_checkpoints(f"{setup.experiment_path}/{TRAIN_RUNS}", cfg.search.keep_checkpoints, the_plan.keep_by,
                          stopped=stopped)
    # Ray reports checkpoint paths inside their filesystem (``bucket/key`` on S3): give them back
    # their scheme so the summary's paths open as they are.
    for row in summary["trials"]:
        row["checkpoint_path"] = storage.as_uri(row["checkpoint_path"], setup.experiment_path)
    summary["experiment_path"] = setup.experiment_path
    summary["optuna_trials"] = optuna_trials(cfg, setup.experiment_path)
    # summary.json marks a finished search (benchmarks and the registry read it as final); an
    # interrupted one is reported on the console and continued with --resume.
    if not interrupted:
        storage.write_text(storage.join(setup.experiment_path, SUMMARY), json.dumps(summary, indent=2, default=str))
    return summary


@contextlib.contextmanager
def _hangup_is_ctrl_c():
    """While the search runs, a closed terminal (SIGHUP) or a polite kill (SIGTERM) stops it the
    way Ctrl-C does: Tune saves the experiment and the search ends resumable (Tune itself only
    catches SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _saved_statuses(experiment_path: str, grid) -> dict[str, str]:
    """Each trial's Tune status as Tune saved it when the search ended. On Ctrl-C Tune saves the
    experiment, then stops the trials still running and marks them TERMINATED, so the ResultGrid
    cannot tell them from finished ones; the saved state still has them RUNNING (or PENDING)."""
    try:
        analysis = tune.ExperimentAnalysis(experiment_path)
        return {t.trial_id: t.status for t in analysis.trials}
    except Exception:  # noqa: BLE001 -- no readable snapshot: what the grid says is all there is
        return {t.trial_id: t.status for t in grid._experiment_analysis.trials}


def prune_checkpoints(runs_path: str, keep: int, by: str, stopped: dict[str, int] | None = None) -> None:
    """Leave each trial its best ``keep`` checkpoints by ``by`` (the objective, or ``round``: the latest). Train keeps the latest one too
    (to resume a run); once the search is over no trial resumes, so that one goes unless it is
    among the best. A trial ASHA stopped keeps none past the round it was stopped at
    (``stopped``). Works on local paths and on cloud URIs (pyarrow filesystems)."""
    fs, root = storage.filesystem(runs_path)
    info = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for run_dir in (i.path for i in info if i.type == pafs.FileType.Directory):
        ckpts = [i.path for i in fs.get_file_info(pafs.FileSelector(run_dir))
                 if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]
        last = (stopped or {}).get(run_dir.rstrip("/").rsplit("/", 1)[-1])
        scored = []
        for path in ckpts:
            try:
                with fs.open_input_stream(f"{path}/{META_FILE}") as f:
                    meta = json.loads(f.read())
                if last is not None and int(meta["round"]) > last:
                    fs.delete_dir(path)
                    continue
                scored.append((meta[by], path))
            except (FileNotFoundError, OSError, KeyError, ValueError):
                scored.append((float("-inf"), path))
        scored.sort(reverse=MODE == "max" or by == "round")
        for _, path in scored[keep:]:
            fs.delete_dir(path)


def trial_score(df, rule: str, metric: str):
    """The row of a trial's results its score comes from: its best round by ``metric`` (among equal
    scores the latest, as in Train's checkpoint manager and in prune_checkpoints, so the row's
    checkpoint is the one that was kept), or its last round."""
    if rule == "last":
        return df.iloc[-1]
    col = df[metric][::-1]
    return df.loc[col.idxmax() if MODE == "max" else col.idxmin()]


def _with_earlier_rounds(df, runs_path: str | None, trial_id: str):
    """A trial's rounds, all of them. Tune restarts the function of a trial resumed by --resume
    with a fresh result file (Train, not Tune, holds the checkpoint), so Tune's results of that
    trial start at the round it resumed from, or are empty when it had reported its last round
    before the interruption. The rounds before are in the history every checkpoint of the trial's
    Train run carries (its latest checkpoint is still there: pruning comes after the summary)."""
    import pandas as pd

    first = int(df["round"].iloc[0]) if df is not None and not df.empty and "round" in df else None
    if runs_path is None or first == 1:
        return df
    fs, root = storage.filesystem(f"{runs_path}/{trial_id}")
    metas: dict[int, tuple[dict, str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            try:
                with fs.open_input_stream(f"{info.path}/{META_FILE}") as f:
                    meta = json.loads(f.read())
                metas[int(meta["round"])] = (meta, info.path)
            except (FileNotFoundError, OSError, KeyError, ValueError):
                continue
    if not metas:
        return df
    history = metas[max(metas)][0].get("history", [])
    earlier = [h for h in history if first is None or int(h["round"]) < first]
    if not earlier:
        return df
    before = pd.DataFrame([{**h, "checkpoint_path": metas.get(int(h["round"]), (None, None))[1]} for h in earlier])
    return before if first is None else pd.concat([before, df], ignore_index=True)


def summarize(grid, keys: list[str], the_plan: Plan, statuses: dict[str, str] | None = None,
              runs_path: str | None = None, stopped: dict[str, int] | None = None) -> dict[str, Any]:
    """One row per trial (hyperparameters, its score and the round it comes from, rounds run of
    those planned, stopped early), and the best trial: the best score over all trials, with the
    checkpoint of the round it comes from. Every score the task reports is a column, each taken
    from the trial's score round."""
    metric = the_plan.metric
    score_keys = [k for k, _ in the_plan.scores]
    rows = []
    for result in grid:
        config = result.config or {}
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        df = _with_earlier_rounds(result.metrics_dataframe, runs_path, trial_id)
        if df is not None and not df.empty and trial_id in (stopped or {}) and "round" in df:
            # Rounds past the one ASHA stopped the trial at (a hard kill's leftovers) do not count.
            df = df[df["round"] <= stopped[trial_id]].reset_index(drop=True)
        row: dict[str, Any] = {"trial_id": trial_id, **{k: config.get(k) for k in keys}}
        if result.error:
            row["error"] = errors.reason(result.error)
        # Not TERMINATED and not errored: the search was interrupted while this trial ran or waited.
        unfinished = (statuses or {}).get(trial_id, "TERMINATED") not in ("TERMINATED", "ERROR")
        if df is None or df.empty or metric not in df:
            row.update({"status": "FAILED" if result.error else ("UNFINISHED" if unfinished else "NO RESULT"),
                        **dict.fromkeys(score_keys), "rounds": 0, "planned_rounds": the_plan.rounds,
                        "stopped_early": False,
                        "checkpoint_path": None})
            rows.append(row)
            continue
        best = trial_score(df, the_plan.trial_score, metric)
        last = df.iloc[-1]
        final = bool(last.get("final", True))
        row.update({
            "status": "FAILED" if result.error else (
                "UNFINISHED" if unfinished else "STOPPED" if not final else "COMPLETED"),
            **{k: float(best[k]) if k in best else None for k in score_keys},
            "score_round": int(best["round"]),
            "rounds": int(df["round"].max()),
            "planned_rounds": the_plan.rounds,
            "stopped_early": not final and not result.error and not unfinished,
            "checkpoint_path": best.get("checkpoint_path"),
            "curve": [[int(r), float(f)] for r, f in zip(df["round"], df[metric])],
            # The architecture's serving costs (the same in every round).
            **{k: float(last[k]) for k in COSTS if k in last and last[k] == last[k]},
        })
        rows.append(row)
    out = {"metric": metric, "scores": score_keys, "trial_score": the_plan.trial_score, "rounds": the_plan.rounds,
           "grace_period": the_plan.grace, "trials": rows}
    return {**out, **_front_and_best(rows, the_plan)}


def _front_and_best(rows: list[dict[str, Any]], the_plan: Plan) -> dict[str, Any]:
    """The best trial: the best score over the trials that count; within search.max_latency_ms
    when a budget is set. In a Pareto search also the objectives and the front (trial ids, best
    score first)."""
    metric = the_plan.metric
    # A failed trial's rounds before the failure are real, but its run did not end as configured:
    # the winner comes from trials that ran their schedule (or were stopped by the scheduler).
    scored = [r for r in rows if r[metric] is not None and r["status"] not in ("UNFINISHED", "FAILED")]
    out: dict[str, Any] = {}
    if the_plan.max_latency_ms is not None:
        # The winner answers within the budget: a faster student may score lower than the best
        # (among equal scores, the fastest: the pick is on the F1/latency front).
        out["max_latency_ms"] = the_plan.max_latency_ms
        out["over_budget"] = sorted(r["trial_id"] for r in scored if r["latency_ms"] > the_plan.max_latency_ms)
        out["best"] = pareto.best_under_budget(scored, pareto.Objective(metric, MODE), "latency_ms",
                                               the_plan.max_latency_ms)
    elif the_plan.pareto:
        # The best score; among equal scores the cheapest, in the objectives' order: on the front.
        costs = [k for k, d in the_plan.objectives if d == "min"]
        out["best"] = max(scored, key=lambda r: (r[metric] if MODE == "max" else -r[metric],
                                                 *(-r[c] for c in costs))) if scored else None
    else:
        pick = max if MODE == "max" else min
        out["best"] = pick(scored, key=lambda r: r[metric]) if scored else None
    if the_plan.pareto:
        objs = pareto.objectives(the_plan.objectives)
        out["objectives"] = [[o.name, o.direction] for o in objs]
        # Every scored trial competes (a stopped one too): no front point is dominated by any trial.
        out["front"] = [r["trial_id"] for r in pareto.front(scored, objs)]
    return out


def format_table(summary: dict[str, Any]) -> str:
    rows = summary["trials"]
    if not rows:
        return "(no trials)"
    keys = [k for k in rows[0] if k not in ("checkpoint_path", "curve", "planned_rounds", "error")]

    def fmt(k, r):
        v = r.get(k)
        if k == "rounds":
            # How much of its schedule a trial ran: "2/6" for one stopped after round 2 of 6.
            return f"{v}/{r.get('planned_rounds')}"
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(k, r) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "  ".join(k.ljust(w) for k, w in zip(keys, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    out += [f"{r['trial_id']} FAILED: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(out)


def format_front(summary: dict[str, Any]) -> str:
    """The Pareto front, best score first: each point's score, other scores and costs."""
    rows = {r["trial_id"]: r for r in summary["trials"]}
    keys = [*summary["scores"], *(k for k, d in summary["objectives"] if d == "min" and k not in summary["scores"])]
    keys += [k for k in COSTS if k not in keys]
    head = ["trial", *keys]
    cells = [[t, *(_cost_cell(k, rows[t].get(k)) for k in keys)] for t in summary["front"]]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    lines = [(f"Pareto front ({' vs '.join(f'{k} {d}' for k, d in summary['objectives'])}): {len(cells)} of "
             f"{len(rows)} trials"), "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def _cost_cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "params":
        return f"{value / 1e6:.1f}M"
    return f"{value:.2f}"
