"""From a QA model to answers: batched logits over eval features, n-best post-processing, EM/F1,
and question answering on raw (question, context) pairs with the same sliding windows. Used by the
training loop's evaluation, ``cli.py evaluate`` and the logged MLflow model. No Ray, no MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from raykd.tasks.qa import data as data_mod
from raykd.tasks.qa import metrics
from raykd.tasks.qa.task import QuestionAnswering

_QA = QuestionAnswering()  # its logits: start and end, [B, 2, L]


def predict_logits(
    model: torch.nn.Module, features: Dataset, batch_size: int = 64, device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None, progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits, float32 [N, L], for every feature; ``progress``: a label under which a
    line with the rate and ETA is printed to stderr every 20 batches (a long ``evaluate``)."""
    both = _QA.predict_logits(model, features, batch_size, device, autocast_dtype, progress=progress)
    if not len(both):
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return both[:, 0], both[:, 1]


def evaluate(
    model: torch.nn.Module,
    features: Dataset,
    examples: Dataset,
    n_best: int = 20,
    max_answer_length: int = 30,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    keep_nbest: bool = False,
    progress: str | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """({"exact_match", "f1"}, id → prediction) of a model on prepared eval features; with
    ``keep_nbest`` each prediction also holds its n-best list (see :func:`metrics.postprocess`)."""
    start, end = predict_logits(model, features, batch_size, device, autocast_dtype, progress)
    feats = features.select_columns(["example_id", "offset_mapping"]).to_list()
    exs = examples.to_list()
    preds = metrics.postprocess(exs, feats, start, end, n_best, max_answer_length, keep_nbest=keep_nbest)
    scores = metrics.squad_scores({k: v["text"] for k, v in preds.items()}, exs)
    return scores, preds


def answer(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    max_length: int = 384,
    doc_stride: int = 128,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[dict[str, Any]]:
    """Answer raw questions: [{"answer", "score", "start", "end"}] (character span in the context)."""
    ids = [str(i) for i in range(len(questions))]
    examples = Dataset.from_dict({"id": ids, "question": list(questions), "context": list(contexts)})
    feats = data_mod.build_features(examples, tokenizer, max_length, doc_stride, train=False)
    start, end = predict_logits(model, feats)
    preds = metrics.postprocess(
        examples.to_list(), feats.select_columns(["example_id", "offset_mapping"]).to_list(),
        start, end, n_best, max_answer_length,
    )
    return [
        {"answer": preds[i]["text"], "score": preds[i]["score"], "start": preds[i]["start"], "end": preds[i]["end"]}
        for i in ids
    ]
