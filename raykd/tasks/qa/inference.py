"""From a QA model to answers: batched logits over eval features, n-best post-processing, EM/F1,
and question answering on raw (question, context) pairs with the same sliding windows. Used by the
training loop's evaluation, ``cli.py evaluate`` and the logged MLflow model. No Ray, no MLflow.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from raykd.console import progress_line
from raykd.tasks.qa import data as data_mod
from raykd.tasks.qa import metrics
from raykd.training import models


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, features: Dataset, batch_size: int = 64, device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None, progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits, float32 [N, L], for every feature; ``progress``: a label under which a
    line with the rate and ETA is printed every 20 batches (a long ``evaluate``)."""
    inner = getattr(model, "module", model)
    was_training = inner.training
    inner.eval()
    names = models.accepted_inputs(inner)
    ds = features.with_format("torch", columns=list(names))
    starts, ends = [], []
    device = torch.device(device)
    t0 = time.perf_counter()
    for b, i in enumerate(range(0, len(ds), batch_size)):
        batch = {k: v.to(device) for k, v in ds[i : i + batch_size].items()}
        with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            out = models.forward(inner, batch, names)
        starts.append(out.start_logits.float().cpu().numpy())
        ends.append(out.end_logits.float().cpu().numpy())
        done = min(i + batch_size, len(ds))
        if progress and (b % 20 == 19 or done == len(ds)):
            # stderr: evaluate's stdout is its JSON result.
            print(progress_line(progress, done, len(ds), time.perf_counter() - t0), file=sys.stderr, flush=True)
    inner.train(was_training)
    if not starts:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(starts), np.concatenate(ends)


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
