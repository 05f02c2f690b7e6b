import numpy as np
import pytest

from raykd.tasks.qa import metrics

# (prediction, gold answers, EM, F1) worked out by hand from the official SQuAD v1.1 evaluation
# script's rules: lower-case, strip ASCII punctuation, drop a/an/the, collapse whitespace; max over
# golds; bag-of-tokens F1 (0 when nothing overlaps).
CASES = [
    ("the Eiffel Tower", ["Eiffel Tower"], 1.0, 1.0),
    ("Eiffel Tower!", ["eiffel tower"], 1.0, 1.0),
    ("  Paris  ,  France ", ["Paris, France"], 1.0, 1.0),
    ("an apple a day", ["apple day"], 1.0, 1.0),
    ("THE ANSWER", ["answer"], 1.0, 1.0),
    ("", ["Paris"], 0.0, 0.0),
    ("New York", ["New York City", "NYC", "New York"], 1.0, 1.0),
    ("the big red dog", ["red dog barked"], 0.0, 2 / 3),
    ("go go stop", ["go stop stop"], 0.0, 2 / 3),
    ("state-of-the-art", ["state of the art"], 0.0, 0.0),
    ("\u201cParis\u201d", ["Paris"], 0.0, 0.0),  # curly quotes are not ASCII punctuation
    ("in 1889", ["1889", "in 1889 by Eiffel"], 0.0, 2 / 3),
    ("in 1889", ["1889", "In 1889."], 1.0, 1.0),
    ("Gustave", ["Gustave Eiffel", "Eiffel"], 0.0, 2 / 3),
]


def test_each_tricky_case_matches_the_official_rules():
    for i, (pred, golds, em, f1) in enumerate(CASES):
        refs = [{"id": str(i), "answers": {"text": golds, "answer_start": [0] * len(golds)}}]
        got = metrics.squad_scores({str(i): pred}, refs)
        assert got["exact_match"] == pytest.approx(100 * em, abs=1e-6), pred
        assert got["f1"] == pytest.approx(100 * f1, abs=1e-6), pred


def test_averages_over_questions_and_missing_prediction_counts_zero():
    refs = [{"id": str(i), "answers": {"text": g, "answer_start": [0] * len(g)}} for i, (_, g, _, _) in enumerate(CASES)]
    preds = {str(i): p for i, (p, _, _, _) in enumerate(CASES)}
    got = metrics.squad_scores(preds, refs)
    assert got["exact_match"] == pytest.approx(100 * np.mean([c[2] for c in CASES]), abs=1e-6)
    assert got["f1"] == pytest.approx(100 * np.mean([c[3] for c in CASES]), abs=1e-6)
    refs.append({"id": "unanswered", "answers": {"text": ["x"], "answer_start": [0]}})
    got2 = metrics.squad_scores(preds, refs)
    assert got2["f1"] == pytest.approx(got["f1"] * len(CASES) / (len(CASES) + 1), abs=1e-6)


def _window(offsets):
    return {"example_id": "e", "offset_mapping": offsets}


def test_postprocess_picks_best_valid_span_across_windows():
    ctx = "aaa bbb ccc ddd"
    # token 0 = CLS, 1 = question, 2.. = context words
    offs = [[-1, -1], [-1, -1], [0, 3], [4, 7], [8, 11], [12, 15]]
    feats = [_window(offs), _window(offs)]
    s = np.full((2, 6), -10.0)
    e = np.full((2, 6), -10.0)
    s[0, 1], e[0, 1] = 50, 50  # question token: never a valid answer
    s[0, 3], e[0, 2] = 9, 9  # end before start: invalid
    s[0, 3], e[0, 4] = 9, 5  # valid "bbb ccc" score 14
    s[1, 5], e[1, 5] = 8, 8  # valid "ddd" score 16 in the second window: wins
    out = metrics.postprocess([{"id": "e", "context": ctx}], feats, s, e, n_best=5, max_answer_length=30)
    assert out["e"]["text"] == "ddd" and out["e"]["score"] == 16


def test_postprocess_respects_max_answer_length_and_empty_when_no_span():
    ctx = "aaa bbb ccc ddd"
    offs = [[-1, -1], [-1, -1], [0, 3], [4, 7], [8, 11], [12, 15]]
    s = np.array([[0, 0, 10, 0, 0, 0.0]])
    e = np.array([[0, 0, 0, 0, 0, 10.0]])
    out = metrics.postprocess([{"id": "e", "context": ctx}], [_window(offs)], s, e, n_best=6, max_answer_length=2)
    assert len(out["e"]["text"].split()) <= 2
    none = metrics.postprocess([{"id": "e", "context": ctx}], [_window([[-1, -1]] * 6)], s, e, 6, 30)
    assert none["e"]["text"] == ""


def test_nbest_first_entry_is_the_answer_on_a_tied_score():
    # Span (0, 4) first scores 4.0 and later 5.0; span (5, 9) scores 5.0 in between: postprocess's
    # max() picks (5, 9), the first span reaching 5.0, and the n-best list must start with it too.
    spans = [(4.0, 0, 4, 2.0, 2.0), (5.0, 5, 9, 2.5, 2.5), (5.0, 0, 4, 2.5, 2.5)]
    top = metrics._nbest("aaaa bbbb", spans, n_best=5)
    assert [(t["start"], t["end"]) for t in top] == [(5, 9), (0, 4)]
    assert top[0]["text"] == "bbbb" and top[1]["score"] == 5.0
