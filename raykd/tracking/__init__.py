"""Experiment tracking, and the only folder that imports MLflow: where runs are written
(:mod:`~raykd.tracking.store`), the study run and its trial runs (:mod:`~raykd.tracking.runs`,
:mod:`~raykd.tracking.callback`), the best student as a registered model
(:mod:`~raykd.tracking.registry`) and the figures (:mod:`~raykd.tracking.plots`, matplotlib only).

It may import raykd's config, objective, storage, errors and tasks (and, from training, only
the checkpoint's file names); never search/ or serving/: what serving makes (an ONNX export) is
handed in by the caller. What the commands call is named here.
"""

from raykd.tracking.callback import TrialRunsCallback
from raykd.tracking.registry import log_student, model_requirements
from raykd.tracking.runs import finish_study, log_single_run, mark_interrupted, reopen_study, start_study
from raykd.tracking.store import check, connect, resolve_uri

__all__ = ["TrialRunsCallback", "check", "connect", "finish_study", "log_single_run", "log_student",
           "mark_interrupted", "model_requirements", "reopen_study", "resolve_uri", "start_study"]
