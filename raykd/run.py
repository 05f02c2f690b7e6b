"""What each CLI command does, as plain functions (the CLI only parses and prints): a single
train/finetune run, ``prepare``, ``evaluate`` and ``search``. Ray and MLflow stay behind
:mod:`raykd.train`, :mod:`raykd.search` and :mod:`raykd.tracking`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raykd.config import RaykdConfig, with_values
from raykd.errors import UserError
from raykd.metrics import METRIC


def _tracking(cfg: RaykdConfig, tracking_uri: str | None, enabled: bool):
    """The tracking module, connected (fails fast on an unreachable store), or None when off."""
    if not (enabled and cfg.tracking.enabled):
        return None
    from raykd import tracking

    tracking.connect(cfg, tracking_uri)
    return tracking


def single_run(cfg: RaykdConfig, mode: str, address: str | None = None, tracking_uri: str | None = None,
               tracking: bool = True) -> dict[str, Any]:
    """One distillation (``mode="distill"``) or fine-tuning run; returns its summary."""
    from raykd import storage, train

    tracker = _tracking(cfg, tracking_uri, tracking)
    train.init_ray(address)
    study, info = train.prepare_study(cfg, mode)
    result = train.fit(cfg, mode, study=study)
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    best = train.best_metrics(result)
    checkpoint = train.best_checkpoint(result)
    logged = {}
    if tracker:
        with checkpoint.as_directory() as ckpt_dir:
            logged = tracker.log_single_run(cfg, mode, train.history(result), best, ckpt_dir, study.teacher)
    return {
        "mode": mode,
        METRIC: best.get(METRIC),
        "eval_exact_match": best.get("eval_exact_match"),
        "best_round": best.get("round"),
        "rounds": (result.metrics or {}).get("round"),
        "checkpoint": storage.as_uri(checkpoint.path, train.storage_root(cfg)),
        "teacher": study.teacher,
        "prepared": info,
        "mlflow": logged,
    }


def prepare(cfg: RaykdConfig, address: str | None = None) -> dict[str, Any]:
    from raykd import train

    train.init_ray(address)
    study, info = train.prepare_study(cfg, "distill")
    return {**info, "teacher": study.teacher, "teacher_file": study.teacher_file}


def evaluate_model(model: str, data_file: str, max_length: int = 384, doc_stride: int = 128,
                   batch_size: int = 64) -> dict[str, Any]:
    """EM/F1 of a saved model on a SQuAD v1.1 JSON file (no Ray needed)."""
    from raykd import data, inference, models

    if not Path(data_file).is_file():
        raise UserError(f"--data {data_file}: no such file")
    if model.startswith((".", "/", "~")) and not Path(model).expanduser().exists():
        raise UserError(f"--model {model}: no such folder")
    tok = models.load_tokenizer(model)
    qa = models.load_qa_model(model)
    loaded = data.read_squad_json(data_file)
    feats = data.build_features(loaded.examples, tok, max_length, doc_stride, train=False)
    scores, _ = inference.evaluate(qa, feats, loaded.examples, batch_size=batch_size)
    return {"exact_match": scores["exact_match"], "f1": scores["f1"], "examples": len(loaded.examples),
            "skipped": loaded.skipped}


def search(cfg: RaykdConfig, address: str | None = None, resume: bool = False,
           tracking_uri: str | None = None, tracking: bool = True) -> dict[str, Any]:
    """The product's main job: prepare the study once, then search; prints progress and the summary."""
    from raykd import search as search_mod
    from raykd import spaces, storage, teacher_cache, train

    # Everything a trial could refuse is refused here, before Ray starts.
    params = spaces.parse(cfg.space, cfg.source)
    spaces.check_keys(params, cfg.source)
    # The space's constants are part of every trial's config, hence of the study it prepares.
    cfg = with_values(cfg, spaces.constants(params))
    spaces.check_corners(cfg, params)
    for point in cfg.search.points_to_evaluate:
        spaces.check_point(point, params, cfg.source)
    _check_searched_vocabularies(cfg, params)
    tracker = _tracking(cfg, tracking_uri, tracking)  # an unreachable server fails here
    train.init_ray(address)
    study, info = train.prepare_study(cfg, train.DISTILL, need_logits=spaces.may_use_teacher_logits(cfg, params))
    n_features = teacher_cache.Prepared(Path(info["prepared"])).manifest()["n_train_features"]
    the_plan = search_mod.plan(cfg, params, n_features)
    print(f"[raykd] every trial runs {the_plan.rounds} rounds; "
          + (f"ASHA compares trials from round {the_plan.grace} on" if the_plan.grace else "no early stopping")
          + f"; a trial's score is its {the_plan.trial_score} round", flush=True)
    callbacks, parent = [], None
    if tracker:
        uri = tracker.resolve_uri(cfg, tracking_uri)
        # A resumed search keeps logging under the study run it started with.
        parent_file = storage.join(train.storage_root(cfg), cfg.search.name, "mlflow_study_run_id")
        saved = storage.read_text(parent_file) if resume else None
        if saved:
            parent = saved.strip()
            tracker.reopen_study(parent)
        else:
            parent = tracker.start_study(cfg, uri, run_name=cfg.search.name)
            storage.write_text(parent_file, parent)
        callbacks.append(tracker.TrialRunsCallback(uri, cfg.tracking.experiment_name, parent))
    summary = search_mod.run_search(cfg, study, the_plan, callbacks=callbacks, resume=resume)
    summary["study"] = {**info, "teacher": study.teacher}
    if summary["interrupted"]:
        # Nothing is registered and nothing an unfinished trial needs was pruned.
        if tracker:
            tracker.mark_interrupted(parent)
        print()
        print(search_mod.format_table(summary))
        unfinished = sum(r["status"] == "UNFINISHED" for r in summary["trials"])
        print(f"\n[raykd] interrupted: {unfinished} trial(s) unfinished; nothing was registered and no "
              "checkpoint was pruned. Continue the search with --resume.")
        return summary
    if tracker:
        # The registered student answers with the winner's settings (a searched max_length,
        # doc_stride, n_best, teacher), not the base config's.
        best = summary["best"] or {}
        won = with_values(cfg, {p.key: best[p.key] for p in params if p.kind != "constant" and p.key in best})
        teacher = won.models.teacher if won.models.teacher != cfg.models.teacher else study.teacher
        summary["mlflow"] = tracker.finish_study(
            parent, summary, won, teacher, spaces.searched_keys(params),
            optuna_study=search_mod.load_optuna_study(cfg, summary["experiment_path"]))
    print()
    print(search_mod.format_table(summary))
    best = summary["best"]
    if best:
        print(f"\nbest trial {best['trial_id']}: {METRIC}={best[METRIC]:.2f} "
              f"EM={best['eval_exact_match']:.2f} (round {best['score_round']}, its {summary['trial_score']} round)")
        print("best config: " + json.dumps({k: best[k] for k in spaces.searched_keys(params)}))
        print(f"best checkpoint: {best['checkpoint_path']}")
    if summary.get("mlflow", {}).get("registered_model"):
        m = summary["mlflow"]
        print(f"registered model: {m['registered_model']} version {m['version']} ({m['model_uri']})")
    print(f"summary: {summary['experiment_path']}/{search_mod.SUMMARY}")
    return summary


def _check_searched_vocabularies(cfg: RaykdConfig, params) -> None:
    """A searched student or teacher must share the teacher's vocabulary, like the base pair
    (which prepare_study checks): checked for every choice before any trial starts."""
    from raykd import models, spaces

    searched = {p.key for p in params if p.kind != "constant"}
    if not searched & {"models.student", "models.teacher"}:
        return
    teachers = [t for t in spaces.values_of(params, cfg, "models.teacher") if t] or \
        [cfg.models.teacher_finetune.base]
    for teacher in teachers:
        for student in spaces.values_of(params, cfg, "models.student"):
            try:
                models.check_tokenizers(models.load_tokenizer(teacher), models.load_tokenizer(student))
            except ValueError as exc:
                raise UserError(f"{cfg.source or 'config'}: space: {student} with teacher {teacher}: {exc}") from None
