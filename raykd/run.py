"""What each CLI command does, as plain functions (the CLI only parses and prints): a single
train/finetune run, ``prepare``, ``evaluate`` and ``search``. Ray and MLflow stay behind
:mod:`raykd.train`, :mod:`raykd.search` and :mod:`raykd.tracking`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from raykd.config import RaykdConfig
from raykd.errors import UserError
from raykd.metrics import METRIC


def single_run(cfg: RaykdConfig, mode: str, address: Optional[str] = None) -> dict[str, Any]:
    """One distillation (``mode="distill"``) or fine-tuning run; returns its summary."""
    from raykd import train

    train.init_ray(address)
    study, info = train.prepare_study(cfg, mode)
    result = train.fit(cfg, mode, study=study)
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    best = train.best_metrics(result)
    return {
        "mode": mode,
        METRIC: best.get(METRIC),
        "eval_exact_match": best.get("eval_exact_match"),
        "best_round": best.get("round"),
        "rounds": (result.metrics or {}).get("round"),
        "checkpoint": train.best_checkpoint(result).path,
        "teacher": study.teacher,
        "prepared": info,
    }


def prepare(cfg: RaykdConfig, address: Optional[str] = None) -> dict[str, Any]:
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


def search(cfg: RaykdConfig, address: Optional[str] = None, resume: bool = False) -> dict[str, Any]:
    """The product's main job: prepare the study once, then search; prints progress and the summary."""
    from raykd import search as search_mod
    from raykd import spaces, teacher_cache, train

    params = spaces.parse(cfg.space, cfg.source)  # a bad space fails before Ray starts
    for point in cfg.search.points_to_evaluate:
        spaces.check_point(point, params, cfg.source)
    train.init_ray(address)
    study, info = train.prepare_study(cfg, train.DISTILL)
    n_features = teacher_cache.Prepared(Path(study.prepared)).manifest()["n_train_features"]
    summary = search_mod.run_search(cfg, study, n_features, resume=resume)
    summary["study"] = {**info, "teacher": study.teacher}
    print()
    print(search_mod.format_table(summary))
    best = summary["best"]
    if best:
        print(f"\nbest trial {best['trial_id']}: {METRIC}={best[METRIC]:.2f} "
              f"EM={best['eval_exact_match']:.2f} (round {best['best_round']})")
        print("best config: " + json.dumps({k: best[k] for k in spaces.searched_keys(params)}))
        print(f"best checkpoint: {best['checkpoint_path']}")
    print(f"summary: {summary['experiment_path']}/{search_mod.SUMMARY}")
    return summary
