"""Evaluation: n-best span post-processing from start/end logits to answer text, and SQuAD v1.1
exact match / F1 through the project's own ``evaluate`` module (``raykd/squad_v1``, loaded by path
because ``evaluate.load("squad")`` needs the hub). ``METRIC`` is the one name that the training
report, the scheduler, the search algorithm and tracking all use.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRIC = "eval_f1"
SQUAD_MODULE = str(Path(__file__).parent / "squad_v1" / "squad_v1.py")


@functools.lru_cache(maxsize=1)
def squad_metric():
    import evaluate

    return evaluate.load(SQUAD_MODULE)


def window_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: Sequence[Sequence[int]],
    n_best: int,
    max_answer_length: int,
) -> list[tuple[float, int, int, float, float]]:
    """Valid spans of one window as (score, char_start, char_end, start_logit, end_logit), from the
    top-n starts × top-n ends: both inside the context (offset != -1), end ≥ start, at most
    ``max_answer_length`` tokens; score = start_logit + end_logit."""
    offsets = np.asarray(offsets)
    in_ctx = offsets[:, 0] >= 0
    starts = np.argsort(start_logits)[::-1][:n_best]
    ends = np.argsort(end_logits)[::-1][:n_best]
    spans = []
    for s in starts:
        if not in_ctx[s]:
            continue
        for e in ends:
            if not in_ctx[e] or e < s or e - s + 1 > max_answer_length:
                continue
            sl, el = float(start_logits[s]), float(end_logits[e])
            spans.append((sl + el, int(offsets[s][0]), int(offsets[e][1]), sl, el))
    return spans


def _nbest(context: str, spans: list[tuple[float, int, int, float, float]], n_best: int) -> list[dict[str, Any]]:
    """The example's ``n_best`` best distinct character spans over all its windows, best first, with
    a probability (softmax of the scores over the list, as in BERT's n-best files). Overlapping
    windows propose the same span twice; it is listed once, with its better score."""
    by_span: dict[tuple[int, int], tuple[int, tuple[float, int, int, float, float]]] = {}
    for i, c in enumerate(spans):
        if c[1:3] not in by_span or c[0] > by_span[c[1:3]][1][0]:
            by_span[c[1:3]] = (i, c)
    # Equal scores in the order of the copy kept, as postprocess's max() breaks ties: the first
    # entry is then always the answer.
    top = [c for _, c in sorted(by_span.values(), key=lambda ic: (-ic[1][0], ic[0]))][:n_best]
    if not top:
        return []
    scores = np.array([c[0] for c in top])
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    return [{"text": context[s:e], "probability": float(p), "score": score, "start_logit": sl, "end_logit": el,
             "start": s, "end": e} for (score, s, e, sl, el), p in zip(top, probs)]


def postprocess(
    examples: Sequence[dict[str, Any]],
    features: Sequence[dict[str, Any]],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
    keep_nbest: bool = False,
) -> dict[str, dict[str, Any]]:
    """Example id → {"text", "score", "start", "end"}: the best span over all of its windows; an
    empty answer when no window has a valid span. ``keep_nbest`` adds "nbest": the example's
    n-best list (see :func:`_nbest`), whose first entry is the answer."""
    by_example: dict[str, list[int]] = defaultdict(list)
    for i, feat in enumerate(features):
        by_example[feat["example_id"]].append(i)
    out = {}
    for ex in examples:
        spans = []
        for i in by_example.get(ex["id"], []):
            spans += window_spans(start_logits[i], end_logits[i], features[i]["offset_mapping"], n_best,
                                  max_answer_length)
        if not spans:
            out[ex["id"]] = {"text": "", "score": float("-inf"), "start": -1, "end": -1}
        else:
            # max() keeps the first of equal scores: the earlier window, as before.
            score, s, e, _, _ = max(spans, key=lambda c: c[0])
            out[ex["id"]] = {"text": ex["context"][s:e], "score": score, "start": s, "end": e}
        if keep_nbest:
            out[ex["id"]]["nbest"] = _nbest(ex["context"], spans, n_best)
    return out


def squad_scores(predictions: dict[str, str], examples: Sequence[dict[str, Any]]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent, from id → predicted text."""
    refs = [{"id": ex["id"], "answers": ex["answers"]} for ex in examples]
    preds = [{"id": ex["id"], "prediction_text": predictions.get(ex["id"], "")} for ex in examples]
    return squad_metric().compute(predictions=preds, references=refs)
