"""The search run: a Ray Tune ``Tuner`` over a per-trial driver function that builds the trial's
``TorchTrainer`` (Train V2 + ``TuneReportCallback``), with Optuna proposing hyperparameters
(:mod:`raykd.search.searchers`) and ASHA stopping bad trials on the objective (the task's metric,
``eval_f1`` for QA, ``eval_accuracy`` for classification; :mod:`raykd.objective`;
:mod:`raykd.search.schedulers`). Also: a new search or the resume of an interrupted one, a closed
terminal treated as Ctrl-C, and the summary written when the search ends.

Rounds: every trial reports ``search.rounds`` evaluation rounds, round k after k/R of its own
optimizer steps, whatever its batch size or epochs; ``round`` is ASHA's time unit, so trials are
compared at the same share of their schedules, and a trial that runs its schedule reports round R
with ``final`` true. A trial's score (``search.trial_score``: its best or its last round) is what
Optuna is told, what the summary ranks by and what the registry registers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from raykd import compat, spaces, storage
from raykd.config import RaykdConfig, with_values
from raykd.errors import UserError
from raykd.objective import MODE
from raykd.search.plan import DRIVER_CPU, Plan, max_concurrent
from raykd.search.report import ProgressTable, RoundLines
from raykd.search.schedulers import STOPPED, all_stopped, make_scheduler
from raykd.search.searchers import StudyBroker, make_searcher, optuna_storage, optuna_trials
from raykd.search.summary import prune_checkpoints, summarize
from raykd.search.trial import _trial_driver, reuse_actors
from raykd.serving import architectures
from raykd.study.runspec import Study
from raykd.training import trainer as train


@dataclass
class SearchSetup:
    tuner: tune.Tuner
    paths: storage.ExperimentPaths


def shown_keys(params: list[spaces.Param]) -> list[str]:
    """The keys a trial's row shows: the searched ones and the tied alphas."""
    return spaces.searched_keys(params) + [p.key for p in params if p.kind == "complement"]


def _broker(cfg: RaykdConfig, study: Study, params: list[spaces.Param], keys: list[str]):
    """The study broker actor of a space with study-changing keys, knowing the base study."""
    # A teacher raykd fine-tuned for the base study is the teacher of every study: fine-tuning
    # one per searched data value would confound the comparison (and cost a fine-tune each).
    broker_base = cfg
    if cfg.models.teacher is None and study.teacher:
        broker_base = with_values(cfg, {"models.teacher": study.teacher})
    # On the driver's node, where the base study was prepared.
    here = ray.get_runtime_context().get_node_id()
    base_key = json.dumps({k: spaces.values_of([], cfg, k)[0] for k in keys}, sort_keys=True, default=str)
    return ray.remote(num_cpus=0)(StudyBroker).options(
        scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, soft=False),
    ).remote(broker_base, spaces.may_use_teacher_logits(cfg, params), {base_key: study})


def _trainable(cfg: RaykdConfig, study: Study, params: list[spaces.Param], the_plan: Plan,
               paths: storage.ExperimentPaths):
    keys = spaces.study_keys(params)
    return tune.with_resources(
        tune.with_parameters(_trial_driver, base=cfg, study=study,
                             runs_path=paths.runs, rounds=the_plan.rounds,
                             keep_by=the_plan.keep_by, study_keys=keys,
                             broker=_broker(cfg, study, params, keys) if keys else None,
                             costs=the_plan.costs or None, stopped_uri=storage.join(paths.experiment, STOPPED),
                             train_env=train.train_env()),
        {"CPU": DRIVER_CPU},
    )


def _tuner(cfg: RaykdConfig, study: Study, params: list[spaces.Param], the_plan: Plan,
           callbacks: list, resume: bool) -> SearchSetup:
    s = cfg.search
    paths = storage.ExperimentPaths.of(cfg)
    experiment_path = paths.experiment
    trainable = _trainable(cfg, study, params, the_plan, paths)
    # Tune's newer console output ignores a progress reporter (ProgressTable); the classic one,
    # chosen by this variable when fit() starts, takes its columns.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    if resume:
        if not tune.Tuner.can_restore(experiment_path):
            raise UserError(f"--resume: {experiment_path} holds no Tune experiment to resume; "
                            "drop --resume and pass --overwrite to start afresh")
        # The searcher and the scheduler are Tune's saved ones. A failed trial stays failed (its
        # reason is recorded; a NaN loss would fail again): resume continues only the trials the
        # interruption left unfinished.
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False)
        return SearchSetup(tuner, paths)
    stopped_uri = storage.join(experiment_path, STOPPED)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=the_plan.metric, mode=MODE, num_samples=s.num_samples,
            search_alg=make_searcher(cfg, params, the_plan, optuna_storage(paths), stopped_uri),
            scheduler=make_scheduler(the_plan, experiment_path, stopped_uri, s.reduction_factor,
                                     architectures.KeyOf(architectures.of_config(cfg))),
            max_concurrent_trials=max_concurrent(cfg, ray.cluster_resources()),
            reuse_actors=reuse_actors(the_plan),
        ),
        run_config=tune.RunConfig(
            name=s.name, storage_path=paths.root, callbacks=[RoundLines(the_plan.rounds, the_plan.scores), *callbacks],
            verbose=1, progress_reporter=ProgressTable(
                shown_keys(params), the_plan.scores + ([("latency_ms", "ms")] if the_plan.costs else []))),
    )
    return SearchSetup(tuner, paths)


def run_search(cfg: RaykdConfig, study: Study, params: list[spaces.Param], the_plan: Plan,
               callbacks: list | None = None, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the search of ``params`` (the space of ``cfg``, parsed); returns the
    summary (also written to <experiment>/summary.json)."""
    setup = _tuner(cfg, study, params, the_plan, callbacks or [], resume)
    with _hangup_is_ctrl_c():
        grid = setup.tuner.fit()
    paths = setup.paths
    statuses = _saved_statuses(paths.experiment, grid)
    interrupted = any(st not in ("TERMINATED", "ERROR") for st in statuses.values()) \
        or len(grid) < cfg.search.num_samples
    # Summarize before pruning: a trial resumed by --resume finds its earlier rounds in its latest
    # checkpoint, which pruning may remove.
    # Trials ASHA stopped, with their round: after a hard kill a stopped trial's Train run can hold
    # rounds past it (reported while Tune was stopping it); they are not part of the search.
    stopped = all_stopped(storage.join(paths.experiment, STOPPED))
    runs_path = paths.runs
    summary = summarize(grid, shown_keys(params), the_plan, statuses, runs_path=runs_path, stopped=stopped)
    summary["interrupted"] = interrupted
    if not interrupted:
        # Only a finished search prunes: an unfinished trial resumes from Train's latest
        # checkpoint, which Train refuses to do when a checkpoint it recorded is gone.
        prune_checkpoints(runs_path, cfg.search.keep_checkpoints, the_plan.keep_by, stopped=stopped)
    # Ray reports checkpoint paths inside their filesystem (``bucket/key`` on S3): give them back
    # their scheme so the summary's paths open as they are.
    for row in summary["trials"]:
        row["checkpoint_path"] = storage.as_uri(row["checkpoint_path"], paths.experiment)
    summary["experiment_path"] = paths.experiment
    summary["optuna_trials"] = optuna_trials(paths)
    # summary.json marks a finished search (benchmarks and the registry read it as final); an
    # interrupted one is reported on the console and continued with --resume.
    if not interrupted:
        storage.write_text(paths.summary, json.dumps(summary, indent=2, default=str))
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
        return compat.result_grid_statuses(grid)
