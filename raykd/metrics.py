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
MODE = "max"
SQUAD_MODULE = str(Path(__file__).parent / "squad_v1" / "squad_v1.py")


@functools.lru_cache(maxsize=1)
def squad_metric():
    import evaluate

    return evaluate.load(SQUAD_MODULE)


def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: Sequence[Sequence[int]],
    n_best: int,
    max_answer_length: int,
) -> tuple[float, int, int] | None:
    """Best (score, char_start, char_end) in one window: top-n starts × top-n ends, both inside the
    context (offset != -1), end ≥ start, at most ``max_answer_length`` tokens. None if no span."""
    offsets = np.asarray(offsets)
    in_ctx = offsets[:, 0] >= 0
    starts = np.argsort(start_logits)[::-1][:n_best]
    ends = np.argsort(end_logits)[::-1][:n_best]
    best = None
    for s in starts:
        if not in_ctx[s]:
            continue
        for e in ends:
            if not in_ctx[e] or e < s or e - s + 1 > max_answer_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, int(offsets[s][0]), int(offsets[e][1]))
    return best


def postprocess(
    examples: Sequence[dict[str, Any]],
    features: Sequence[dict[str, Any]],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, dict[str, Any]]:
    """Example id → {"text", "score", "start", "end"}: the best span over all of its windows; an
    empty answer when no window has a valid span."""
    by_example: dict[str, list[int]] = defaultdict(list)
    for i, feat in enumerate(features):
        by_example[feat["example_id"]].append(i)
    out = {}
    for ex in examples:
        best = None
        for i in by_example.get(ex["id"], []):
            cand = best_span(start_logits[i], end_logits[i], features[i]["offset_mapping"], n_best, max_answer_length)
            if cand is not None and (best is None or cand[0] > best[0]):
                best = cand
        if best is None:
            out[ex["id"]] = {"text": "", "score": float("-inf"), "start": -1, "end": -1}
        else:
            score, s, e = best
            out[ex["id"]] = {"text": ex["context"][s:e], "score": score, "start": s, "end": e}
    return out


def squad_scores(predictions: dict[str, str], examples: Sequence[dict[str, Any]]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent, from id → predicted text."""
    refs = [{"id": ex["id"], "answers": ex["answers"]} for ex in examples]
    preds = [{"id": ex["id"], "prediction_text": predictions.get(ex["id"], "")} for ex in examples]
    return squad_metric().compute(predictions=preds, references=refs)
