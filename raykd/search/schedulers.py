"""Early stopping: ASHA that judges a trial by its score and survives an interrupted search
(:class:`ResumableASHA`, with a marker file per trial it stopped), and early stopping that is fair
across student sizes: one ASHA per architecture (:class:`PerArchitectureScheduler`).

Fair stopping: in a search over student architectures, ASHA on F1 alone compares a 2-layer student with a
6-layer one at the same round and stops the small one for scoring lower, although it may be the
best answer within a latency budget: every small architecture would be cut before its point on
the Pareto front is known. The rule here: **a trial is only ever compared with trials of its own
architecture.** Each architecture key gets its own ASHA (Ray's ``ASHAScheduler``, or any
scheduler the factory builds, e.g. raykd's resumable one), with its own rungs.

Why this rule rather than a latency-aware score: within one architecture latency is the same for
every trial (it is measured per architecture), so "lower F1 at the same round" there means exactly
"heading for a dominated point" and ASHA's usual argument holds unchanged. A blended score
(F1 − λ·latency) would need a λ, i.e. a guess at the user's trade-off, which the Pareto front is
meant to avoid. The cost: an architecture sampled few times is stopped little (ASHA lets the first
trials of a rung through), which errs on the side of not cutting a size short.

The schedulers for every key are built when this one is: Tune pickles the scheduler when the
search starts and unpickles that copy on resume, so all of them are inside it (a resumable
sub-scheduler restores its rungs in its own ``__setstate__``). A trial of a key not declared up
front is refused loudly rather than given a fresh, empty ASHA.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow.fs as pafs
from ray.tune.experiment import Trial
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from raykd import objective, storage
from raykd.search.plan import Plan


class PerArchitectureScheduler(TrialScheduler):
    """A scheduler that routes each trial to the scheduler of its architecture key.

    ``make(key)`` builds one sub-scheduler per key in ``keys`` (e.g.
    ``lambda k: ASHAScheduler(time_attr="round", max_t=R + 1, grace_period=g)``); ``key_of(config)``
    maps a trial's config to its key (:class:`raykd.serving.architectures.KeyOf` in a search). Tune's ``metric``/``mode`` reach every sub-scheduler.
    Decisions (CONTINUE/STOP) are the sub-scheduler's; which pending trial runs next is FIFO, as
    in ASHA.
    """

    def __init__(self, key_of: Callable[[Mapping[str, Any]], str], make: Callable[[str], TrialScheduler],
                 keys: Iterable[str]):
        super().__init__()
        self._key_of = key_of
        self._schedulers: dict[str, TrialScheduler] = {}
        for key in keys:
            if key not in self._schedulers:
                self._schedulers[key] = make(key)
        if not self._schedulers:
            raise ValueError("PerArchitectureScheduler needs the architecture keys of the search")
        self._trial_key: dict[str, str] = {}

    @property
    def schedulers(self) -> dict[str, TrialScheduler]:
        return dict(self._schedulers)

    def key(self, trial: Trial) -> str:
        """The trial's architecture key (remembered when the trial was added)."""
        if trial.trial_id in self._trial_key:
            return self._trial_key[trial.trial_id]
        key = self._key_of(trial.config)
        if key not in self._schedulers:
            raise ValueError(f"trial {trial.trial_id}: architecture {key} is not among the search's "
                             f"architectures ({', '.join(self._schedulers)}): its trials would have no "
                             "peers to be compared with")
        return key

    def _sub(self, trial: Trial) -> TrialScheduler:
        return self._schedulers[self.key(trial)]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        ok = all(s.set_search_properties(metric, mode, **spec) for s in self._schedulers.values())
        if metric:
            self._metric = metric
        return ok

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        key = self.key(trial)
        self._trial_key[trial.trial_id] = key
        self._schedulers[key].on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._sub(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        return self._sub(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._sub(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._sub(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        return FIFOScheduler.choose_trial_to_run(self, tune_controller)

    def debug_string(self) -> str:
        return "\n".join(f"[{key}] {s.debug_string()}" for key, s in self._schedulers.items())

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


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
      with which score. The scheduler's state (ASHA's own ``save``/``restore``, which keep rungs,
      brackets and ours) is written beside the experiment after every result and read back on
      resume. A trial ASHA stopped also gets a marker file (``stopped/<trial id>.json``,
      with the round it was stopped at): after a hard kill Tune's saved state can be older and
      resume it, and the trial driver reads the marker and trains nothing more.
    """

    def __init__(self, state_uri: str, stopped_uri: str, trial_score: str = "best", **kwargs):
        super().__init__(**kwargs)
        self._stopped: dict[str, int] = {}  # trial id -> the round ASHA stopped it at
        self._score: dict[str, float] = {}  # trial id -> its score so far
        self._seen: dict[str, int] = {}  # trial id -> the last round this scheduler judged
        self._in_bracket: set[str] = set()  # trials given a bracket and not yet ended in it
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
        if metric is not None and (metric, mode) == (self._score_metric, self._score_mode):
            # A resumed search: the restored state has Tune's metric and mode already (ASHA
            # itself would refuse to be given them twice).
            return True
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
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, ASHA_STATE)
                with fs.open_input_stream(path) as f, open(local, "wb") as out:
                    out.write(f.read())
                self.restore(local)  # ASHAScheduler's own: its state (rungs, trials) and ours
            for trial_id, round_ in self._stopped.items():
                write_stopped(self._stopped_uri, trial_id, round_)

    def _save(self) -> None:
        # ASHAScheduler.save writes a local file; the experiment may live in a bucket.
        fs, path = storage.filesystem(self._state_uri)
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, ASHA_STATE)
            self.save(local)
            with open(local, "rb") as f, fs.open_output_stream(path + ".tmp") as out:
                out.write(f.read())
        fs.move(path + ".tmp", path)

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
        if trial.trial_id not in self._in_bracket:
            super().on_trial_add(tune_controller, trial)
            self._in_bracket.add(trial.trial_id)

    def on_trial_remove(self, tune_controller, trial) -> None:
        super().on_trial_remove(tune_controller, trial)
        self._in_bracket.discard(trial.trial_id)

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
        if trial.trial_id in self._in_bracket and trial.trial_id not in self._stopped:
            # The last result was already scored in on_trial_result (scoring again is idempotent).
            # A stopped trial is in the rung it was stopped at already: the result Tune ends it
            # with may be a later round's (one judged from the history), which must enter no rung.
            super().on_trial_complete(tune_controller, trial, self._scored(trial.trial_id, result))
            self._in_bracket.discard(trial.trial_id)
        self._save()


STOPPED = "stopped"  # the folder of the stop markers, in the experiment's
ASHA_STATE = "asha_state.pkl"


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


def make_scheduler(the_plan: Plan, experiment_path: str, stopped_uri: str, reduction_factor: float,
                   key_of: Callable[[Mapping[str, Any]], str]) -> TrialScheduler:
    """The scheduler of a new search: none that stops (FIFO) without a first rung; otherwise a
    resumable ASHA, one per architecture (``key_of`` a trial's config) when the plan measured
    several."""
    if the_plan.grace is None:
        return FIFOScheduler()

    # max_t one past the last round: a trial that completes ends by returning from fit() (Train
    # shuts its workers down cleanly) instead of being killed by ASHA at max_t, which leaves
    # its placement group to Train's asynchronous cleaner.
    def asha(state_file: str) -> ResumableASHA:
        return ResumableASHA(storage.join(experiment_path, state_file), stopped_uri, trial_score=the_plan.trial_score,
                             time_attr="round", max_t=the_plan.rounds + 1, grace_period=the_plan.grace,
                             reduction_factor=reduction_factor)

    if len(the_plan.costs) <= 1:
        return asha(ASHA_STATE)
    # Students of different sizes are never compared with each other.
    return PerArchitectureScheduler(
        key_of, lambda key: asha(f"asha_state-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pkl"),
        keys=list(the_plan.costs))
