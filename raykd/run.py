"""What each CLI command does, as plain functions (the CLI only parses and prints): a single
train/finetune run, ``prepare``, ``evaluate`` and ``search``. Ray and MLflow stay behind
:mod:`raykd.train`, :mod:`raykd.search` and :mod:`raykd.tracking`.
"""

from __future__ import annotations

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
