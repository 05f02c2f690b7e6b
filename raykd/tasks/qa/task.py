"""Extractive question answering on SQuAD v1.1, the first task. Its data and features are
:mod:`raykd.tasks.qa.data` (sliding windows, gold spans, the answer-position mask), its scoring
:mod:`raykd.tasks.qa.metrics` (n-best spans, the official EM/F1) through
:mod:`raykd.tasks.qa.inference`, and its generated data :mod:`raykd.tasks.qa.synthetic`; this
module is what the rest of raykd sees of them.

Distilled logits: the start and the end distributions over positions, [B, 2, L], masked to the
positions that may hold an answer (context tokens and CLS).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from raykd.config import DataConfig, RaykdConfig
from raykd.modeling.models import Head
from raykd.tasks.base import Built, Column, DataError, Score, Task
from raykd.tasks.qa import data as data_mod
from raykd.tasks.qa import metrics

# More questions than this share whose answer_start does not point at their answer text, and the
# file is refused: its offsets are not character offsets into the context (bytes, tokens, another
# version of the text). Fewer are skipped with a warning, as the loader has always done.
MAX_BAD_ANSWER_SHARE = 0.01
HEAD = Head("AutoModelForQuestionAnswering", new=("qa_outputs.",))


class QuestionAnswering(Task):
    name = "question_answering"
    metric = metrics.METRIC
    scores = (Score(metrics.METRIC, "F1"), Score("eval_exact_match", "EM"))
    train_columns = ("start_positions", "end_positions", "span_mask")
    unused_keys: ClassVar[dict[str, str]] = {"data.num_labels": "answers are spans of the context, not labels"}
    file_format = "SQuAD v1.1 JSON"
    architecture = "ForQuestionAnswering"
    writes = ("predictions", "nbest")  # the official script's answers file; each question's n-best
    serving_inputs = (Column("question", "string"), Column("context", "string"))
    # start/end are always set (-1 when there is no answer).
    serving_outputs = (Column("answer", "string"), Column("score", "double"), Column("start", "long"),
                       Column("end", "long"))

    def config_checks(self, cfg: RaykdConfig) -> list[tuple[bool, str, str]]:
        d = cfg.data
        return [
            (0 < d.doc_stride < d.max_length, "data.doc_stride", f"must be in (0, max_length={d.max_length})"),
            (d.n_best > 0, "data.n_best", "must be > 0"),
            (d.max_answer_length > 0, "data.max_answer_length", "must be > 0"),
        ]

    def head(self, cfg: RaykdConfig) -> Head:
        return HEAD

    # --- data ---------------------------------------------------------------------------------

    def data_files(self, cfg: DataConfig, cache_dir: Path) -> tuple[str | None, str | None]:
        return data_mod.data_files(cfg, cache_dir)

    def feature_settings(self, cfg: DataConfig) -> dict[str, Any]:
        return {"max_length": cfg.max_length, "doc_stride": cfg.doc_stride}

    def build(self, cfg: DataConfig, tokenizer, cache_dir: Path) -> Built:
        train = data_mod.load_split(cfg, "train", cache_dir)
        valid = data_mod.load_split(cfg, "validation", cache_dir)
        train_feats = data_mod.build_features(train.examples, tokenizer, cfg.max_length, cfg.doc_stride, train=True)
        eval_feats = data_mod.build_features(valid.examples, tokenizer, cfg.max_length, cfg.doc_stride, train=False)
        return Built(train_feats, eval_feats, valid.examples, {
            "n_train_examples": len(train.examples), "n_eval_examples": len(valid.examples),
            "skipped": {"train": train.skipped, "validation": valid.skipped}})

    def check_data_file(self, path: Path, text: str, what: str, cfg: RaykdConfig | None = None,
                        warn: Callable[[str], None] | None = None) -> int:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{what}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
        questions = list(data_mod.squad_questions(doc, what))
        bad = sum(not q["ok"] for q in questions)
        if not questions:
            raise DataError(f"{what}: holds no questions (data[].paragraphs[].qas[] are all empty)")
        if bad > MAX_BAD_ANSWER_SHARE * len(questions):
            raise DataError(f"{what}: {bad} of {len(questions)} questions have an answer_start that does "
                            "not point at their answer text in the context (character offsets expected)")
        if bad and warn:
            warn(f"[raykd] warning: {what}: {bad} of {len(questions)} questions have an answer_start that does not "
                 "match their answer text; they are skipped")
        return len(questions)

    # --- training -----------------------------------------------------------------------------

    def logits(self, outputs: Any):
        import torch

        return torch.stack([outputs.start_logits, outputs.end_logits], dim=1)

    def mask(self, batch):
        return batch["span_mask"][:, None, :]

    def hard_loss(self, logits, batch):
        import torch

        from raykd.modeling import losses

        gold = torch.stack([batch["start_positions"], batch["end_positions"]], dim=1)
        return losses.hard_ce_loss(logits, gold, self.mask(batch))

    def evaluate(self, model, features, examples, cfg: DataConfig, batch_size: int, device="cpu",
                 autocast_dtype=None, progress: str | None = None) -> dict[str, float]:
        from raykd.tasks.qa import inference

        scores, _ = inference.evaluate(model, features, examples, cfg.n_best, cfg.max_answer_length, batch_size,
                                       device, autocast_dtype, progress=progress)
        return {metrics.METRIC: scores["f1"], "eval_exact_match": scores["exact_match"]}

    # --- scoring a file -----------------------------------------------------------------------

    def eval_file(self, path: str, tokenizer, cfg: DataConfig):
        loaded = data_mod.read_squad_json(path)
        features = data_mod.build_features(loaded.examples, tokenizer, cfg.max_length, cfg.doc_stride, train=False)
        return features, loaded.examples, {"examples": len(loaded.examples), "skipped": loaded.skipped}

    def score_file(self, model, tokenizer, path: str, cfg: DataConfig, batch_size: int,
                   progress: str | None = None, write: dict[str, str] | None = None) -> dict[str, Any]:
        from raykd.tasks.qa import inference, predictions

        write = write or {}
        features, examples, counts = self.eval_file(path, tokenizer, cfg)
        scores, preds = inference.evaluate(model, features, examples, cfg.n_best, cfg.max_answer_length, batch_size,
                                           keep_nbest="nbest" in write, progress=progress)
        out = {metrics.METRIC: scores["f1"], "eval_exact_match": scores["exact_match"], **counts}
        if "predictions" in write:
            out["predictions"] = str(predictions.write_answers(write["predictions"], preds))
        if "nbest" in write:
            out["nbest"] = str(predictions.write_nbest(write["nbest"], preds))
        return out

    # --- serving ------------------------------------------------------------------------------

    def serving_example(self) -> dict[str, list]:
        return {"question": ["Where was Alice Novak born?"],
                "context": ["Alice Novak was born in Lisbon. Alice Novak works as a chemist."]}

    def serving_settings(self, cfg: RaykdConfig) -> dict[str, Any]:
        d = cfg.data
        return {"max_length": d.max_length, "doc_stride": d.doc_stride, "n_best": d.n_best,
                "max_answer_length": d.max_answer_length}

    def predictor(self, model_dir: str, settings: dict[str, Any]):
        """Questions about contexts -> ``answer``, ``score``, ``start``, ``end`` (character span in
        the context); long contexts use the same sliding windows as evaluation."""
        import pandas as pd

        from raykd.modeling import models
        from raykd.tasks.qa import inference

        tokenizer = models.load_tokenizer(model_dir)
        model = models.load_model(model_dir, HEAD).eval()
        keys = ("max_length", "doc_stride", "n_best", "max_answer_length")

        def predict(frame: pd.DataFrame) -> pd.DataFrame:
            rows = inference.answer(model, tokenizer, list(frame["question"]), list(frame["context"]),
                                    **{k: settings[k] for k in keys})
            return pd.DataFrame(rows, columns=[c.name for c in self.serving_outputs])

        predict.model = model  # what the logged model's size and parameter count are measured on
        return predict
