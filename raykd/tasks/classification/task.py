"""Text classification (SST-2 and the like), the second task: sentences or sentence pairs with an
integer label (:mod:`raykd.tasks.classification.data`), a sequence-classification head, and accuracy plus F1
(of label 1 when there are two classes, macro-F1 over classes otherwise), in percent.

Distilled logits: one distribution over the classes per example, [B, 1, C], no mask: soft-target
KL with T² plus the hard cross-entropy on the gold label.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from raykd.config import DataConfig, RaykdConfig
from raykd.modeling.models import Head
from raykd.tasks.base import Built, Column, DataError, Score, Task
from raykd.tasks.classification import data as text_data
from raykd.tasks.classification import synthetic as sentiment

ACCURACY = "eval_accuracy"
F1 = "eval_f1"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def head(num_labels: int) -> Head:
    # BERT's pooler is part of its classifier path; a source without one (a QA checkpoint) leaves
    # it new. DistilBERT's head is pre_classifier + classifier.
    return Head("AutoModelForSequenceClassification", new=("classifier.", "pre_classifier."),
                optional=("pooler.",), config=(("num_labels", num_labels),))


def scores(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and F1 in percent: F1 of class 1 for two classes, else macro-F1: the mean over the
    classes that occur in the labels or the predictions (scikit-learn's ``average="macro"``)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    accuracy = float((predictions == labels).mean()) if len(labels) else 0.0

    def f1(c: int) -> float:
        tp = float(((predictions == c) & (labels == c)).sum())
        fp = float(((predictions == c) & (labels != c)).sum())
        fn = float(((predictions != c) & (labels == c)).sum())
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    if num_labels == 2:
        f = f1(1)
    else:
        # A class neither predicted nor labelled has no F1: counting it as 0 would lower the score
        # of an evaluation set that lacks a class, whatever the model does.
        present = np.union1d(predictions, labels)
        f = float(np.mean([f1(int(c)) for c in present])) if len(present) else 0.0
    return {ACCURACY: 100.0 * accuracy, F1: 100.0 * f}


def trim(batch: dict[str, Any]) -> dict[str, Any]:
    """Drop the positions that are padding in every row (features are padded to max_length;
    sentences are mostly much shorter). Right padding: the kept positions are the first ones."""
    if "attention_mask" not in batch:
        return batch
    mask = batch["attention_mask"]
    # Left padding would make this cut the text and keep the padding: refuse it loudly.
    if mask.shape[1] > 1 and bool((mask[:, 0] == 0).any()) and bool((mask[:, -1] == 1).any()):
        raise ValueError("classification features are left-padded; raykd pads on the right "
                         "(tokenizer padding_side='right')")
    n = max(1, int(mask.sum(dim=1).max()))
    return {k: (v[:, :n] if k in INPUTS else v) for k, v in batch.items()}


def teacher_agreement(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> tuple[float, float]:
    """(share of features where the teacher's argmax is the gold label, the same share once each
    gold class is renamed to the class the teacher predicts most for it, when that renaming is a
    one-to-one relabelling; else the first share again). Far apart, the teacher knows the classes
    under other ids: its label order differs from the data's."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if not len(labels):
        return 0.0, 0.0
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    as_given = float(np.trace(confusion)) / len(labels)
    present = confusion.sum(axis=1) > 0
    renamed = confusion.argmax(axis=1)[present]
    if len(set(renamed.tolist())) < len(renamed):  # not one-to-one (e.g. one class for everything)
        return as_given, as_given
    return as_given, float(confusion.max(axis=1).sum()) / len(labels)


def predict_logits(model, features, batch_size: int = 64, device="cpu", autocast_dtype=None,
                   progress: str | None = None) -> np.ndarray:
    """Class logits, float32 [N, C], of every feature."""
    return Classification().predict_logits(model, features, batch_size, device, autocast_dtype,
                                            progress=progress)[:, 0]


def _texts(column, name: str) -> list[str]:
    missing = column.isna()
    if missing.any():
        rows = ", ".join(map(str, list(column.index[missing])[:5]))
        raise ValueError(f"{name} is missing on row {rows}; give it on every row"
                         + (" (or on none)" if name == "text_pair" else ""))
    return [str(t) for t in column]


class Classification(Task):
    name = "classification"
    metric = ACCURACY
    scores = (Score(ACCURACY, "acc"), Score(F1, "F1"))
    train_columns = ("labels",)
    unused_keys: ClassVar[dict[str, str]] = {
        "data.doc_stride": "a sentence is one feature, truncated to data.max_length: no sliding windows",
        "data.n_best": "there are no answer spans to rank",
        "data.max_answer_length": "there are no answer spans",
    }
    file_format = text_data.FORMAT
    architecture = "ForSequenceClassification"
    serving_inputs = (Column("text", "string"), Column("text_pair", "string", required=False))
    serving_outputs = (Column("label", "long"), Column("score", "double"))
    checks_teacher = True

    def config_checks(self, cfg: RaykdConfig) -> list[tuple[bool, str, str]]:
        return [(cfg.data.num_labels >= 2, "data.num_labels", "must be >= 2")]

    def head(self, cfg: RaykdConfig) -> Head:
        return head(cfg.data.num_labels)

    def check_teacher(self, logits: np.ndarray, train, warn) -> None:
        num_labels = logits.shape[-1]
        labels = np.asarray(train["labels"])
        as_given, best = teacher_agreement(logits[:, 0].argmax(-1), labels, num_labels)
        chance = 1.0 / num_labels
        if best >= 0.6 and best - as_given >= 0.3:
            raise DataError(f"the teacher predicts the gold label on {100 * as_given:.1f}% of the training "
                            f"examples, but {100 * best:.1f}% once its class ids are renamed: its label order "
                            "differs from the data's; relabel the data or use a teacher with the data's "
                            "label ids (config id2label)")
        if as_given <= chance + 0.05:
            warn(f"the teacher predicts the gold label on only {100 * as_given:.1f}% of the training "
                 f"examples (chance is {100 * chance:.0f}%): is it fine-tuned on this task? Distilling it "
                 "teaches the student its mistakes")

    def check_model_config(self, conf: dict[str, Any], cfg: RaykdConfig, what: str, teacher: bool) -> None:
        super().check_model_config(conf, cfg, what, teacher)
        archs = conf.get("architectures") or []
        labels = conf.get("id2label")
        if any(a.endswith(self.architecture) for a in archs) and isinstance(labels, dict) \
                and len(labels) != cfg.data.num_labels:
            raise DataError(f"{what}: a classifier of {len(labels)} labels, but data.num_labels is "
                            f"{cfg.data.num_labels}; set data.num_labels to match, or use another model")

    # --- data ---------------------------------------------------------------------------------

    def data_files(self, cfg: DataConfig, cache_dir: Path) -> tuple[str | None, str | None]:
        if not cfg.synthetic:
            return cfg.train_file, cfg.validation_file
        from raykd import storage  # pyarrow: not for the config checks that read tasks

        root = cache_dir / "synthetic"
        n_train, n_eval, seed = cfg.synthetic_train_size, cfg.synthetic_eval_size, cfg.synthetic_seed
        train = storage.write_once(root / f"sentiment-train-{n_train}-{seed}.jsonl",
                                   lambda: sentiment.to_jsonl(sentiment.generate(n_train, seed)))
        # Another seed: evaluation sentences are new combinations.
        valid = storage.write_once(root / f"sentiment-dev-{n_eval}-{seed + 1000}.jsonl",
                                   lambda: sentiment.to_jsonl(sentiment.generate(n_eval, seed + 1000)))
        return str(train), str(valid)

    def feature_settings(self, cfg: DataConfig) -> dict[str, Any]:
        return {"max_length": cfg.max_length, "num_labels": cfg.num_labels}

    def build(self, cfg: DataConfig, tokenizer, cache_dir: Path) -> Built:
        train_file, valid_file = self.data_files(cfg, cache_dir)
        train = text_data.load_split(cfg, "train", train_file, valid_file)
        valid = text_data.load_split(cfg, "validation", train_file, valid_file)
        return Built(text_data.build_features(train, tokenizer, cfg.max_length),
                     text_data.build_features(valid, tokenizer, cfg.max_length), valid,
                     {"n_train_examples": len(train), "n_eval_examples": len(valid)})

    def check_data_file(self, path: Path, text: str, what: str, cfg: RaykdConfig,
                        warn: Callable[[str], None] | None = None) -> int:
        rows = text_data.normalise(text_data.parse_rows(path, text, what), cfg.data.num_labels, what)
        absent = sorted(set(range(cfg.data.num_labels)) - {r["label"] for r in rows})
        if absent and warn:
            # num_labels is not inferred from the data: a class the file never uses is either a
            # too-large num_labels or a sample that misses a class.
            warn(f"{what}: no example of class {', '.join(map(str, absent))} (data.num_labels: "
                 f"{cfg.data.num_labels}); check data.num_labels")
        return len(rows)

    # --- training -----------------------------------------------------------------------------

    def trim(self, batch):
        return trim(batch)

    def logits(self, outputs: Any):
        return outputs.logits[:, None, :]

    def mask(self, batch):
        return None

    def hard_loss(self, logits, batch):
        from raykd.modeling import losses

        return losses.hard_ce_loss(logits, batch["labels"][:, None])

    def evaluate(self, model, features, examples, cfg: DataConfig, batch_size: int, device="cpu",
                 autocast_dtype=None, progress: str | None = None) -> dict[str, float]:
        logits = self.predict_logits(model, features, batch_size, device, autocast_dtype, progress=progress)[:, 0]
        return scores(logits.argmax(axis=-1), np.asarray(features["labels"]), cfg.num_labels)

    # --- scoring a file -----------------------------------------------------------------------

    def eval_file(self, path: str, tokenizer, cfg: DataConfig):
        from datasets import Dataset

        examples = Dataset.from_list(text_data.read_file(path, cfg.num_labels))
        return text_data.build_features(examples, tokenizer, cfg.max_length), examples, {"examples": len(examples)}

    # --- serving ------------------------------------------------------------------------------

    def serving_example(self) -> dict[str, list]:
        return {"text": ["a gripping , beautifully acted film ."]}

    def serving_settings(self, cfg: RaykdConfig) -> dict[str, Any]:
        return {"max_length": cfg.data.max_length, "num_labels": cfg.data.num_labels}

    def predictor(self, model_dir: str, settings: dict[str, Any]):
        """Texts (and, for pair tasks, ``text_pair``) -> ``label`` (the class) and ``score`` (its
        softmax probability)."""
        import pandas as pd
        import torch

        from raykd.modeling import models

        tokenizer = models.load_tokenizer(model_dir)
        model = models.load_model(model_dir, head(settings["num_labels"])).eval()
        names = models.accepted_inputs(model)

        def predict(frame: pd.DataFrame) -> pd.DataFrame:
            texts = _texts(frame["text"], "text")
            pairs = None
            if "text_pair" in frame and not frame["text_pair"].isna().all():
                # A missing pair would be read as the text "None" or "nan": a pair on every row or on none.
                pairs = _texts(frame["text_pair"], "text_pair")
            labels, probs = [], []
            for i in range(0, len(texts), 64):
                enc = tokenizer(texts[i: i + 64], pairs[i: i + 64] if pairs else None, truncation=True,
                                max_length=settings["max_length"], padding=True, return_tensors="pt")
                with torch.no_grad():
                    p = torch.softmax(models.forward(model, dict(enc), names).logits.float(), dim=-1)
                best = p.max(dim=-1)
                labels += best.indices.tolist()
                probs += best.values.tolist()
            return pd.DataFrame({"label": pd.Series(labels, dtype="int64"), "score": pd.Series(probs, dtype="float64")})

        predict.model = model
        return predict
