"""``cli.py evaluate --predictions/--nbest``: the answers file is what the official SQuAD v1.1
script (evaluate-v1.1.py) reads, and that script's scoring gives raykd's EM/F1 on it.

The official scoring is re-implemented below from its definitions (normalise, token-bag F1, exact
match, maximum over the gold answers, percentages over every question of the data set, a question
without a prediction scoring 0), independently of raykd/squad_v1, and read the way the script reads
its inputs (``json.load(open(path))``, no encoding given).
"""

import json
import math
import re
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from raykd.tasks.qa import synthetic

ROOT = Path(__file__).parents[1]


# ------------------------------------------------------------------ the official logic, re-written


def official_normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def official_f1(prediction: str, gold: str) -> float:
    pred, ref = official_normalize(prediction).split(), official_normalize(gold).split()
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def official_exact(prediction: str, gold: str) -> float:
    return float(official_normalize(prediction) == official_normalize(gold))


def official_evaluate(dataset_file: Path, predictions_file: Path) -> dict[str, float]:
    with open(dataset_file) as f:
        dataset = json.load(f)
    assert dataset["version"] == "1.1"
    with open(predictions_file) as f:  # as the script does: the reader's locale, no encoding
        predictions = json.load(f)
    total = em = f1 = 0.0
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue  # unanswered: scores 0
                golds = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                em += max(official_exact(pred, g) for g in golds)
                f1 += max(official_f1(pred, g) for g in golds)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def test_the_rewritten_official_logic_on_hand_made_cases(tmp_path):
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": "a", "question": "?", "answers": [{"text": "the Eiffel Tower", "answer_start": 0}]},
        {"id": "b", "question": "?", "answers": [{"text": "red dog barked", "answer_start": 0},
                                                 {"text": "blue cat", "answer_start": 0}]},
        {"id": "c", "question": "?", "answers": [{"text": "x", "answer_start": 0}]},
    ]}]}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    (tmp_path / "p.json").write_text(json.dumps({"a": "Eiffel Tower!", "b": "the big red dog"}))
    got = official_evaluate(tmp_path / "d.json", tmp_path / "p.json")
    assert got["exact_match"] == pytest.approx(100 / 3)
    assert got["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


# ------------------------------------------------------------------ raykd's files through the CLI


def _dataset(path: Path) -> Path:
    """Synthetic paragraphs (several windows each at max_length 64) plus one-line contexts whose
    spans often match after normalisation (punctuation, articles) and a non-ASCII answer."""
    doc = synthetic.generate(30, seed=5)
    doc["version"] = "1.1"
    short = [
        ("The Eiffel Tower.", "What stands there?", ["Eiffel Tower", "The Eiffel Tower"]),
        ("Lisbon.", "Where?", ["Lisbon"]),
        ("Café Müller, Zürich.", "Which café?", ["Café Müller"]),
        ("In 1889, by Gustave Eiffel.", "When?", ["1889", "In 1889"]),
    ]
    doc["data"].append({"title": "short", "paragraphs": [
        {"context": ctx, "qas": [{"id": f"short-{i}", "question": q,
                                  "answers": [{"text": g, "answer_start": ctx.index(g)} for g in golds]}]}
        for i, (ctx, q, golds) in enumerate(short)
    ]})
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def test_predictions_file_scores_the_same_under_the_official_logic(tmp_path, tiny_models):
    data = _dataset(tmp_path / "dev.json")
    preds, nbest = tmp_path / "out" / "predictions.json", tmp_path / "out" / "nbest.json"
    out = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "evaluate", "--model", str(tiny_models["bert"]), "--data", str(data),
         "--max-length", "64", "--doc-stride", "32", "--n-best", "5",
         "--predictions", str(preds), "--nbest", str(nbest)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    raykd = json.loads(out.stdout)  # stdout is the result only; progress goes to stderr
    assert "[raykd evaluate]: " in out.stderr and " ETA " in out.stderr, out.stderr[-2000:]
    assert raykd["skipped"] == 0 and raykd["predictions"] == str(preds) and raykd["nbest"] == str(nbest)

    answers = json.loads(preds.read_text(encoding="ascii"))  # pure ASCII: any locale reads it
    ids = [qa["id"] for a in json.loads(data.read_text())["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert sorted(answers) == sorted(ids) and all(isinstance(v, str) for v in answers.values())
    official = official_evaluate(data, preds)
    # A random tiny model, yet not a trivial comparison: some answers overlap their gold answers.
    assert official["f1"] > 0
    assert official["exact_match"] == pytest.approx(raykd["exact_match"], abs=1e-9)
    assert official["f1"] == pytest.approx(raykd["f1"], abs=1e-9)

    contexts = {qa["id"]: p["context"] for a in json.loads(data.read_text())["data"]
                for p in a["paragraphs"] for qa in p["qas"]}
    lists = json.loads(nbest.read_text(encoding="ascii"))
    assert sorted(lists) == sorted(ids)
    # A window whose top-5 starts and ends make no valid span gives an empty list and answer "".
    assert sum(bool(c) for c in lists.values()) > len(lists) / 2
    for qid, cands in lists.items():
        assert len(cands) <= 5 and (cands[0]["text"] if cands else "") == answers[qid]
        if not cands:
            continue
        scores = [c["score"] for c in cands]
        assert scores == sorted(scores, reverse=True)
        assert math.fsum(c["probability"] for c in cands) == pytest.approx(1.0)
        assert len({(c["start"], c["end"]) for c in cands}) == len(cands)  # one entry per span
        for c in cands:
            assert c["text"] == contexts[qid][c["start"]:c["end"]]
            assert c["score"] == pytest.approx(c["start_logit"] + c["end_logit"])
