import json

from conftest import write_squad

from raykd.config import DataConfig
from raykd.tasks.qa import data, synthetic
from raykd.tasks.qa.task import HEAD as QA_HEAD


def _examples(context, question, text, start, qid="q1"):
    return {"id": [qid], "title": ["t"], "context": [context], "question": [question],
            "answers": [{"text": [text], "answer_start": [start]}]}


def _decode_span(tok, feats, i):
    ids = feats["input_ids"][i][feats["start_positions"][i] : feats["end_positions"][i] + 1]
    return tok.decode(ids)


def test_answer_inside_single_window(tok):
    ctx = "The tower was built in Paris in 1889 by Gustave Eiffel."
    feats = data.train_features(_examples(ctx, "Who built the tower?", "Gustave Eiffel", ctx.index("Gustave")),
                                tok, 64, 16)
    assert len(feats["input_ids"]) == 1
    assert _decode_span(tok, feats, 0) == "gustave eiffel"
    # the span mask covers CLS and the context only
    mask, types = feats["span_mask"][0], feats["token_type_ids"][0]
    assert mask[0] == 1 and all(m == 0 for m, t, a in zip(mask[1:], types[1:], feats["attention_mask"][0][1:])
                                if t == 0 or a == 0)


def test_long_context_answer_split_and_at_window_edges(tok):
    words = [f"w{i}" for i in range(120)]
    ctx = " ".join(words) + " The answer is golden retriever ."
    start = ctx.index("golden retriever")
    feats = data.train_features(_examples(ctx, "what dog?", "golden retriever", start), tok, 48, 16)
    n = len(feats["input_ids"])
    assert n > 3  # sliding windows
    labelled = [i for i in range(n) if feats["start_positions"][i] != 0]
    # windows that do not hold the whole answer point at CLS; at least one holds it
    assert labelled and all(_decode_span(tok, feats, i) == "golden retriever" for i in labelled)
    for i in set(range(n)) - set(labelled):
        assert feats["start_positions"][i] == feats["end_positions"][i] == 0


def test_answer_split_across_window_boundary_labels_cls(tok):
    # An answer that straddles the end of the first window cannot be labelled in it.
    ctx = " ".join(["alpha"] * 30) + " new york city " + " ".join(["beta"] * 30)
    start = ctx.index("new york city")
    feats = data.train_features(_examples(ctx, "where?", "new york city", start), tok, 40, 20)
    for i in range(len(feats["input_ids"])):
        s, e = feats["start_positions"][i], feats["end_positions"][i]
        if s:
            assert _decode_span(tok, feats, i) == "new york city"
        else:
            assert e == 0
    assert any(feats["start_positions"])


def test_answer_at_the_very_start_and_end_of_context(tok):
    ctx = "Lisbon is a city. It lies near Porto"
    f1 = data.train_features(_examples(ctx, "which city?", "Lisbon", 0), tok, 64, 16)
    assert _decode_span(tok, f1, 0) == "lisbon"
    f2 = data.train_features(_examples(ctx, "near what?", "Porto", ctx.index("Porto")), tok, 64, 16)
    assert _decode_span(tok, f2, 0) == "porto"


def test_eval_features_keep_ids_and_context_offsets(tok):
    ctx = " ".join(f"w{i}" for i in range(100))
    ex = _examples(ctx, "q?", "w5", ctx.index("w5 "))
    feats = data.eval_features(ex, tok, 48, 16)
    assert set(feats["example_id"]) == {"q1"} and len(feats["example_id"]) > 1
    for offs, types, mask in zip(feats["offset_mapping"], feats["token_type_ids"], feats["span_mask"]):
        for (a, b), t, m in zip(offs[1:], types[1:], mask[1:]):
            if a >= 0:
                assert t == 1 and m == 1 and ctx[a:b]


def test_distilbert_tokenizer_still_gets_segment_ids(tiny_models):
    from raykd.modeling import models

    tok = models.load_tokenizer(str(tiny_models["distilbert"]))
    ctx = "Oslo is in Norway."
    feats = data.train_features(_examples(ctx, "where is Oslo?", "Norway", ctx.index("Norway")), tok, 32, 8)
    assert "token_type_ids" in feats  # needed by a BERT teacher even when the student ignores them
    student = models.load_model(str(tiny_models["distilbert"]), QA_HEAD)
    assert "token_type_ids" not in models.accepted_inputs(student)
    assert "token_type_ids" in models.accepted_inputs(models.load_model(str(tiny_models["bert"]), QA_HEAD))


def test_bad_answer_start_records_are_skipped_and_counted(tmp_path):
    path = write_squad(tmp_path / "d.json", [
        {"context": "Oslo is in Norway.", "qas": [
            {"id": "ok", "question": "where?", "answers": [{"text": "Norway", "answer_start": 11}]},
            {"id": "bad", "question": "where?", "answers": [{"text": "Norway", "answer_start": 3}]},
        ]},
    ])
    loaded = data.read_squad_json(str(path))
    assert loaded.skipped == 1 and loaded.examples["id"] == ["ok"]


def test_synthetic_data_is_valid_squad_and_limits_apply(tmp_path):
    doc = synthetic.generate(50, seed=3)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    loaded = data.read_squad_json(str(path))
    assert len(loaded.examples) == 50 and loaded.skipped == 0
    cfg = DataConfig(synthetic=True, synthetic_train_size=40, synthetic_eval_size=10, max_train_samples=7)
    assert len(data.load_split(cfg, "train", tmp_path).examples) == 7
    assert len(data.load_split(cfg, "validation", tmp_path).examples) == 10
