"""The checks run before Ray starts, as functions (the CLI's catalogue is tests/test_bad_input.py)."""

import pytest
from conftest import write_squad

from raykd import preflight, spaces, tasks
from raykd.config import RaykdConfig

QA = tasks.get("question_answering")


def _qa(i, start):
    return {"id": str(i), "question": "Where?", "answers": [{"text": "Oslo", "answer_start": start}]}


def test_a_few_bad_answer_offsets_are_skipped_with_a_warning_many_are_refused(tmp_path):
    ctx = "Born in Oslo."
    few = write_squad(tmp_path / "few.json", [{"context": ctx, "qas": [_qa(i, 8) for i in range(199)] + [_qa(199, 0)]}])
    warned = []
    assert preflight.check_data_file(QA, None, str(few), "data.train_file", warned.append) == 200
    assert len(warned) == 1 and "1 of 200" in warned[0]
    many = write_squad(tmp_path / "many.json", [{"context": ctx, "qas": [_qa(0, 8), _qa(1, 3)]}])
    with pytest.raises(preflight.PreflightError, match="1 of 2 questions"):
        preflight.check_data_file(QA, None, str(many), "data.train_file")


def test_every_searched_model_is_checked(tmp_path, tiny_models):
    base = RaykdConfig.from_dict({
        "data": {"synthetic": True, "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"])},
        "space": {"models.student": {"type": "choice", "values": [str(tiny_models["distilbert"]), "./gone"]}},
    }, source="s.yaml")
    params = spaces.parse(base.space, base.source)
    with pytest.raises(preflight.PreflightError, match=r"s.yaml: models.student ./gone: no such folder"):
        preflight.check(base, "distill", params, experiment=False)
    preflight.check(base, "distill", [], experiment=False)  # the base pair alone is fine


def test_every_searched_layer_list_is_checked_against_its_source(tiny_models):
    base = RaykdConfig.from_dict({
        "data": {"synthetic": True, "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"]),
                   "init_from_teacher_layers": [0, 1]},
        "space": {"models.init_from_teacher_layers": {"type": "choice", "values": [[0, 1], [0, 9]]}},
    }, source="s.yaml")
    params = spaces.parse(base.space, base.source)
    with pytest.raises(preflight.PreflightError, match=r"\[0, 9\] asks for layer 9, but models.teacher .* 0..3"):
        preflight.check(base, "distill", params, experiment=False)
    preflight.check(base, "distill", [], experiment=False)  # the base's list alone is fine


def test_finetune_needs_no_teacher_but_a_layer_source(tiny_models):
    cfg = RaykdConfig.from_dict({
        "data": {"synthetic": True, "max_length": 96, "doc_stride": 32},
        "models": {"teacher": None, "student": str(tiny_models["distilbert"]), "init_from_teacher_layers": [0]},
    })
    with pytest.raises(preflight.PreflightError, match="models.init_from"):
        preflight.check(cfg, "finetune", experiment=False)
    preflight.check(cfg.replace(**{"models.init_from": str(tiny_models["bert"])}), "finetune", experiment=False)


@pytest.fixture(scope="module")
def other_vocab(tmp_path_factory):
    """A tiny BERT with its own 7-token vocabulary (not MiniLM's)."""
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    path = tmp_path_factory.mktemp("othervocab")
    (path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nwhere\noslo\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    BertForQuestionAnswering(BertConfig(vocab_size=7, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=16, max_position_embeddings=256)).save_pretrained(path)
    return path


@pytest.mark.parametrize("mode", ["distill", "finetune"])
def test_a_layer_source_of_another_vocabulary_is_refused(tiny_models, other_vocab, mode):
    cfg = RaykdConfig.from_dict({
        "data": {"synthetic": True, "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"]),
                   "init_from_teacher_layers": [0, 1], "init_from": str(other_vocab)},
    }, source="s.yaml")
    with pytest.raises(preflight.PreflightError,
                       match=rf"s.yaml: models.student .* with models.init_from {other_vocab}: .*vocabulary"):
        preflight.check(cfg, mode, experiment=False)


def test_a_layer_source_of_the_students_vocabulary_is_accepted(tiny_models):
    cfg = RaykdConfig.from_dict({
        "data": {"synthetic": True, "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"]),
                   "init_from_teacher_layers": [0, 1], "init_from": str(tiny_models["bert"])},
    })
    preflight.check(cfg, "distill", experiment=False)
    preflight.check(cfg, "finetune", experiment=False)


def test_experiment_folder_rules(tmp_path):
    cfg = RaykdConfig.from_dict({"search": {"name": "exp", "storage_path": str(tmp_path)}})
    preflight.check_experiment(cfg, None, resume=False, overwrite=False)
    with pytest.raises(preflight.PreflightError, match="--resume"):
        preflight.check_experiment(cfg, None, resume=True, overwrite=False)
    # Only the console's logs (a command stopped while preparing the study): no experiment yet.
    (tmp_path / "exp" / "logs").mkdir(parents=True)
    preflight.check_experiment(cfg, None, resume=False, overwrite=False)
    with pytest.raises(preflight.PreflightError, match="--resume"):
        preflight.check_experiment(cfg, None, resume=True, overwrite=False)
    (tmp_path / "exp" / "tuner.pkl").write_text("")
    with pytest.raises(preflight.PreflightError, match="already exists"):
        preflight.check_experiment(cfg, None, resume=False, overwrite=False)
    preflight.check_experiment(cfg, None, resume=True, overwrite=False)
    preflight.check_experiment(cfg, None, resume=False, overwrite=True)
    preflight.check_experiment(cfg, "distill", resume=False, overwrite=False)  # exp-distill: another run
