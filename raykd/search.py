"""The search: a Ray Tune ``Tuner`` over a per-trial driver function that builds the trial's
``TorchTrainer`` (Train V2 + ``TuneReportCallback``), with ``OptunaSearch`` (seeded multivariate
TPE) proposing hyperparameters and ``ASHAScheduler`` stopping bad trials on ``eval_f1``. Also: the
study broker (a study per distinct value of a study-changing key), concurrency derived from cluster
resources, resume, and the summary of all trials.

Rounds: every trial reports ``search.rounds`` evaluation rounds, round k after k/R of its own
optimizer steps, whatever its batch size or epochs; ``round`` is ASHA's time unit, so trials are
compared at the same share of their schedules, and a trial that runs its schedule reports round R
with ``final`` true. A trial's score (``search.trial_score``: its best or its last round) is what
Optuna is told, what the summary ranks by and what the registry registers.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from raykd import spaces, train
from raykd.config import RaykdConfig, with_values
from raykd.errors import UserError
from raykd.metrics import METRIC, MODE

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

    def __init__(self, *args, trial_score: str = "best", **kwargs):
        super().__init__(*args, **kwargs)
        self._trial_score = trial_score
        self._score: dict[str, float] = {}
        self._reported: dict[str, set[int]] = {}

    def _better(self, a: float, b: float) -> float:
        return max(a, b) if self._mode == "max" else min(a, b)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        rnd = int(result.get("round", result[TRAINING_ITERATION]))
        value = float(result[self.metric])
        prev = self._score.get(trial_id)
        self._score[trial_id] = value if prev is None or self._trial_score == "last" else self._better(prev, value)
        if rnd in self._reported.setdefault(trial_id, set()):
            return
        self._reported[trial_id].add(rnd)
        super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: rnd, self.metric: self._score[trial_id]})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and self.metric in result:
            # Tune hands a result that ends a trial (ASHA's max_t, or a stop) to on_trial_complete
            # only; record it as the trial's last intermediate value too.
            self.on_trial_result(trial_id, result)
        if result and not error:
            if not result.get("final", True) or trial_id not in self._score:
                # Without the metric, OptunaSearch tells the trial as PRUNED.
                result = {k: v for k, v in result.items() if k != self.metric}
            else:
                result = {**result, self.metric: self._score[trial_id]}
        super().on_trial_complete(trial_id, result=result, error=error)


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
            study, info = train.prepare_study(cfg, train.DISTILL, need_logits=self.need_logits)
            print(f"[raykd] study for {key}: features {'built' if info['features_built'] else 'reused'}, "
                  f"teacher logits {'computed' if info['teacher_logits_computed'] else 'reused or not needed'}",
                  flush=True)
            self.studies[key] = study.__dict__
        return self.studies[key]


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs survive an interrupted search. Tune's restore rebuilds the scheduler from
    its initial state (it saves the searcher's state, not the scheduler's), so a resumed search
    would forget which trial reached which rung with which F1 and let through trials the
    uninterrupted search stops. The rungs are written beside the experiment after every result
    and read back on resume."""

    def __init__(self, state_uri: str, **kwargs):
        super().__init__(**kwargs)
        self._state_uri = state_uri
        fs, path = _fs(state_uri)
        if fs.get_file_info(path).type == pafs.FileType.File:
            fs.delete_file(path)  # a fresh search starts with empty rungs

    def __setstate__(self, state: dict) -> None:
        # Tuner.restore unpickles the scheduler as it was when the search started: bring the
        # rungs up to date from the file written during the search.
        self.__dict__.update(state)
        fs, path = _fs(self._state_uri)
        if fs.get_file_info(path).type == pafs.FileType.File:
            with fs.open_input_stream(path) as f:
                saved = pickle.loads(f.read())
            self._brackets, self._trial_info = saved["brackets"], saved["trial_info"]
            self._num_stopped = saved["num_stopped"]

    def _save(self) -> None:
        fs, path = _fs(self._state_uri)
        tmp = path + ".tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(pickle.dumps({"brackets": self._brackets, "trial_info": self._trial_info,
                                  "num_stopped": self._num_stopped}))
        fs.move(tmp, path)

    def on_trial_add(self, tune_controller, trial) -> None:
        # A restored trial keeps the bracket it had; only a new one is assigned.
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._save()


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)


def _trial_driver(config: dict[str, Any], base: dict[str, Any], study: dict[str, Any], runs_path: str,
                  rounds: int, keep_by: str, study_keys: list[str], broker=None) -> None:
    """One trial: the sampled values on top of the base config, run by a TorchTrainer whose
    reports become this trial's Tune results. The Train run is named after the trial, so a
    resumed trial continues from its own checkpoint."""
    cfg = with_values(RaykdConfig.from_dict(base), config)
    if study_keys:
        study = ray.get(broker.get.remote({k: config[k] for k in study_keys}))
    trial_id = tune.get_context().get_trial_id()
    trainer = train.build_trainer(
        cfg, train.Study(**study).loop_config(cfg, train.DISTILL, eval_rounds=rounds), name=trial_id,
        storage_path=runs_path, callbacks=[TuneReportCallback()], keep_by=keep_by,
    )
    trainer.fit()


def max_concurrent(cfg: RaykdConfig, resources: dict[str, float]) -> int:
    """How many trials fit at once: every worker's resources, plus each driver's CPU sliver."""
    if cfg.search.max_concurrent_trials:
        return cfg.search.max_concurrent_trials
    need = {k: v * cfg.scaling.num_workers for k, v in train.worker_resources(cfg).items()}
    fits = []
    for key, amount in need.items():
        have = resources.get(key, 0.0)
        per_trial = amount + (DRIVER_CPU if key == "CPU" else 0.0)
        if amount > 0:
            fits.append(math.floor(have / per_trial + 1e-9))
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
class Plan:
    """What every trial of a search shares: its rounds, ASHA's first rung (None: no early
    stopping) and how a trial is scored."""

    rounds: int
    grace: int | None
    trial_score: str

    @property
    def keep_by(self) -> str:
        # The checkpoint a trial's score comes from is the one to keep: its best round by the
        # metric, or simply its latest.
        return METRIC if self.trial_score == "best" else "round"


def plan(cfg: RaykdConfig, params: list[spaces.Param], n_train_features: int, warn=print) -> Plan:
    """Rounds and grace period. The default grace period is the first round at which every
    trial's warm-up is over (the largest warmup_ratio of the space) and at least
    ``search.min_share_before_stop`` of its training has run: earlier rounds of a warming-up,
    barely trained student say little about where it ends. An explicit grace period wins, with a
    warning when it falls inside warm-up; one past the rounds is refused."""
    s = cfg.search
    rounds = s.rounds or train.expected_rounds(cfg, n_train_features)
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
    return Plan(rounds, grace, s.trial_score)


@dataclass
class SearchSetup:
    tuner: tune.Tuner
    experiment_path: str


def _tuner(cfg: RaykdConfig, study: train.Study, params: list[spaces.Param], the_plan: Plan,
           callbacks: list, resume: bool) -> SearchSetup:
    s = cfg.search
    storage = train.storage_root(cfg)
    experiment_path = f"{storage.rstrip('/')}/{s.name}"
    runs_path = f"{experiment_path}/{TRAIN_RUNS}"
    keys = spaces.study_keys(params)
    broker = None
    if keys:
        # On the driver's node, where the base study was prepared.
        here = ray.get_runtime_context().get_node_id()
        broker = ray.remote(num_cpus=0)(StudyBroker).options(
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(cfg.to_dict(), spaces.may_use_teacher_logits(cfg, params),
                 {json.dumps({k: spaces.values_of([], cfg, k)[0] for k in keys}, sort_keys=True, default=str):
                  study.__dict__})
    trainable = tune.with_resources(
        tune.with_parameters(_trial_driver, base=cfg.to_dict(), study=study.__dict__, runs_path=runs_path,
                             rounds=the_plan.rounds, keep_by=the_plan.keep_by, study_keys=keys, broker=broker),
        {"CPU": DRIVER_CPU},
    )
    if resume:
        if not tune.Tuner.can_restore(experiment_path):
            raise UserError(f"--resume: {experiment_path} holds no Tune experiment to resume; "
                            "drop --resume and pass --overwrite to start afresh")
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
        trial_score=the_plan.trial_score,
    )
    if the_plan.grace is None:
        scheduler = FIFOScheduler()
    else:
        # max_t one past the last round: a trial that completes ends by returning from fit() (Train
        # shuts its workers down cleanly) instead of being killed by ASHA at max_t, which leaves
        # its placement group to Train's asynchronous cleaner.
        scheduler = ResumableASHA(f"{experiment_path}/{ASHA_STATE}", time_attr="round",
                                  max_t=the_plan.rounds + 1, grace_period=the_plan.grace,
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


def run_search(cfg: RaykdConfig, study: train.Study, the_plan: Plan, callbacks: list | None = None,
               resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the search; returns the summary (also written to <experiment>/summary.json)."""
    params = spaces.parse(cfg.space, cfg.source)
    setup = _tuner(cfg, study, params, the_plan, callbacks or [], resume)
    grid = setup.tuner.fit()
    # Tune catches Ctrl-C, saves the experiment and returns normally; trials it did not finish are
    # neither TERMINATED nor errored.
    # Tune's per-trial status is what tells an interrupted trial from one ASHA stopped (both end
    # on a round that is not final); ResultGrid exposes it only through its analysis.
    statuses = {t.trial_id: t.status for t in grid._experiment_analysis.trials}
    interrupted = any(st not in ("TERMINATED", "ERROR") for st in statuses.values()) \
        or len(grid) < cfg.search.num_samples
    if not interrupted:
        # Only a finished search prunes: an unfinished trial resumes from Train's latest
        # checkpoint, which Train refuses to do when a checkpoint it recorded is gone.
        prune_checkpoints(f"{setup.experiment_path}/{TRAIN_RUNS}", cfg.search.keep_checkpoints, the_plan.keep_by)
    summary = summarize(grid, spaces.searched_keys(params) + [p.key for p in params if p.kind == "complement"],
                        the_plan, statuses)
    summary["interrupted"] = interrupted
    summary["experiment_path"] = setup.experiment_path
    summary["optuna_trials"] = optuna_trials(cfg, setup.experiment_path)
    if "://" not in setup.experiment_path:
        Path(setup.experiment_path, SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def prune_checkpoints(runs_path: str, keep: int, by: str = METRIC) -> None:
    """Leave each trial its best ``keep`` checkpoints by ``by`` (METRIC, or ``round``: the latest). Train keeps the latest one too
    (to resume a run); once the search is over no trial resumes, so that one goes unless it is
    among the best. Works on local paths and on cloud URIs (pyarrow filesystems)."""
    fs, root = _fs(runs_path)
    info = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for run_dir in (i.path for i in info if i.type == pafs.FileType.Directory):
        ckpts = [i.path for i in fs.get_file_info(pafs.FileSelector(run_dir))
                 if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]
        scored = []
        for path in ckpts:
            try:
                with fs.open_input_stream(f"{path}/{train.META_FILE}") as f:
                    scored.append((json.loads(f.read())[by], path))
            except (FileNotFoundError, OSError, KeyError, ValueError):
                scored.append((float("-inf"), path))
        scored.sort(reverse=MODE == "max" or by != METRIC)
        for _, path in scored[keep:]:
            fs.delete_dir(path)


def trial_score(df, rule: str):
    """The row of a trial's results its score comes from: its best round by METRIC (among equal
    scores the latest, as in Train's checkpoint manager and in prune_checkpoints, so the row's
    checkpoint is the one that was kept), or its last round."""
    if rule == "last":
        return df.iloc[-1]
    col = df[METRIC][::-1]
    return df.loc[col.idxmax() if MODE == "max" else col.idxmin()]


def summarize(grid, keys: list[str], the_plan: Plan, statuses: dict[str, str] | None = None) -> dict[str, Any]:
    """One row per trial (hyperparameters, its score and the round it comes from, rounds run of
    those planned, stopped early), and the best trial: the best score over all trials, with the
    checkpoint of the round it comes from."""
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        config = result.config or {}
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        row: dict[str, Any] = {"trial_id": trial_id, **{k: config.get(k) for k in keys}}
        # Not TERMINATED and not errored: the search was interrupted while this trial ran or waited.
        unfinished = (statuses or {}).get(trial_id, "TERMINATED") not in ("TERMINATED", "ERROR")
        if df is None or df.empty or METRIC not in df:
            row.update({"status": "ERROR" if result.error else ("UNFINISHED" if unfinished else "NO RESULT"),
                        METRIC: None,
                        "eval_exact_match": None, "rounds": 0, "planned_rounds": the_plan.rounds,
                        "stopped_early": False,
                        "checkpoint_path": None})
            rows.append(row)
            continue
        best = trial_score(df, the_plan.trial_score)
        last = df.iloc[-1]
        final = bool(last.get("final", True))
        row.update({
            "status": "ERROR" if result.error else (
                "UNFINISHED" if unfinished else "STOPPED" if not final else "COMPLETED"),
            METRIC: float(best[METRIC]),
            "eval_exact_match": float(best["eval_exact_match"]),
            "score_round": int(best["round"]),
            "rounds": int(df["round"].max()),
            "planned_rounds": the_plan.rounds,
            "stopped_early": not final and not result.error and not unfinished,
            "checkpoint_path": best.get("checkpoint_path"),
            "curve": [[int(r), float(f)] for r, f in zip(df["round"], df[METRIC])],
        })
        rows.append(row)
    scored = [r for r in rows if r[METRIC] is not None and r["status"] != "UNFINISHED"]
    pick = max if MODE == "max" else min
    best_row = pick(scored, key=lambda r: r[METRIC]) if scored else None
    return {"metric": METRIC, "trial_score": the_plan.trial_score, "rounds": the_plan.rounds,
            "grace_period": the_plan.grace, "trials": rows, "best": best_row}


def format_table(summary: dict[str, Any]) -> str:
    rows = summary["trials"]
    if not rows:
        return "(no trials)"
    keys = [k for k in rows[0] if k not in ("checkpoint_path", "curve", "planned_rounds")]

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
    return "\n".join(out)
