"""The classification task's data: labelled sentences (or sentence pairs) from the hub
(``load_dataset("glue", "sst2")``) or from local CSV / TSV / JSON-lines files, normalised to the
columns ``id``, ``text``, ``text_pair`` (None for single sentences) and ``label``; and their
features (one per example, truncated to ``max_length``). Pure functions; no Ray, no MLflow.

Text columns: ``sentence``, ``text``, the pair ``sentence1``/``sentence2``, or the pair
``text``/``text_pair`` (the served student's names); more than one of these is refused. Labels are integers 0 .. num_labels - 1.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raykd.config import DataConfig
from raykd.tasks.base import DataError

if TYPE_CHECKING:
    from datasets import Dataset

SINGLE = ("sentence", "text")
PAIR = ("sentence1", "sentence2")
# raykd's own names (the served student's inputs): text with text_pair is a pair too.
OWN_PAIR = ("text", "text_pair")
FORMAT = ("CSV, TSV or JSON lines with 'sentence' (or 'text', or the pair 'sentence1' and 'sentence2', or 'text' and "
          "'text_pair') and 'label'")


# Columns that hold a second text in other data sets (QNLI, MNLI, QQP, ...): beside a single text
# column, reading that column alone would silently drop half of every example.
OTHER_TEXT = ("question", "question1", "question2", "premise", "hypothesis", "text_pair", "sentence2")


def text_columns(columns: Iterable[str], where: str) -> tuple[str, str | None]:
    """(first text column, second or None) among ``columns``; DataError when there is none, or
    when which columns are the text is ambiguous."""
    cols = set(columns)
    if set(OWN_PAIR) <= cols and not cols & {"sentence", *PAIR}:
        return OWN_PAIR
    found = [(name, None) for name in SINGLE if name in cols] + ([PAIR] if set(PAIR) <= cols else [])
    if len(found) > 1:
        names = " and ".join(repr(a) if b is None else f"{a!r}/{b!r}" for a, b in found)
        raise DataError(f"{where}: has both {names} text columns; which is the text is ambiguous: keep one")
    if found and found[0][1] is None:
        others = [c for c in OTHER_TEXT if c in cols]
        if others:
            raise DataError(f"{where}: has {others[0]!r} beside {found[0][0]!r}; raykd reads one text column, or a "
                            "pair named 'sentence1' and 'sentence2': rename the columns of a sentence-pair data set")
    if found:
        return found[0]
    raise DataError(f"{where}: no text column (expected 'sentence', 'text', or 'sentence1' and 'sentence2'; "
                    f"found {sorted(cols)})")


def parse_rows(path: Path, text: str, where: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every row: CSV/TSV by suffix, else JSON lines (or one JSON list).
    ``where``: how messages name the file (default: its path)."""
    where = where or str(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        try:
            return [(i + 2, row) for i, row in enumerate(reader)]  # line 1 is the header
        except csv.Error as exc:
            raise DataError(f"{where}: not CSV: {exc} (line {reader.line_num})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
        return [(i + 1, r) for i, r in enumerate(rows)]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON lines: {exc.msg} at line {n}, column {exc.colno}") from None
    return out


def _label(value: Any, num_labels: int, where: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: label {value!r} is not an integer class (0 .. {num_labels - 1})")
    if not 0 <= value < num_labels:
        raise DataError(f"{where}: label {value} is outside 0 .. {num_labels - 1} (data.num_labels: {num_labels})")
    return value


def normalise(rows: list[tuple[int, dict[str, Any]]], num_labels: int, where: str) -> list[dict[str, Any]]:
    """Records -> {id, text, text_pair, label}; the first bad row raises DataError naming its line."""
    if not rows:
        raise DataError(f"{where}: holds no rows; expected {FORMAT}")
    first_line, first = rows[0]
    if not isinstance(first, dict):
        raise DataError(f"{where}: line {first_line}: expected an object with text and 'label', got "
                        f"{type(first).__name__}")
    a, b = text_columns(first.keys(), where)
    out = []
    for line, row in rows:
        at = f"{where}: line {line}"
        if not isinstance(row, dict):
            raise DataError(f"{at}: expected an object, got {type(row).__name__}")
        for col in (a, b) if b else (a,):
            if not isinstance(row.get(col), str):
                raise DataError(f"{at}: missing text {col!r}" if col not in row else
                                f"{at}: {col!r} is not text ({type(row[col]).__name__})")
        if "label" not in row or row["label"] in (None, ""):
            raise DataError(f"{at}: missing 'label'")
        out.append({"id": str(row.get("idx", row.get("id", len(out)))), "text": row[a],
                    "text_pair": row[b] if b else None, "label": _label(row["label"], num_labels, at)})
    return out


def read_file(path: str, num_labels: int) -> list[dict[str, Any]]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; expected {FORMAT}") from None
    return normalise(parse_rows(p, text), num_labels, str(path))


def load_split(cfg: DataConfig, split: str, train_file: str | None, valid_file: str | None) -> Dataset:
    """``split`` "train" or "validation" as a Dataset of {id, text, text_pair, label}, truncated to
    max_*_samples."""
    from datasets import Dataset

    local = train_file if split == "train" else valid_file
    if local:
        rows = read_file(local, cfg.num_labels)
    else:
        from datasets import load_dataset

        hub = load_dataset(cfg.dataset_name, cfg.dataset_config, split=split)
        where = f"hub data set {cfg.dataset_name}{'/' + cfg.dataset_config if cfg.dataset_config else ''} ({split})"
        rows = normalise([(i + 1, r) for i, r in enumerate(hub)], cfg.num_labels, where)
    limit = cfg.max_train_samples if split == "train" else cfg.max_eval_samples
    if limit is not None:
        rows = rows[:limit]
    return Dataset.from_list(rows)


def _tokenize(batch: dict[str, list], tokenizer, max_length: int):
    pairs = batch["text_pair"] if any(p is not None for p in batch["text_pair"]) else None
    enc = tokenizer(batch["text"], pairs, truncation=True, max_length=max_length, padding="max_length",
                    # BERT teachers need segment ids even when the student (DistilBERT) ignores them.
                    return_token_type_ids=True)
    enc["labels"] = batch["label"]
    return enc


def build_features(examples: Dataset, tokenizer, max_length: int) -> Dataset:
    """One feature per example: input_ids, attention_mask, token_type_ids (padded to max_length),
    labels."""
    # Features are trimmed to their longest row by cutting the end (classification.trim): padding
    # must be at the end, whatever the tokenizer's default (XLNet's is the left).
    tokenizer.padding_side = "right"
    return examples.map(_tokenize, batched=True, remove_columns=examples.column_names,
                        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length}, desc="classification features")
