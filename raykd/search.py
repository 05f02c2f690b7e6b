"""The search: a Ray Tune ``Tuner`` over a per-trial driver function that builds the trial's
``TorchTrainer`` (Train V2 + ``TuneReportCallback``), with ``OptunaSearch`` (seeded multivariate
TPE) proposing hyperparameters and ``ASHAScheduler`` stopping bad trials on ``eval_f1``, whose time
unit is the evaluation round the loop reports. Also: concurrency derived from cluster resources,
resume, and the summary of all trials.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from raykd import spaces, train
from raykd.config import RaykdConfig, with_values
from raykd.metrics import METRIC, MODE

DRIVER_CPU = 0.01  # the trial driver only waits on its TorchTrainer; 0 is rejected by Tune
TRAIN_RUNS = "train_runs"
SUMMARY = "summary.json"


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna what really happened to a trial.

    Out of the box Ray reports intermediate values at ``training_iteration`` (which restarts on
    resume) and tells Optuna that an ASHA-stopped trial COMPLETED with its last, low-fidelity F1,
    which misleads TPE. Here intermediate values are indexed by the loop's ``round``, and a trial
    whose last result is not its ``final`` round is told as PRUNED (Optuna keeps its intermediate
    values; TPE treats it as the partial result it is).
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: result.get("round", result[TRAINING_ITERATION])})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and self.metric in result and trial_id not in self._completed_trials:
            # Tune hands a result that ends a trial (ASHA's max_t, or a stop) to on_trial_complete
            # only; record it as the trial's last intermediate value too.
            self.on_trial_result(trial_id, result)
        if result and not error and not result.get("final", True):
            # Without the metric, OptunaSearch tells the trial as PRUNED.
            result = {k: v for k, v in result.items() if k != self.metric}
        super().on_trial_complete(trial_id, result=result, error=error)


def _trial_driver(config: dict[str, Any], base: dict[str, Any], study: dict[str, Any], runs_path: str) -> None:
    """One trial: the sampled values on top of the base config, run by a TorchTrainer whose
    reports become this trial's Tune results. The Train run is named after the trial, so a
    resumed trial continues from its own checkpoint."""
    cfg = with_values(RaykdConfig.from_dict(base), config)
    trial_id = tune.get_context().get_trial_id()
    trainer = train.build_trainer(
        cfg, train.Study(**study).loop_config(cfg, train.DISTILL), name=trial_id,
        storage_path=runs_path, callbacks=[TuneReportCallback()],
    )
    trainer.fit()


def max_concurrent(cfg: RaykdConfig, resources: dict[str, float]) -> int:
    """How many trials fit at once: every worker's resources, plus each driver's CPU sliver."""
    if cfg.search.max_concurrent_trials:
        return cfg.search.max_concurrent_trials
    sc = cfg.scaling
    need = {"CPU": sc.num_workers * sc.cpus_per_worker, **{k: v * sc.num_workers for k, v in sc.resources_per_worker.items()}}
    if sc.use_gpu:
        need["GPU"] = float(sc.num_workers)
    fits = []
    for key, amount in need.items():
        have = resources.get(key, 0.0)
        per_trial = amount + (DRIVER_CPU if key == "CPU" else 0.0)
        if amount > 0:
            fits.append(int(math.floor(have / per_trial + 1e-9)))
    n = min(fits) if fits else 1
    if n < 1:
        raise RuntimeError(f"one trial needs {need} but the cluster has {resources}: no trial can start")
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
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
         "intermediate": {int(k): v for k, v in t.intermediate_values.items()}}
        for t in study.trials
    ]


@dataclass
class SearchSetup:
    tuner: tune.Tuner
    experiment_path: str


def _tuner(cfg: RaykdConfig, study: train.Study, params: list[spaces.Param], max_rounds: int,
           callbacks: list, resume: bool) -> SearchSetup:
    s = cfg.search
    storage = train.storage_root(cfg)
    experiment_path = f"{storage.rstrip('/')}/{s.name}"
    runs_path = f"{experiment_path}/{TRAIN_RUNS}"
    trainable = tune.with_resources(
        tune.with_parameters(_trial_driver, base=cfg.to_dict(), study=study.__dict__, runs_path=runs_path),
        {"CPU": DRIVER_CPU},
    )
    if resume:
        if not tune.Tuner.can_restore(experiment_path):
            raise FileNotFoundError(f"--resume: no experiment to resume at {experiment_path}")
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        return SearchSetup(tuner, experiment_path)
    searcher = TruthfulOptunaSearch(
        space=spaces.define_by_run(params),
        study_name=s.name,
        storage=optuna_storage(experiment_path),
        metric=METRIC,
        mode=MODE,
        sampler=optuna.samplers.TPESampler(seed=s.seed, multivariate=True, n_startup_trials=s.n_startup_trials),
        points_to_evaluate=[dict(p) for p in s.points_to_evaluate] or None,
    )
    # max_t one past the last round: a trial that completes ends by returning from fit() (Train
    # shuts its workers down cleanly) instead of being killed by ASHA at max_t, which leaves its
    # placement group to Train's asynchronous cleaner.
    # A grace period past the last round simply means no early stopping.
    scheduler = ASHAScheduler(time_attr="round", max_t=max_rounds + 1, grace_period=min(s.grace_period, max_rounds + 1),
                              reduction_factor=s.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler, num_samples=s.num_samples,
            max_concurrent_trials=max_concurrent(cfg, ray.cluster_resources()),
        ),
        run_config=tune.RunConfig(name=s.name, storage_path=storage, callbacks=callbacks, verbose=1),
    )
    return SearchSetup(tuner, experiment_path)


def run_search(cfg: RaykdConfig, study: train.Study, n_train_features: int, callbacks: list | None = None,
               resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the search; returns the summary (also written to <experiment>/summary.json)."""
    params = spaces.parse(cfg.space, cfg.source)
    max_rounds = cfg.search.max_rounds or train.expected_rounds(cfg, n_train_features)
    setup = _tuner(cfg, study, params, max_rounds, callbacks or [], resume)
    grid = setup.tuner.fit()
    prune_checkpoints(f"{setup.experiment_path}/{TRAIN_RUNS}", cfg.search.keep_checkpoints)
    summary = summarize(grid, spaces.searched_keys(params) + [p.key for p in params if p.kind == "complement"])
    summary["experiment_path"] = setup.experiment_path
    summary["max_rounds"] = max_rounds
    summary["optuna_trials"] = optuna_trials(cfg, setup.experiment_path)
    if "://" not in setup.experiment_path:
        Path(setup.experiment_path, SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def prune_checkpoints(runs_path: str, keep: int) -> None:
    """Leave each trial its best ``keep`` checkpoints by METRIC. Train keeps the latest one too
    (to resume a run); once the search is over no trial resumes, so that one goes unless it is
    among the best. Works on local paths and on cloud URIs (pyarrow filesystems)."""
    fs, root = pafs.FileSystem.from_uri(runs_path) if "://" in runs_path else (pafs.LocalFileSystem(), runs_path)
    info = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for run_dir in (i.path for i in info if i.type == pafs.FileType.Directory):
        ckpts = [i.path for i in fs.get_file_info(pafs.FileSelector(run_dir))
                 if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]
        scored = []
        for path in ckpts:
            try:
                with fs.open_input_stream(f"{path}/{train.META_FILE}") as f:
                    scored.append((json.loads(f.read())[METRIC], path))
            except (FileNotFoundError, OSError, KeyError, ValueError):
                scored.append((float("-inf"), path))
        scored.sort(reverse=MODE == "max")
        for _, path in scored[keep:]:
            fs.delete_dir(path)


def summarize(grid, keys: list[str]) -> dict[str, Any]:
    """One row per trial (hyperparameters, best F1/EM over its rounds, rounds run, stopped early),
    and the best trial: the maximum eval_f1 over every reported round of every trial, with the
    checkpoint that round saved."""
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        config = result.config or {}
        row: dict[str, Any] = {"trial_id": (result.metrics or {}).get("trial_id"),
                               **{k: config.get(k) for k in keys}}
        if df is None or df.empty or METRIC not in df:
            row.update({"status": "ERROR" if result.error else "NO RESULT", METRIC: None,
                        "eval_exact_match": None, "rounds": 0, "stopped_early": False, "checkpoint_path": None})
            rows.append(row)
            continue
        # Among equal scores the latest round wins, as in Train's checkpoint manager and in
        # prune_checkpoints, so the row's checkpoint is the one that was kept.
        best = df.loc[df[METRIC][::-1].idxmax()]
        last = df.iloc[-1]
        final = bool(last.get("final", True))
        row.update({
            "status": "ERROR" if result.error else ("STOPPED" if not final else "COMPLETED"),
            METRIC: float(best[METRIC]),
            "eval_exact_match": float(best["eval_exact_match"]),
            "best_round": int(best["round"]),
            "rounds": int(df["round"].max()),
            "stopped_early": not final and not result.error,
            "checkpoint_path": best.get("checkpoint_path"),
            "curve": [[int(r), float(f)] for r, f in zip(df["round"], df[METRIC])],
        })
        rows.append(row)
    scored = [r for r in rows if r[METRIC] is not None]
    best_row = max(scored, key=lambda r: r[METRIC]) if scored else None
    return {"metric": METRIC, "trials": rows, "best": best_row}


def format_table(summary: dict[str, Any]) -> str:
    rows = summary["trials"]
    if not rows:
        return "(no trials)"
    keys = [k for k in rows[0] if k not in ("checkpoint_path", "curve")]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "  ".join(k.ljust(w) for k, w in zip(keys, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(out)
