"""The question-answering task's data (see :mod:`raykd.tasks.qa.task`): SQuAD v1.1 loading (hub
name, local SQuAD JSON, or raykd's synthetic set) and the train/eval features: sliding windows over
long contexts with offset mappings, gold spans as token positions, and the mask of positions that
may hold an answer. Pure functions; no Ray, no MLflow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raykd.config import DataConfig
from raykd.tasks.base import DataError
from raykd.tasks.qa import synthetic

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)


@dataclass
class LoadedSplit:
    examples: Dataset
    skipped: int  # records whose answer text does not match the context at answer_start


def _synthetic_split(path: Path, n_questions: int, seed: int) -> Path:
    from raykd import storage  # pyarrow: not for the config checks that read tasks

    return storage.write_once(path, lambda: json.dumps(synthetic.generate(n_questions, seed)))


def data_files(cfg: DataConfig, cache_dir: Path) -> tuple[str | None, str | None]:
    """Local train/validation files, generating the synthetic set on first use."""
    if cfg.synthetic:
        root = cache_dir / "synthetic"
        train = _synthetic_split(
            root / f"train-{cfg.synthetic_train_size}-{cfg.synthetic_seed}.json",
            cfg.synthetic_train_size,
            cfg.synthetic_seed,
        )
        # A different seed: evaluation paragraphs describe people never seen in training.
        valid = _synthetic_split(
            root / f"dev-{cfg.synthetic_eval_size}-{cfg.synthetic_seed + 1000}.json",
            cfg.synthetic_eval_size,
            cfg.synthetic_seed + 1000,
        )
        return str(train), str(valid)
    return cfg.train_file, cfg.validation_file


def _need(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing {key!r} (SQuAD v1.1 is data[].paragraphs[].{{context, qas[].{{id, "
                        "question, answers[].{text, answer_start}}}}})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}.{key}: expected {kind.__name__ if isinstance(kind, type) else 'a number'}, "
                        f"got {type(value).__name__}")
    return value


def squad_questions(doc: Any, path: str) -> Iterator[dict[str, Any]]:
    """The questions of a parsed SQuAD v1.1 document, flat in the hub's ``squad`` schema, each with
    ``ok``: whether every answer text lies in the context at its answer_start. A document that is
    not SQuAD v1.1 raises DataError naming the file and the first bad place (e.g.
    ``data[0].paragraphs[3].qas[1]: missing 'answers'``)."""
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with a 'data' list (SQuAD v1.1), got {type(doc).__name__}")
    for i, article in enumerate(_need(doc, "data", list, path)):
        for j, para in enumerate(_need(article, "paragraphs", list, f"{path}: data[{i}]")):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            context = _need(para, "context", str, where)
            for k, qa in enumerate(_need(para, "qas", list, where)):
                q_where = f"{where}.qas[{k}]"
                if isinstance(qa, dict) and qa.get("is_impossible"):
                    raise DataError(f"{q_where}: an unanswerable question (SQuAD v2.0); raykd needs SQuAD v1.1")
                question = _need(qa, "question", str, q_where)
                answers = _need(qa, "answers", list, q_where)
                texts, starts = [], []
                for n, ans in enumerate(answers):
                    texts.append(_need(ans, "text", str, f"{q_where}.answers[{n}]"))
                    starts.append(_need(ans, "answer_start", int, f"{q_where}.answers[{n}]"))
                yield {
                    "id": str(qa.get("id", f"{i}-{j}-{k}")),
                    "title": article.get("title", "") if isinstance(article, dict) else "",
                    "context": context,
                    "question": question,
                    "answers": {"text": texts, "answer_start": starts},
                    "ok": bool(answers) and all(context[s : s + len(t)] == t for s, t in zip(starts, texts)),
                }


def read_squad_json(path: str) -> LoadedSplit:
    """Flatten a SQuAD v1.1 JSON file into the hub's ``squad`` schema; questions whose answer does
    not match the context at answer_start are skipped (and counted)."""
    from datasets import Dataset

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not SQuAD JSON ({exc})") from None
    rows, skipped = [], 0
    for q in squad_questions(doc, path):
        if q.pop("ok"):
            rows.append(q)
        else:
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d records whose answer does not match answer_start", path, skipped)
    return LoadedSplit(Dataset.from_list(rows), skipped)


def check_answers(ds: Dataset) -> LoadedSplit:
    """The same answer check for hub data (whose schema is already flat)."""

    def ok(ex: dict[str, Any]) -> bool:
        a = ex["answers"]
        return bool(a["text"]) and all(
            ex["context"][s : s + len(t)] == t for s, t in zip(a["answer_start"], a["text"])
        )

    kept = ds.filter(ok)
    return LoadedSplit(kept, len(ds) - len(kept))


def load_split(cfg: DataConfig, split: str, cache_dir: Path) -> LoadedSplit:
    """``split`` is "train" or "validation"; truncated to max_*_samples."""
    train_file, valid_file = data_files(cfg, cache_dir)
    local = train_file if split == "train" else valid_file
    if local:
        loaded = read_squad_json(local)
    else:
        from datasets import load_dataset

        loaded = check_answers(load_dataset(cfg.dataset_name, cfg.dataset_config, split=split))
    limit = cfg.max_train_samples if split == "train" else cfg.max_eval_samples
    if limit is not None and limit < len(loaded.examples):
        loaded = LoadedSplit(loaded.examples.select(range(limit)), loaded.skipped)
    return loaded


def _tokenize(batch: dict[str, list], tokenizer, max_length: int, doc_stride: int):
    if tokenizer.padding_side != "right":
        raise ValueError("raykd expects a right-padding tokenizer (question first, context second)")
    # Leading spaces in questions waste window tokens (some SQuAD questions have many).
    questions = [q.lstrip() for q in batch["question"]]
    return tokenizer(
        questions,
        batch["context"],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        # BERT teachers need segment ids even when the student (DistilBERT) ignores them.
        return_token_type_ids=True,
        padding="max_length",
    )


def _context_range(seq_ids: list[int | None]) -> tuple[int, int]:
    first = seq_ids.index(1)
    last = len(seq_ids) - 1 - seq_ids[::-1].index(1)
    return first, last


def _span_mask(seq_ids: list[int | None], cls_index: int) -> list[int]:
    # Context tokens and CLS (the "no answer in this window" position) may hold an answer;
    # question tokens, separators and padding may not.
    return [1 if (s == 1 or i == cls_index) else 0 for i, s in enumerate(seq_ids)]


def train_features(batch: dict[str, list], tokenizer, max_length: int, doc_stride: int):
    """Batched ``Dataset.map`` function: one example → one feature per window.

    Windows that do not contain the whole answer label both positions as the CLS index.
    """
    enc = _tokenize(batch, tokenizer, max_length, doc_stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc.pop("offset_mapping")
    starts, ends, masks = [], [], []
    for i, offsets in enumerate(offsets_all):
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        seq_ids = enc.sequence_ids(i)
        masks.append(_span_mask(seq_ids, cls_index))
        answers = batch["answers"][sample_map[i]]
        a_start = answers["answer_start"][0]
        a_end = a_start + len(answers["text"][0])
        c_first, c_last = _context_range(seq_ids)
        if offsets[c_first][0] > a_start or offsets[c_last][1] < a_end:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        tok = c_first
        while tok <= c_last and offsets[tok][0] <= a_start:
            tok += 1
        starts.append(tok - 1)
        tok = c_last
        while tok >= c_first and offsets[tok][1] >= a_end:
            tok -= 1
        ends.append(tok + 1)
    enc["start_positions"] = starts
    enc["end_positions"] = ends
    enc["span_mask"] = masks
    return enc


def eval_features(batch: dict[str, list], tokenizer, max_length: int, doc_stride: int):
    """Batched ``Dataset.map`` function for evaluation: keeps the example id of every window and
    the character offsets of its context tokens ((-1, -1) elsewhere)."""
    enc = _tokenize(batch, tokenizer, max_length, doc_stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    example_ids, masks, offsets_out = [], [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        seq_ids = enc.sequence_ids(i)
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        example_ids.append(batch["id"][sample_map[i]])
        masks.append(_span_mask(seq_ids, cls_index))
        offsets_out.append([list(o) if s == 1 else [-1, -1] for o, s in zip(offsets, seq_ids)])
    enc["offset_mapping"] = offsets_out
    enc["example_id"] = example_ids
    enc["span_mask"] = masks
    return enc


def build_features(examples: Dataset, tokenizer, max_length: int, doc_stride: int, train: bool) -> Dataset:
    fn = train_features if train else eval_features
    return examples.map(
        fn,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "doc_stride": doc_stride},
        desc="train features" if train else "eval features",
    )
