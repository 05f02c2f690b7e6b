"""The prediction files ``cli.py evaluate`` writes: answers in the format the official SQuAD v1.1
script (``evaluate-v1.1.py dataset.json predictions.json``) reads, and the n-best lists behind them.
Plain JSON; no model code here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _write(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # ASCII-escaped on purpose: the official script opens the file without an encoding, i.e. in the
    # reader's locale; escapes read back identically under any locale.
    path.write_text(json.dumps(obj, ensure_ascii=True), encoding="ascii")
    return path


def write_answers(path: str | Path, predictions: dict[str, dict[str, Any]]) -> Path:
    """``{question_id: answer_text}`` for every evaluated question ("" when no span was valid)."""
    return _write(path, {qid: p["text"] for qid, p in predictions.items()})


def write_nbest(path: str | Path, predictions: dict[str, dict[str, Any]]) -> Path:
    """``{question_id: [{"text", "probability", "score", "start_logit", "end_logit", "start", "end"}, ...]}``,
    best first; ``start``/``end`` are character offsets in the context. The first entry's text is
    the answer in the predictions file; an empty list when no span was valid."""
    return _write(path, {qid: p.get("nbest", []) for qid, p in predictions.items()})
