"""The one table of what differs between benchmark tasks: where the real data lies, the feature
settings, which metrics the runs report, how ``cli.py evaluate`` scores a model, and how one input
is encoded to time a forward pass. The scripts never ask which task they run beyond this table.

The real data is the repository's own sample (``data/squad_real``, ``data/sst2_real``; each folder's
README says where it comes from). ``classification`` is SST-2: JSON lines with ``sentence``/``label``,
metric ``eval_accuracy``, no sliding windows (``doc_stride`` None: the config refuses one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"  # the samples shipped with the repository


def _squad_examples(path: Path) -> list[dict[str, Any]]:
    """(question, context) of every question of a SQuAD v1.1 file, in file order."""
    data = json.loads(path.read_text())["data"]
    return [{"question": q["question"], "context": p["context"]}
            for a in data for p in a["paragraphs"] for q in p["qas"]]


def _squad_subset(src: Path, dst: Path, n: int) -> None:
    """The first ``n`` questions of a SQuAD v1.1 file, articles and paragraphs kept."""
    raw = json.loads(src.read_text())
    left, articles = n, []
    for article in raw["data"]:
        paragraphs = []
        for p in article["paragraphs"]:
            if left <= 0:
                break
            qas = p["qas"][:left]
            left -= len(qas)
            paragraphs.append({**p, "qas": qas})
        if paragraphs:
            articles.append({**article, "paragraphs": paragraphs})
    dst.write_text(json.dumps({"version": raw.get("version", "1.1"), "data": articles}))


def _jsonl_examples(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _jsonl_subset(src: Path, dst: Path, n: int) -> None:
    dst.write_text("".join(line + "\n" for line in src.read_text().splitlines()[:n]))


def _encode_qa(tokenizer, example: dict[str, Any], max_length: int, doc_stride: int) -> dict[str, Any]:
    # As raykd's own inference builds a question's windows: question first, context truncated in
    # overlapping windows, padded to max_length. A question's windows form its batch.
    enc = tokenizer(example["question"].lstrip(), example["context"], truncation="only_second",
                    max_length=max_length, stride=doc_stride, return_overflowing_tokens=True,
                    padding="max_length", return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _encode_sentence(tokenizer, example: dict[str, Any], max_length: int, doc_stride: int) -> dict[str, Any]:
    return dict(tokenizer(example["sentence"], truncation=True, max_length=max_length,
                          padding="max_length", return_tensors="pt"))


@dataclass(frozen=True)
class Task:
    name: str
    # Config sections merged into every arm's base config (data files are set by the scripts).
    config: dict[str, Any]
    train_file: Path
    validation_file: Path
    # The metric a search ranks by, then every reported metric with its column label.
    metric: str
    metrics: tuple[tuple[str, str], ...]
    max_length: int
    doc_stride: int | None  # None: the task has no sliding windows
    # The model class that times a forward pass (transformers Auto class name).
    auto_class: str
    examples: Callable[[Path], list[dict[str, Any]]]
    subset: Callable[[Path, Path, int], None]
    encode: Callable[..., dict[str, Any]]
    # cli.py evaluate: the extra arguments, and {metric: key of its JSON output}.
    evaluate_args: Callable[[int, int], list[str]]
    evaluate_keys: dict[str, str]
    # What --full-data sets instead of the local files (the hub; needs the network).
    hub: dict[str, Any] = field(default_factory=dict)
    # Per-task defaults of the quality run (see quality.py), chosen for ~60 min on 2 CPU cores.
    defaults: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, Task] = {
    "qa": Task(
        name="qa",
        config={},
        train_file=DATA / "squad_real" / "train-v1.1-sample.json",
        validation_file=DATA / "squad_real" / "dev-v1.1-sample.json",
        metric="eval_f1",
        metrics=(("eval_f1", "F1"), ("eval_exact_match", "EM")),
        max_length=256,
        doc_stride=96,
        auto_class="AutoModelForQuestionAnswering",
        examples=_squad_examples,
        subset=_squad_subset,
        encode=_encode_qa,
        evaluate_args=lambda ml, ds: ["--max-length", str(ml), "--doc-stride", str(ds)],
        evaluate_keys={"eval_f1": "f1", "eval_exact_match": "exact_match"},
        hub={"dataset_name": "squad", "train_file": None, "validation_file": None},
    ),
    "classification": Task(
        name="classification",
        config={"task": "classification"},
        train_file=DATA / "sst2_real" / "train-sample.jsonl",
        validation_file=DATA / "sst2_real" / "validation.jsonl",
        metric="eval_accuracy",
        metrics=(("eval_accuracy", "accuracy"),),
        max_length=64,  # SST-2 sentences are short
        doc_stride=None,
        auto_class="AutoModelForSequenceClassification",
        examples=_jsonl_examples,
        subset=_jsonl_subset,
        encode=_encode_sentence,
        evaluate_args=lambda ml, ds: ["--task", "classification", "--max-length", str(ml)],
        evaluate_keys={"eval_accuracy": "accuracy"},
        hub={"dataset_name": "glue", "dataset_config": "sst2", "train_file": None, "validation_file": None},
        # 8,000 sentences x 64 tokens is ~2x a SQuAD epoch at 256: half of them keeps ~60 min.
        defaults={"max_train_samples": 4000},
    ),
}
ALIASES = {"squad": "qa", "sst2": "classification"}


def get(name: str) -> Task:
    return TASKS[ALIASES.get(name, name)]
