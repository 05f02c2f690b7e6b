"""SQuAD v1.1 exact match and F1 as a local ``evaluate`` module (loaded by path, no hub).

Follows the official v1.1 evaluation script's definitions (Rajpurkar et al. 2016): answers are
normalised by lower-casing, removing punctuation, the articles a/an/the and extra whitespace; a
prediction scores the maximum over the gold answers; F1 is over bag-of-token overlap; both are
reported as percentages averaged over questions.
"""

import collections
import re
import string

import datasets
import evaluate

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text):
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction, gold):
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction, gold):
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    overlap = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


class SquadV1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="SQuAD v1.1 exact match and F1 (official normalisation)",
            citation="Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text, 2016",
            inputs_description="predictions: [{id, prediction_text}], references: [{id, answers: {text, answer_start}}]",
            features=datasets.Features(
                {
                    "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.features.Sequence(
                            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                        ),
                    },
                }
            ),
        )

    def _compute(self, predictions, references):
        preds = {p["id"]: p["prediction_text"] for p in predictions}
        total = em = f = 0.0
        for ref in references:
            total += 1
            if ref["id"] not in preds:
                continue  # the official script counts an unanswered question as 0
            golds = ref["answers"]["text"]
            pred = preds[ref["id"]]
            em += max(exact_match(pred, g) for g in golds)
            f += max(f1(pred, g) for g in golds)
        if total == 0:
            return {"exact_match": 0.0, "f1": 0.0}
        return {"exact_match": 100.0 * em / total, "f1": 100.0 * f / total}
