"""Early stopping that is fair across student sizes: one ASHA per architecture.

In a search over student architectures, ASHA on F1 alone compares a 2-layer student with a
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

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


class ArchitectureOf:
    """A trial's architecture key from its config: the values of the keys that choose the
    student's architecture (e.g. ``models.student`` and ``models.init_from_teacher_layers``),
    as canonical JSON. Missing keys count as None (the base config's value is the same for all
    trials). A picklable callable, so the scheduler holding it can be saved with the search."""

    def __init__(self, keys: Sequence[str]):
        if not keys:
            raise ValueError("ArchitectureOf needs at least one config key")
        self.keys = tuple(keys)

    def __call__(self, config: Mapping[str, Any]) -> str:
        return key_of_values({k: config.get(k) for k in self.keys})


def key_of_values(values: Mapping[str, Any]) -> str:
    """The architecture key of a set of architecture-choosing values (canonical JSON)."""
    return json.dumps(dict(values), sort_keys=True, default=str)


class PerArchitectureScheduler(TrialScheduler):
    """A scheduler that routes each trial to the scheduler of its architecture key.

    ``make(key)`` builds one sub-scheduler per key in ``keys`` (e.g.
    ``lambda k: ASHAScheduler(time_attr="round", max_t=R + 1, grace_period=g)``); ``key_of(config)``
    maps a trial's config to its key. Tune's ``metric``/``mode`` reach every sub-scheduler.
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
