"""The Tune callback that writes one MLflow run per trial under the study run, in the driver (so
workers never reach MLflow): named by what the trial tried, its metrics indexed by evaluation
round, and ended as the trial really ended. It keeps its own trial → run mapping and writes
through ``MlflowClient``, on Tune's public :class:`~ray.tune.logger.LoggerCallback` hooks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.tune.logger import LoggerCallback

from raykd import errors
from raykd.tracking.runs import child_runs, metrics, trial_run_name


def _trial_number(trial) -> int | str:
    """The trial's place in the search (1, 2, ...): Tune's experiment tag starts with its counter,
    which a restored experiment keeps. The trial id when a tag has no number."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else trial.trial_id


def _params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    # A trial's config as MLflow parameters: nested keys joined by "/" (as Ray's own callback did).
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_params(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class TrialRunsCallback(LoggerCallback):
    """One child run of the study run per trial, named by what it tried (:func:`trial_run_name`),
    with the trial's config as parameters, that tells the truth about how the trial ended: metrics
    are indexed by evaluation round; a trial ASHA stopped ran as it should and ends FINISHED, tagged
    ``stopped_early``; a crashed one ends FAILED, tagged with the error. A trial resumed by
    ``--resume`` continues in its own run. (An interrupted search marks its open runs KILLED:
    :func:`raykd.tracking.runs.mark_interrupted`.)"""

    def __init__(self, uri: str, experiment_name: str, parent_run_id: str, searched: list[str] | None = None):
        self.tracking_uri = uri
        self.experiment_name = experiment_name
        self.parent_run_id = parent_run_id
        self.searched = list(searched or [])
        self.tags = {"mlflow.parentRunId": parent_run_id, "raykd.kind": "trial"}
        self._runs: dict[str, str] = {}  # trial id -> MLflow run id

    def setup(self, *_args, **_kwargs) -> None:
        # Tune pickles its callbacks with the experiment: a restored search starts from no runs
        # and finds each resumed trial's run again in MLflow (log_trial_start).
        self._runs = {}

    def _client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def log_trial_start(self, trial) -> None:
        client = self._client()
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            existing = child_runs(self.tracking_uri, self.parent_run_id, f"tags.`raykd.trial_id` = '{trial.trial_id}'")
            if existing:
                run_id = existing[0].info.run_id
                client.update_run(run_id, status="RUNNING")
            else:
                # Children live in their study run's experiment (where child_runs looks for them).
                experiment_id = client.get_run(self.parent_run_id).info.experiment_id
                run_id = client.create_run(experiment_id, run_name=str(trial),
                                           tags={**self.tags, "raykd.trial_id": trial.trial_id,
                                                 "trial_name": str(trial)}).info.run_id
            self._runs[trial.trial_id] = run_id
        for key, value in _params(trial.config or {}).items():
            client.log_param(run_id, key, value)
        # Named by what it tried, not by the trainable and trial id (`_trial_driver_8a…`).
        name = trial_run_name(_trial_number(trial), trial.config or {}, self.searched, trial.trial_id)
        client.update_run(run_id, name=name)

    def log_trial_result(self, _iteration: int, trial, result: dict) -> None:
        now, step = int(time.time() * 1000), int(result["round"])
        self._client().log_batch(self._runs[trial.trial_id],
                                 metrics=[Metric(k, v, now, step) for k, v in metrics(result).items()])

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self._runs[trial.trial_id]
        last = trial.last_result or {}
        client = self._client()
        if failed:
            client.set_tag(run_id, "raykd.end", "failed")
            try:
                # The trial's local error file: the copy in storage is synced later.
                local = Path(trial.error_file) if trial.error_file else None
                why = errors.reason(local.read_text() if local and local.is_file() else trial.get_error())
            except Exception:  # noqa: BLE001 -- the error file is gone or unreadable: point at it
                why = ""
            client.set_tag(run_id, "raykd.error", why or f"see {getattr(trial, 'error_file', None) or 'the Ray logs'}")
            status = "FAILED"
        elif not last.get("final", True):
            # Early stopping is the search working, not a failure: FINISHED (KILLED is drawn as a
            # failure), and the tag says that it was cut short.
            client.set_tag(run_id, "raykd.end", f"stopped early by ASHA after round {last.get('round')}")
            client.set_tag(run_id, "stopped_early", "true")
            status = "FINISHED"
        else:
            client.set_tag(run_id, "raykd.end", "completed")
            status = "FINISHED"
        client.set_terminated(run_id, status=status)
