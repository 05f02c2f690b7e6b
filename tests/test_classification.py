"""The classification task without Ray: its data files and features, logits, loss and scores, its
head and layer copy, the teacher-logit cache on its [N, 1, C] shape, the served student, and the
settings and preflight refusals that belong to it."""

import json
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raykd import preflight, spaces, tasks
from raykd.config import ConfigError, DataConfig, RaykdConfig, load_config
from raykd.modeling import losses, models
from raykd.study import cache as teacher_cache
from raykd.tasks.base import DataError
from raykd.tasks.classification import data as text_data
from raykd.tasks.classification import synthetic as sentiment
from raykd.tasks.classification import task as classification

CLS = tasks.get("classification")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    return helpers.tiny_bert_classifier(tmp_path_factory.mktemp("cls") / "bert", layers=4)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- data --------------------------------------------------------------------------------------


def test_jsonl_csv_tsv_and_json_list_read_alike(tmp_path):
    rows = [{"sentence": "a fine film", "label": 1}, {"sentence": "dull , so dull", "label": 0}]
    jsonl = _write(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.csv").write_text('sentence,label\na fine film,1\n"dull , so dull",0\n')
    (tmp_path / "a.tsv").write_text("sentence\tlabel\na fine film\t1\ndull , so dull\t0\n")
    (tmp_path / "a.json").write_text(json.dumps(rows))
    want = [("a fine film", None, 1), ("dull , so dull", None, 0)]
    for name in ("a.jsonl", "a.csv", "a.tsv", "a.json"):
        got = text_data.read_file(str(tmp_path / name), 2)
        assert [(r["text"], r["text_pair"], r["label"]) for r in got] == want, name
    assert CLS.check_data_file(jsonl, jsonl.read_text(), "f", RaykdConfig(task="classification")) == 2


def test_text_column_and_pairs(tmp_path):
    got = text_data.read_file(str(_write(tmp_path / "t.jsonl", [{"text": "ok", "label": 0}])), 2)
    assert got[0]["text"] == "ok"
    pairs = _write(tmp_path / "p.jsonl", [{"sentence1": "a man sleeps", "sentence2": "a person rests", "label": 1}])
    got = text_data.read_file(str(pairs), 2)
    assert (got[0]["text"], got[0]["text_pair"]) == ("a man sleeps", "a person rests")


@pytest.mark.parametrize("rows, words", [
    ([{"sentence": "x", "label": 0}, {"sentence": "y"}], ["line 2", "missing 'label'"]),
    ([{"sentence": "x", "label": 2}], ["line 1", "label 2", "outside 0 .. 1"]),
    ([{"sentence": "x", "label": "good"}], ["line 1", "not an integer class"]),
    ([{"review": "x", "label": 0}], ["no text column", "review"]),
    ([{"sentence": "x", "label": 0}, {"sentence": 3, "label": 1}], ["line 2", "'sentence' is not text"]),
])
def test_bad_rows_are_refused_naming_the_line(tmp_path, rows, words):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(tasks.DataError) as err:
        text_data.read_file(str(path), 2)
    for word in words:
        assert word in str(err.value)


def test_not_json_lines_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"sentence": "x", "label": 0}\n{"sentence": "y", label: 1}\n')
    with pytest.raises(tasks.DataError, match="line 2"):
        text_data.read_file(str(path), 2)


def test_features_are_one_per_example_padded_with_labels(tok):
    from datasets import Dataset

    ex = Dataset.from_list([{"id": "0", "text": "a gripping film", "text_pair": None, "label": 1},
                            {"id": "1", "text": "so dull", "text_pair": None, "label": 0}])
    feats = text_data.build_features(ex, tok, 16)
    assert len(feats) == 2 and feats["labels"] == [1, 0]
    assert all(len(ids) == 16 for ids in feats["input_ids"])
    assert tok.decode([i for i, m in zip(feats["input_ids"][0], feats["attention_mask"][0]) if m],
                      skip_special_tokens=True) == "a gripping film"
    pairs = Dataset.from_list([{"id": "0", "text": "a man sleeps", "text_pair": "a person rests", "label": 1}])
    pf = text_data.build_features(pairs, tok, 16)
    assert 1 in pf["token_type_ids"][0]  # the second sentence is segment 1


def test_trim_drops_only_all_padding_positions():
    batch = {"input_ids": torch.tensor([[101, 5, 102, 0, 0], [101, 6, 7, 102, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]),
             "token_type_ids": torch.zeros(2, 5, dtype=torch.long), "labels": torch.tensor([0, 1]),
             "teacher_logits": torch.zeros(2, 1, 2)}
    out = CLS.trim(batch)
    assert out["input_ids"].shape == (2, 4) and out["attention_mask"].shape == (2, 4)
    assert out["labels"].shape == (2,) and out["teacher_logits"].shape == (2, 1, 2)


def test_generated_sentiment_is_balanced_and_deterministic():
    rows = sentiment.generate(400, seed=3)
    assert rows == sentiment.generate(400, seed=3)
    share = sum(r["label"] for r in rows) / len(rows)
    assert 0.4 < share < 0.6
    assert any(" not " in f" {r['sentence']} " for r in rows)  # some opinions are negated


# --- scores, logits, loss ----------------------------------------------------------------------


def test_accuracy_and_binary_f1_by_hand():
    pred, gold = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    s = classification.scores(pred, gold, 2)
    assert s["eval_accuracy"] == pytest.approx(60.0)
    # class 1: tp 2, fp 1, fn 1 -> F1 = 4 / 6
    assert s["eval_f1"] == pytest.approx(100 * 4 / 6)
    three = classification.scores(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), 3)
    # per class F1: 1, 2/3, 2/3 -> macro 7/9
    assert three["eval_f1"] == pytest.approx(100 * 7 / 9) and three["eval_accuracy"] == pytest.approx(75.0)


@pytest.mark.parametrize("num_labels", [3, 4, 5])
def test_macro_f1_is_scikit_learns(num_labels):
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(num_labels)
    cases = [(rng.integers(0, num_labels, n), rng.integers(0, num_labels, n)) for n in (1, 7, 40, 200)]
    # The last class neither labelled nor predicted: left out of the mean, as scikit-learn does.
    cases.append((rng.integers(0, num_labels - 1, 30), rng.integers(0, num_labels - 1, 30)))
    assert num_labels - 1 not in np.union1d(*cases[-1])
    for pred, gold in cases:
        expected = 100 * f1_score(gold, pred, average="macro", zero_division=0)
        assert classification.scores(pred, gold, num_labels)["eval_f1"] == pytest.approx(expected)


def test_binary_f1_is_scikit_learns_f1_of_class_1():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for n in (1, 9, 100):
        pred, gold = rng.integers(0, 2, n), rng.integers(0, 2, n)
        expected = 100 * f1_score(gold, pred, average="binary", zero_division=0)
        assert classification.scores(pred, gold, 2)["eval_f1"] == pytest.approx(expected)


def test_logits_mask_and_hard_loss_of_a_classifier(tiny_classifier):
    model = models.load_model(str(tiny_classifier), CLS.head(RaykdConfig(task="classification")))
    batch = {"input_ids": torch.randint(1000, 2000, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long),
             "token_type_ids": torch.zeros(3, 7, dtype=torch.long), "labels": torch.tensor([0, 1, 1])}
    out = models.forward(model, batch, models.accepted_inputs(model))
    logits = CLS.logits(out)
    assert logits.shape == (3, 1, 2) and CLS.mask(batch) is None
    assert CLS.hard_loss(logits, batch).item() == pytest.approx(F.cross_entropy(out.logits, batch["labels"]).item())
    parts = losses.distillation_loss(logits, CLS.hard_loss(logits, batch), mask=None, teacher_logits=logits.detach(),
                                     temperature=4.0, alpha_ce=0.5, alpha_hard=0.5)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-6)


def test_layer_copy_gives_a_classifier_with_a_new_head(tiny_classifier):
    head = CLS.head(RaykdConfig(task="classification"))
    teacher = models.load_model(str(tiny_classifier), head)
    student = models.build_student("unused", [1, 3], str(tiny_classifier), head)
    assert type(student).__name__ == "BertForSequenceClassification" and student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["bert.encoder.layer.0.attention.self.query.weight"],
                       t["bert.encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(s["bert.pooler.dense.weight"], t["bert.pooler.dense.weight"])  # the pooler is copied too


def test_evaluate_is_argmax_accuracy(tmp_path, tiny_classifier):
    cfg = RaykdConfig.from_dict({"task": "classification", "data": {"synthetic": True, "synthetic_train_size": 40,
                                                                    "synthetic_eval_size": 30, "max_length": 32}})
    prep, _ = teacher_cache.prepare_features(CLS, cfg.data, str(tiny_classifier), tmp_path)
    model = models.load_model(str(tiny_classifier), CLS.head(cfg))
    got = CLS.evaluate(model, prep.eval(), prep.examples(), cfg.data, batch_size=7)
    logits = classification.predict_logits(model, prep.eval(), batch_size=30)
    want = 100 * float((logits.argmax(-1) == np.array(prep.eval()["labels"])).mean())
    assert got["eval_accuracy"] == pytest.approx(want) and set(got) == {"eval_accuracy", "eval_f1"}


# --- the teacher-logit cache on the classification shape ---------------------------------------


def test_teacher_logits_are_n_by_1_by_classes_and_agree_with_online(tmp_path, tiny_classifier):
    cfg = RaykdConfig.from_dict({"task": "classification", "data": {"synthetic": True, "synthetic_train_size": 24,
                                                                    "synthetic_eval_size": 8, "max_length": 32}})
    prep, built = teacher_cache.prepare_features(CLS, cfg.data, str(tiny_classifier), tmp_path)
    assert built and prep.task() is CLS and prep.manifest()["task"] == "classification"
    prep, computed = teacher_cache.prepare_teacher_logits(
        prep, str(tiny_classifier),
        lambda t, root: teacher_cache.compute_teacher_logits(t, root, batch_size=5, device="cpu", progress=False))
    cached = prep.teacher_logits()
    assert computed and cached.dtype == np.float16 and cached.shape == (24, 1, 2)
    teacher = models.load_teacher(str(tiny_classifier), CLS.head(cfg))
    batch = CLS.trim(prep.train().with_format("torch", columns=["input_ids", "attention_mask", "token_type_ids"])[:8])
    with torch.no_grad():
        online = CLS.logits(models.forward(teacher, batch, models.accepted_inputs(teacher)))
    np.testing.assert_allclose(np.asarray(cached[:8], np.float32), online.numpy(), atol=2e-2)
    # Another task, same data settings: its own features (the task is part of the fingerprint).
    qa = teacher_cache.features_fingerprint(tasks.get("question_answering"), DataConfig(synthetic=True), "t", tmp_path)
    assert qa["task"] == "question_answering"


# --- the served student ------------------------------------------------------------------------


def test_predictor_maps_texts_to_label_and_score(tiny_classifier):
    import pandas as pd

    predict = CLS.predictor(str(tiny_classifier), CLS.serving_settings(RaykdConfig(task="classification")))
    out = predict(pd.DataFrame({"text": ["a wonderful film .", "dull and flat .", "fine"]}))
    assert list(out.columns) == [c.name for c in CLS.serving_outputs]
    assert set(out["label"]) <= {0, 1} and ((out["score"] >= 0.5) & (out["score"] <= 1)).all()
    # A text_pair column with nothing in it (MLflow fills an optional column with None) is no pair.
    same = predict(pd.DataFrame({"text": ["a wonderful film .", "dull and flat .", "fine"], "text_pair": [None] * 3}))
    pd.testing.assert_frame_equal(same, out)
    with pytest.raises(ValueError, match="text_pair is missing on row 1"):
        predict(pd.DataFrame({"text": ["a", "b"], "text_pair": ["c", float("nan")]}))
    with pytest.raises(ValueError, match="text is missing on row 0"):
        predict(pd.DataFrame({"text": [None, "b"]}))


# --- settings and refusals ---------------------------------------------------------------------


def _yaml(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_the_objective_comes_from_the_task_and_search_metric_overrides_it(tmp_path):
    from raykd import objective

    assert objective.metric(RaykdConfig()) == "eval_f1"
    assert objective.metric(RaykdConfig(task="classification")) == "eval_accuracy"
    cfg = RaykdConfig.from_dict({"task": "classification", "search": {"metric": "eval_f1"}})
    assert objective.metric(cfg) == "eval_f1" and objective.scores(cfg)[0] == ("eval_f1", "eval_f1")
    with pytest.raises(ConfigError, match=r"search.metric: 'eval_exact_match' is not reported by task classification"):
        RaykdConfig.from_dict({"task": "classification", "search": {"metric": "eval_exact_match"}})


@pytest.mark.parametrize("text, words", [
    ("task: sentiment\n", ["task", "unknown task 'sentiment'"]),
    ("task: clasification\n", ["did you mean classification"]),
    ("task: classification\ndata:\n  doc_stride: 32\n", ["data.doc_stride", "no effect for task classification"]),
    ("task: classification\ndata:\n  n_best: 5\n", ["data.n_best", "no effect"]),
    ("data:\n  num_labels: 3\n", ["data.num_labels", "no effect for task question_answering"]),
    ("task: classification\ndata:\n  num_labels: 1\n", ["data.num_labels", ">= 2"]),
])
def test_task_settings_are_refused_in_one_line(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        load_config(_yaml(tmp_path, text))
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_alpha_squad_is_still_accepted_everywhere():
    cfg = load_config(None, ["distill.alpha_squad=0.25"])
    assert cfg.distill.alpha_hard == 0.25
    params = spaces.parse({"distill.alpha_ce": {"type": "uniform", "low": 0.1, "high": 0.9},
                           "distill.alpha_squad": {"type": "complement", "of": "distill.alpha_ce"}}, "s.yaml")
    assert spaces.values_of(params, cfg, "distill.alpha_hard") == pytest.approx([0.9, 0.1])
    spaces.check_corners(cfg, params)
    with pytest.raises(ConfigError, match="old name of distill.alpha_hard"):
        RaykdConfig.from_dict({"distill": {"alpha_squad": 0.3, "alpha_hard": 0.7}})


@pytest.mark.parametrize("name", ["distill.alpha_squad", "distill.alpha_hard"])
def test_set_either_alpha_name_over_a_file_with_the_old_name(tmp_path, name):
    # The file's alpha_squad is renamed before --set merges in: --set replaces it, whichever name.
    path = _yaml(tmp_path, "distill:\n  alpha_ce: 0.5\n  alpha_squad: 0.5\n")
    cfg = load_config(path, [f"{name}=0.2"])
    assert cfg.distill.alpha_hard == 0.2 and cfg.distill.alpha_ce == 0.5
    both = _yaml(tmp_path, "distill:\n  alpha_squad: 0.5\n  alpha_hard: 0.4\n")
    with pytest.raises(ConfigError, match="alpha_squad: is the old name of distill.alpha_hard"):
        load_config(both)


def test_a_space_cannot_search_what_the_task_ignores_or_the_task():
    params = spaces.parse({"data.doc_stride": {"type": "choice", "values": [32, 64]}}, "s.yaml")
    with pytest.raises(spaces.SpaceError, match="space.data.doc_stride: cannot be searched: it has no effect for task "
                                                "classification"):
        spaces.check_keys(params, "s.yaml", "classification")
    spaces.check_keys(params, "s.yaml", "question_answering")
    with pytest.raises(spaces.SpaceError, match="space.task: cannot be searched"):
        spaces.check_keys(spaces.parse({"task": {"type": "choice", "values": ["classification"]}}, "s.yaml"),
                          "s.yaml")


def test_missing_real_data_falls_back_to_generated_data_and_says_so(tmp_path):
    cfg = RaykdConfig.from_dict({"task": "classification", "data": {
        "train_file": str(tmp_path / "nowhere/train.jsonl"), "validation_file": str(tmp_path / "nowhere/dev.jsonl"),
        "synthetic_if_missing": True}})
    said = []
    out = preflight.resolve_data(cfg, said.append)
    assert out.data.synthetic and out.data.train_file is None and said and "not found" in said[0]
    # Without the flag a missing file is refused, not replaced.
    strict = RaykdConfig.from_dict({"task": "classification", "data": {"train_file": str(tmp_path / "x.jsonl"),
                                                                       "validation_file": str(tmp_path / "x.jsonl")}})
    assert preflight.resolve_data(strict, said.append) is strict
    with pytest.raises(preflight.PreflightError, match="no such file"):
        preflight.check_data(strict)
    # Files that are there are used as they are.
    good = _write(tmp_path / "d.jsonl", [{"sentence": "x", "label": 0}])
    real = RaykdConfig.from_dict({"task": "classification", "data": {
        "train_file": str(good), "validation_file": str(good), "synthetic_if_missing": True}})
    said.clear()
    assert preflight.resolve_data(real, said.append) is real
    assert said == [f"[raykd] data: training on {good}, evaluating on {good} (found, so not raykd's generated data)"]


def test_preflight_refuses_a_teacher_without_the_tasks_head_or_with_other_labels(tmp_path, tiny_models):
    three = helpers.tiny_bert_classifier(tmp_path / "three", num_labels=3)
    good = _write(tmp_path / "d.jsonl", [{"sentence": "x", "label": 0}, {"sentence": "y", "label": 1}])

    def cfg(teacher):
        return RaykdConfig.from_dict(
            {"task": "classification", "data": {"train_file": str(good), "validation_file": str(good), "max_length": 32},
             "models": {"teacher": str(teacher), "student": str(tiny_models["distilbert"])}}, source="s.yaml")

    with pytest.raises(preflight.PreflightError, match="a classifier of 3 labels, but data.num_labels is 2"):
        preflight.check(cfg(three), "distill", experiment=False)
    with pytest.raises(preflight.PreflightError, match="BertForQuestionAnswering.*random"):
        preflight.check(cfg(tiny_models["bert"]), "distill", experiment=False)


@pytest.mark.parametrize("header, words", [
    ("sentence,text,label", ["both 'sentence' and 'text'", "ambiguous"]),
    ("sentence,sentence1,sentence2,label", ["both 'sentence' and 'sentence1'/'sentence2'"]),
    ("question,sentence,label", ["has 'question' beside 'sentence'", "'sentence1' and 'sentence2'"]),
])
def test_ambiguous_text_columns_are_refused(tmp_path, header, words):
    path = tmp_path / "t.csv"
    path.write_text(header + "\n" + ",".join(["x"] * (header.count(",")) + ["1"]) + "\n")
    with pytest.raises(DataError) as err:
        text_data.read_file(str(path), 2)
    for word in words:
        assert word in str(err.value)


def test_a_class_absent_from_a_data_file_is_warned(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sentence,label\na,0\nb,1\n")
    cfg = RaykdConfig.from_dict({"task": "classification", "data": {"num_labels": 3}})
    warned = []
    assert CLS.check_data_file(path, path.read_text(), "t.csv", cfg, warned.append) == 2
    assert warned == ["t.csv: no example of class 2 (data.num_labels: 3); check data.num_labels"]


# --- the teacher's label order -----------------------------------------------------------------


def test_teacher_agreement_sees_a_swapped_label_order_and_not_a_constant_guess():
    labels = np.array([0, 1] * 50)
    assert classification.teacher_agreement(labels, labels, 2) == (1.0, 1.0)
    assert classification.teacher_agreement(1 - labels, labels, 2) == (0.0, 1.0)
    assert classification.teacher_agreement(np.ones(100, int), labels, 2) == (0.5, 0.5)
    three = np.array([0, 1, 2] * 10)
    assert classification.teacher_agreement((three + 1) % 3, three, 3) == (0.0, 1.0)


def test_a_teacher_with_another_label_order_is_refused_a_weak_one_warned(tmp_path):
    from datasets import Dataset

    labels = np.array([0, 1] * 20)
    train = Dataset.from_dict({"labels": labels})

    def logits(pred):
        out = np.zeros((len(pred), 1, 2), np.float32)
        out[np.arange(len(pred)), 0, pred] = 3.0
        return out

    warned = []
    CLS.check_teacher(logits(labels), train, warned.append)
    assert warned == []
    with pytest.raises(DataError, match="label order differs from the data's"):
        CLS.check_teacher(logits(1 - labels), train, warned.append)
    CLS.check_teacher(logits(np.zeros(40, int)), train, warned.append)
    assert len(warned) == 1 and "50.0%" in warned[0] and "fine-tuned on this task" in warned[0]


def test_left_padded_features_are_refused():
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long),
             "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])}
    with pytest.raises(ValueError, match="left-padded"):
        classification.trim(batch)
    right = {**batch, "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])}
    assert classification.trim(right)["input_ids"].shape == (2, 3)


def test_both_alpha_names_in_set_are_refused():
    with pytest.raises(ConfigError, match="--set distill.alpha_squad: is the old name of distill.alpha_hard"):
        load_config(None, ["distill.alpha_squad=0.2", "distill.alpha_hard=0.3"])


def test_text_and_text_pair_columns_are_a_pair(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a film", "text_pair": "it is good", "label": 1}\n')
    (row,) = text_data.read_file(str(path), 2)
    assert row["text"] == "a film" and row["text_pair"] == "it is good"


def test_features_are_right_padded_whatever_the_tokenizer_default(tiny_classifier):
    from datasets import Dataset

    tok = models.load_tokenizer(str(tiny_classifier))
    tok.padding_side = "left"
    ex = Dataset.from_list([{"id": "0", "text": "a b", "text_pair": None, "label": 0}])
    feats = text_data.build_features(ex, tok, 8)
    assert feats[0]["attention_mask"][0] == 1 and feats[0]["attention_mask"][-1] == 0


def test_an_online_teacher_is_checked_on_a_sample(tmp_path, tiny_classifier, monkeypatch):
    cfg = RaykdConfig.from_dict({"task": "classification", "data": {"synthetic": True, "synthetic_train_size": 24,
                                                                    "synthetic_eval_size": 8, "max_length": 32}})
    prep, _ = teacher_cache.prepare_features(CLS, cfg.data, str(tiny_classifier), tmp_path)
    seen = []
    monkeypatch.setattr(type(CLS), "check_teacher", lambda self, logits, train, warn: seen.append((logits.shape, len(train))))
    teacher_cache.check_online_teacher(prep, str(tiny_classifier), sample=10)
    assert seen == [((10, 1, 2), 10)]


# --- the tasks package's imports ------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_tasks_import_neither_the_rooms_above_them_nor_each_other():
    root = Path(tasks.__file__).parent
    above = ("ray", "mlflow", "raykd.training", "raykd.search", "raykd.study", "raykd.tracking", "raykd.serving",
             "raykd.run")
    other = {"qa": "raykd.tasks.classification", "classification": "raykd.tasks.qa"}
    files = sorted(root.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        folder = path.relative_to(root).parts[0]
        bad = [m for m in _imports(path) if any(m == a or m.startswith(a + ".") for a in above)
               or (folder in other and m.startswith(other[folder]))]
        assert not bad, f"{path.relative_to(root)} imports {bad}"
