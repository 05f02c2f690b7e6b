"""What each CLI command does, as plain functions (the CLI only parses and prints): a single
train/finetune run, ``prepare``, ``evaluate`` and ``search``. Ray and MLflow stay behind
:mod:`raykd.training`, :mod:`raykd.search` and :mod:`raykd.tracking`. The search's MLflow runs are
handed to :mod:`raykd.search` as Tune callbacks from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path
from typing import Any

from raykd import objective, preflight, spaces, storage
from raykd.config import DISTILL, RaykdConfig, replace, with_values
from raykd.serving import architectures, onnx_export

# The order of every command: config and space checks (on load), preflight (files, models,
# experiment folder, the tracking store's reachability), then Ray, then the cluster's resources,
# and only then anything that writes (an overwritten folder removed, the MLflow experiment and
# runs, the study's cache, the experiment folder). A refused command leaves nothing behind.


def _begin() -> None:
    """The command starts its work: say where its full output is kept."""
    from raykd import console

    log = console.begin()
    if log:
        print(f"[raykd] full output: {log}", flush=True)


def _tracking(cfg: RaykdConfig, tracking_uri: str | None, enabled: bool):
    """The tracking module once its store is known to answer (nothing written yet), or None."""
    if not (enabled and cfg.tracking.enabled):
        return None
    from raykd import tracking

    tracking.check(cfg, tracking_uri)
    return tracking


def _start(cfg: RaykdConfig, mode: str | None, address: str | None, overwrite: bool, driver_cpu: float = 0.0) -> None:
    """Ray, the check that its cluster can ever hold a run, then --overwrite's removal."""
    from raykd.training import trainer as train

    train.init_ray(address)
    train.check_resources(cfg, driver_cpu)
    paths = storage.ExperimentPaths.of(cfg, mode)
    if overwrite and not paths.remote and Path(paths.experiment).exists():
        print(f"[raykd] --overwrite: removing {paths.experiment}", flush=True)
        shutil.rmtree(paths.experiment)
    # After the removal: the log lives in the experiment folder (what was printed so far is kept).
    _begin()


def single_run(cfg: RaykdConfig, mode: str, address: str | None = None, tracking_uri: str | None = None,
               tracking: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """One distillation (``mode="distill"``) or fine-tuning run; returns its summary."""
    cfg = preflight.resolve_data(cfg)
    preflight.check(cfg, mode, overwrite=overwrite)
    tracker = _tracking(cfg, tracking_uri, tracking)
    from raykd.prepare import prepare_study  # ray, torch: after the checks, which then answer in a second
    from raykd.training import trainer as train

    _start(cfg, mode, address, overwrite)
    study, info = prepare_study(cfg, mode)
    from raykd.study import cache as teacher_cache
    from raykd.training.schedule import check_accumulation

    # Refused here in one line (before MLflow is touched), not as a failed worker once the run has started.
    check_accumulation(cfg, teacher_cache.Prepared(Path(info["prepared"])).manifest()["n_train_features"])
    if tracker:
        tracker.connect(cfg, tracking_uri)
    result = train.fit(cfg, mode, study)
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    metric = objective.metric(cfg)
    best = train.best_metrics(result, metric)
    checkpoint = train.best_checkpoint(result, metric)
    logged = {}
    if tracker:
        with checkpoint.as_directory() as ckpt_dir:
            logged = tracker.log_single_run(cfg, mode, train.history(result), best, ckpt_dir, study.teacher)
    return {
        "mode": mode,
        "task": cfg.task,
        "metric": metric,
        **{key: best.get(key) for key, _ in objective.scores(cfg)},
        "best_round": best.get("round"),
        "rounds": (result.metrics or {}).get("round"),
        "checkpoint": storage.as_uri(checkpoint.path, storage.ExperimentPaths.of(cfg, mode).root),
        "teacher": study.teacher,
        "prepared": info,
        "mlflow": logged,
    }


def prepare(cfg: RaykdConfig, address: str | None = None) -> dict[str, Any]:
    cfg = preflight.resolve_data(cfg)
    preflight.check(cfg, DISTILL, experiment=False)
    from raykd.prepare import prepare_study
    from raykd.training import trainer as train

    _begin()
    train.init_ray(address)
    train.check_resources(cfg)  # a teacher fine-tuned first runs on the scaling section's workers
    study, info = prepare_study(cfg, DISTILL)
    return {**info, "teacher": study.teacher, "teacher_file": study.teacher_file}


# cli.py evaluate's data settings: flag -> the DataConfig field it sets.
EVALUATE_FLAGS = {"--max-length": "max_length", "--doc-stride": "doc_stride", "--n-best": "n_best",
                  "--max-answer-length": "max_answer_length"}


def evaluate_config(model: str, task: str | None = None, settings: dict[str, Any] | None = None,
                    writes: tuple[str, ...] = ()) -> RaykdConfig:
    """The config ``cli.py evaluate`` scores ``model`` with: its task is ``task``, else the one whose
    trained head the model carries, else question answering (a bare encoder: its QA head is new);
    ``settings`` {flag: value or None}; ``writes``: the files asked for (``--predictions``).
    Refuses a model with another task's head, and a flag or file the task has no use for."""
    from raykd import tasks
    from raykd.config import DataConfig

    conf = preflight.model_config(model, "--model")
    carried = tasks.of_model(conf)
    chosen = tasks.get(task) if task else carried or tasks.get("question_answering")
    if carried and carried is not chosen:
        raise preflight.PreflightError(
            f"--model {model}: is a {conf['architectures'][0]}, a {carried.name} model; scoring it as "
            f"{chosen.name} would score a random head: use --task {carried.name}, or a {chosen.name} model")
    given = {flag: value for flag, value in (settings or {}).items() if value is not None}
    for flag in given:
        why = chosen.unused_keys.get(f"data.{EVALUATE_FLAGS[flag]}")
        if why:
            raise preflight.PreflightError(f"{flag}: has no effect for task {chosen.name} ({why}); leave it out")
    for name in writes:
        if name not in chosen.writes:
            raise preflight.PreflightError(f"--{name}: task {chosen.name} writes no {name} file; leave it out")
    data = {EVALUATE_FLAGS[flag]: value for flag, value in given.items()}
    labels = (conf or {}).get("id2label")
    if "data.num_labels" not in chosen.unused_keys and isinstance(labels, dict):
        data["num_labels"] = len(labels)  # the classifier's own classes
    # Not validated as a config file is: check_evaluate refuses bad values naming their flags.
    return RaykdConfig(task=chosen.name, data=DataConfig(**data))


def evaluate_model(model: str, data_file: str, task: str | None = None, settings: dict[str, Any] | None = None,
                   batch_size: int = 64, predictions_file: str | None = None,
                   nbest_file: str | None = None) -> dict[str, Any]:
    """Scores of a saved model on a local data file, through its task (no Ray needed): EM/F1 of a
    question-answering model on SQuAD v1.1 JSON, accuracy/F1 of a classifier on SST-2-style rows
    (see :func:`evaluate_config` for which task). Score keys lose their ``eval_`` prefix
    (``f1``, ``exact_match``, ``accuracy``). A QA model can also write its answers in the official
    script's format and its n-best lists (:mod:`raykd.tasks.qa.predictions`)."""
    from raykd import tasks

    write = {k: v for k, v in (("predictions", predictions_file), ("nbest", nbest_file)) if v}
    cfg = evaluate_config(model, task, settings, tuple(write))
    preflight.check_evaluate(cfg, model, data_file, batch_size)
    from raykd.modeling import models

    chosen = tasks.get(cfg.task)
    tok = models.load_tokenizer(model)
    scored = models.load_model(model, chosen.head(cfg))
    got = chosen.score_file(scored, tok, data_file, cfg.data, batch_size, progress="[raykd evaluate]", write=write)
    keys = chosen.score_keys()
    return {**{k.removeprefix("eval_"): got[k] for k in sorted(keys)},
            **{k: v for k, v in got.items() if k not in keys}, "task": chosen.name}


@dataclasses.dataclass
class _SearchSpec:
    """A search's config (the space's constants applied) and its space, parsed once; the
    architectures whose costs are measured, when the objective needs them."""

    cfg: RaykdConfig
    params: list[spaces.Param]
    archs: list[dict[str, Any]] | None = None


def search(cfg: RaykdConfig, address: str | None = None, resume: bool = False,
           tracking_uri: str | None = None, tracking: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """The product's main job: prepare the study once, then search; prints progress and the summary."""
    spec = _search_spec(cfg, resume, overwrite)
    tracker = _tracking(spec.cfg, tracking_uri, tracking)  # an unreachable server fails here
    from raykd.search import plan, report  # ray, optuna, torch: after the checks

    _start(spec.cfg, None, address, overwrite, driver_cpu=plan.DRIVER_CPU)
    if tracker:
        tracker.connect(spec.cfg, tracking_uri)
    study, info = _search_study(spec)
    spec, the_plan = _search_plan(spec, study, info)
    _resume_record(spec.cfg, the_plan, study, resume)  # before anything is logged
    parent, callbacks = _study_run(tracker, spec, tracking_uri, resume)
    summary = _run_search(tracker, parent, spec, study, the_plan, callbacks, resume)
    summary["study"] = {**info, "teacher": study.teacher}
    if summary["interrupted"]:
        # Nothing is registered and nothing an unfinished trial needs was pruned.
        if tracker:
            tracker.mark_interrupted(parent)
        report.print_interrupted(summary)
        return summary
    if tracker:
        summary["mlflow"] = _register(tracker, parent, summary, spec, study)
    report.print_outcome(summary, the_plan, spaces.searched_keys(spec.params),
                         spec.cfg.tracking.registered_model_name)
    return summary


def _search_spec(cfg: RaykdConfig, resume: bool, overwrite: bool) -> _SearchSpec:
    """Everything a trial could refuse is refused here, before Ray starts."""
    cfg = preflight.resolve_data(cfg)
    params = spaces.parse(cfg.space, cfg.source)
    spaces.check_keys(params, cfg.source, cfg.task)
    architectures.check_effective(params, cfg)
    # The space's constants are part of every trial's config, hence of the study it prepares.
    cfg = with_values(cfg, spaces.constants(params))
    spaces.check_corners(cfg, params)
    for point in cfg.search.points_to_evaluate:
        spaces.check_point(point, params, cfg.source, cfg)
    preflight.check(cfg, DISTILL, params, search=True, resume=resume, overwrite=overwrite)
    if resume:
        from raykd.search import resume as resume_check

        resume_check.check(cfg)  # a changed setting (a teacher, a data path) is refused before Ray starts
    if not objective.needs_costs(cfg):
        return _SearchSpec(cfg, params)
    architectures.check_space(params, cfg.source)
    onnx_export.require_onnx()  # latency is measured in ONNX Runtime
    return _SearchSpec(cfg, params, architectures.all_of(params, cfg))


def _search_study(spec: _SearchSpec):
    """The study every trial shares (features and teacher logits, prepared once)."""
    from raykd.prepare import prepare_study

    study, info = prepare_study(spec.cfg, DISTILL, need_logits=spaces.may_use_teacher_logits(spec.cfg, spec.params))
    logits = ("computed" if info["teacher_logits_computed"] else "reused") if study.teacher_file else "not used"
    print(f"[raykd] study: teacher {study.teacher}; features {'built' if info['features_built'] else 'reused'}; "
          f"teacher logits {logits}", flush=True)
    return study, info


def _search_plan(spec: _SearchSpec, study, info: dict[str, Any]):
    """The plan (rounds, first rung, scoring) and each architecture's measured costs; a latency
    budget without objectives narrows the space to the choices that can win."""
    from raykd.search import plan
    from raykd.study import cache as teacher_cache

    cfg = spec.cfg
    n_features = teacher_cache.Prepared(Path(info["prepared"])).manifest()["n_train_features"]
    the_plan = plan.plan(cfg, spec.params, n_features)
    if spec.archs is not None:
        from raykd.prepare import study_place
        from raykd.study import store as study_store

        # Measured here, on the driver, before any trial runs and beside the study (the driver's
        # local cache): one number per architecture, and no training competes for the cores. A
        # raykd-made teacher published to a bucket is read from this node's copy.
        the_plan.costs = architectures.measure(cfg, spec.archs, study_store.local_model(study.teacher),
                                               study_place(cfg).local)
        architectures.check_budget(the_plan.costs, cfg.search.max_latency_ms, cfg.source)
        if cfg.search.max_latency_ms is not None and not the_plan.pareto:
            space, dropped = architectures.within_budget(cfg, spec.params, the_plan.costs, cfg.search.max_latency_ms)
            for line in dropped:
                print(f"[raykd] {line}", flush=True)
            cfg = dataclasses.replace(cfg, space=space)
            spec = _SearchSpec(cfg, spaces.parse(space, cfg.source), spec.archs)
    print(f"[raykd] every trial runs {the_plan.rounds} rounds; "
          + (f"ASHA compares trials from round {the_plan.grace} on" if the_plan.grace else "no early stopping")
          + f"; a trial's score is its {the_plan.trial_score} round", flush=True)
    return spec, the_plan


def _resume_record(cfg: RaykdConfig, the_plan, study, resume: bool) -> None:
    """A resume with another plan or study (data or teacher files whose contents changed) is
    refused; a new search records what it runs."""
    from raykd.search import resume as resume_check

    planned, studied = resume_check.plan_record(the_plan), resume_check.study_record(study)
    if resume:
        resume_check.check(cfg, planned, studied)
    else:
        resume_check.record(cfg, planned, studied)


def _study_run(tracker, spec: _SearchSpec, tracking_uri: str | None, resume: bool) -> tuple[str | None, list]:
    """The MLflow study run (a resumed search keeps logging under the one it started with) and
    the callback that logs each trial under it; (None, []) without tracking."""
    if not tracker:
        return None, []
    cfg = spec.cfg
    uri = tracker.resolve_uri(cfg, tracking_uri)
    parent_file = storage.join(storage.ExperimentPaths.of(cfg).experiment, "mlflow_study_run_id")
    saved = storage.read_text(parent_file) if resume else None
    if saved:
        parent = saved.strip()
        tracker.reopen_study(parent)
    else:
        parent = tracker.start_study(cfg, uri, run_name=cfg.search.name)
        storage.write_text(parent_file, parent)
    callback = tracker.TrialRunsCallback(uri, cfg.tracking.experiment_name, parent, spaces.searched_keys(spec.params))
    return parent, [callback]


def _run_search(tracker, parent: str | None, spec: _SearchSpec, study, the_plan, callbacks: list,
                resume: bool) -> dict[str, Any]:
    from raykd.search import tuner

    try:
        return tuner.run_search(spec.cfg, study, spec.params, the_plan, callbacks=callbacks, resume=resume)
    except BaseException:
        # A second Ctrl-C (or a kill) while Tune stops: the open runs are marked KILLED all the same.
        if tracker:
            with contextlib.suppress(Exception):  # the error at hand is the one to show
                tracker.mark_interrupted(parent)
        raise


def _register(tracker, parent: str, summary: dict[str, Any], spec: _SearchSpec, study) -> dict[str, Any]:
    """The study run finished in MLflow: the best student (or the front) logged and registered."""
    from raykd.search import searchers

    cfg = spec.cfg

    # The registered student answers with the winner's settings (a searched max_length,
    # doc_stride, n_best, teacher), not the base config's: values its trial validated.
    def config_of(row: dict[str, Any]) -> RaykdConfig:
        return replace(cfg, {p.key: row[p.key] for p in spec.params if p.kind != "constant" and p.key in row})

    won = config_of(summary["best"] or {})
    teacher = won.models.teacher if won.models.teacher != cfg.models.teacher else study.teacher
    return tracker.finish_study(
        parent, summary, won, teacher, spaces.searched_keys(spec.params),
        optuna_study=searchers.load_optuna_study(storage.ExperimentPaths.of(cfg)), config_of=config_of,
        export_onnx=onnx_export.export_for_registry)
