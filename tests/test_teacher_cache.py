import dataclasses
import operator
import typing

import numpy as np
import pytest
import torch

from raykd import config as config_mod
from raykd import prepare, storage, tasks
from raykd.config import DataConfig, OptimConfig, RaykdConfig, TeacherFinetuneConfig, with_values
from raykd.modeling import losses, models
from raykd.study import cache as teacher_cache
from raykd.tasks.qa import data as qa_data
from raykd.tasks.qa.task import HEAD as QA_HEAD

QA = tasks.get("question_answering")


@pytest.fixture()
def data_cfg():
    return DataConfig(synthetic=True, synthetic_train_size=24, synthetic_eval_size=8, max_length=64, doc_stride=24)


def _counting(calls):
    def compute(teacher, root):
        calls.append(root)
        return teacher_cache.compute_teacher_logits(teacher, root, batch_size=8, device="cpu", progress=False)

    return compute


def test_second_prepare_reuses_features_and_logits(tmp_path, data_cfg, tiny_models):
    teacher = str(tiny_models["bert"])
    prep, built = teacher_cache.prepare_features(QA, data_cfg, teacher, tmp_path)
    assert built
    calls = []
    prep, computed = teacher_cache.prepare_teacher_logits(prep, teacher, _counting(calls))
    assert computed and len(calls) == 1
    logits = prep.teacher_logits()
    assert logits.dtype == np.float16 and logits.shape == (len(prep.train()), 2, 64)
    prep2, built2 = teacher_cache.prepare_features(QA, data_cfg, teacher, tmp_path)
    prep2, computed2 = teacher_cache.prepare_teacher_logits(prep2, teacher, _counting(calls))
    assert not built2 and not computed2 and len(calls) == 1  # no second teacher forward
    assert prep2.root == prep.root and prep2.teacher_file == prep.teacher_file


def test_changed_max_length_rebuilds(tmp_path, data_cfg, tiny_models):
    teacher = str(tiny_models["bert"])
    a, _ = teacher_cache.prepare_features(QA, data_cfg, teacher, tmp_path)
    b, built = teacher_cache.prepare_features(QA, dataclasses.replace(data_cfg, max_length=96), teacher, tmp_path)
    assert built and a.root != b.root
    calls = []
    b, computed = teacher_cache.prepare_teacher_logits(b, teacher, _counting(calls))
    assert computed and b.teacher_logits().shape[-1] == 96


def test_truncated_or_corrupt_logits_are_rebuilt(tmp_path, data_cfg, tiny_models):
    teacher = str(tiny_models["bert"])
    prep, _ = teacher_cache.prepare_features(QA, data_cfg, teacher, tmp_path)
    calls = []
    prep, _ = teacher_cache.prepare_teacher_logits(prep, teacher, _counting(calls))
    path = prep.root / prep.teacher_file
    good = prep.teacher_logits().copy()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    prep, computed = teacher_cache.prepare_teacher_logits(prep, teacher, _counting(calls))
    assert computed and len(calls) == 2
    np.testing.assert_array_equal(prep.teacher_logits(), good)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(raw))
    prep, computed = teacher_cache.prepare_teacher_logits(prep, teacher, _counting(calls))
    assert computed and len(calls) == 3


def test_changed_teacher_gets_its_own_logits(tmp_path, data_cfg, tiny_models):
    import helpers

    other = str(helpers.tiny_bert(tmp_path / "other", layers=2, seed=7))
    prep, _ = teacher_cache.prepare_features(QA, data_cfg, str(tiny_models["bert"]), tmp_path)
    calls = []
    a, _ = teacher_cache.prepare_teacher_logits(prep, str(tiny_models["bert"]), _counting(calls))
    b, computed = teacher_cache.prepare_teacher_logits(prep, other, _counting(calls))
    assert computed and a.teacher_file != b.teacher_file


def test_cached_and_online_kd_agree_to_fp16_tolerance(tmp_path, data_cfg, tiny_models):
    teacher_name = str(tiny_models["bert"])
    prep, _ = teacher_cache.prepare_features(QA, data_cfg, teacher_name, tmp_path)
    prep, _ = teacher_cache.prepare_teacher_logits(prep, teacher_name, _counting([]))
    teacher = models.load_teacher(teacher_name, QA_HEAD)
    student = models.load_model(str(tiny_models["distilbert"]), QA_HEAD)
    names = ["input_ids", "attention_mask", "token_type_ids", "span_mask"]
    batch = prep.train().with_format("torch", columns=names)[:8]
    with torch.no_grad():
        t = models.forward(teacher, batch, models.accepted_inputs(teacher))
        s = models.forward(student, batch, models.accepted_inputs(student))
    cached = torch.from_numpy(np.asarray(prep.teacher_logits()[:8], dtype=np.float32))
    mask = QA.mask(batch)
    online = losses.kd_loss(QA.logits(s), QA.logits(t), mask, 2.0)
    from_cache = losses.kd_loss(QA.logits(s), cached, mask, 2.0)
    assert from_cache.item() == pytest.approx(online.item(), rel=2e-3, abs=1e-4)


def _leftovers(root):
    return sorted(p.name for p in root.rglob("*.tmp-*"))


def test_a_build_killed_midway_leaves_no_prepared_folder(tmp_path, data_cfg, tiny_models, monkeypatch):
    """Features are built under a temporary name and renamed whole: a build that dies while
    writing leaves no folder a later run would take for prepared, and the next build succeeds."""
    teacher = str(tiny_models["bert"])
    real = qa_data.build_features

    def dies_on_eval(examples, tok, max_length, doc_stride, train):  # raykd.data's, which the QA task calls
        if not train:
            raise KeyboardInterrupt  # as if killed after the training features were written
        return real(examples, tok, max_length, doc_stride, train)

    monkeypatch.setattr(qa_data, "build_features", dies_on_eval)
    with pytest.raises(KeyboardInterrupt):
        teacher_cache.prepare_features(QA, data_cfg, teacher, tmp_path)
    prepared = tmp_path / "prepared"
    assert not [p for p in prepared.iterdir() if not p.name.startswith(".")] and not _leftovers(tmp_path)
    monkeypatch.setattr(qa_data, "build_features", real)
    prep, built = teacher_cache.prepare_features(QA, data_cfg, teacher, tmp_path)
    assert built and prep.manifest()["complete"] and not _leftovers(tmp_path)


def test_temporaries_of_a_dead_process_are_removed_and_logits_are_renamed_into_place(tmp_path, data_cfg, tiny_models):
    teacher = str(tiny_models["bert"])
    fp_dir = teacher_cache.prepare_features(QA, data_cfg, teacher, tmp_path)[0].root
    # A build of another fingerprint by a process of this host that died (pid 2**22 + 1 is past
    # Linux's pid_max default range, so no live process has it).
    dead = storage.temp_name(fp_dir.with_name("other")).name.rsplit("-", 1)[0] + f"-{2**22 + 1}"
    (fp_dir.parent / dead).mkdir()
    prep, _ = teacher_cache.prepare_features(QA, dataclasses.replace(data_cfg, max_length=96), teacher, tmp_path)
    assert (fp_dir.parent / dead).exists()  # another fingerprint's: not this build's to remove
    teacher_cache._remove_dead_temporaries(fp_dir.with_name("other"))
    assert not (fp_dir.parent / dead).exists()

    def dies(teacher_name, root):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        teacher_cache.prepare_teacher_logits(prep, teacher, dies)
    assert not list(prep.root.glob("teacher-*")) and not _leftovers(tmp_path)
    prep, computed = teacher_cache.prepare_teacher_logits(prep, teacher, _counting([]))
    assert computed and (prep.root / prep.teacher_file).is_file() and not _leftovers(tmp_path)


# --- the key of the teacher raykd fine-tunes (no training here) --------------------------------

# Fine-tuning settings that teacher_finetune gives the teacher's run in place of optim's.
FROM_TEACHER_FINETUNE = {"optim.learning_rate", "optim.num_epochs", "optim.batch_size", "optim.eval_every_steps"}
# What the fine-tune reads: every optim field it inherits, teacher_finetune's, the global batch
# (workers), the precision (and the device that decides "auto"), the features, the checkpoint metric.
READ_BY_THE_FINETUNE = (
    [f"optim.{f.name}" for f in dataclasses.fields(OptimConfig)
     if f"optim.{f.name}" not in FROM_TEACHER_FINETUNE and f"optim.{f.name}" not in prepare.NOT_IN_TEACHER_KEY]
    + [f"models.teacher_finetune.{f.name}" for f in dataclasses.fields(TeacherFinetuneConfig) if f.name != "base"]
    + ["scaling.num_workers", "scaling.use_gpu", "data.max_length", "data.max_train_samples", "search.metric"]
)


def _ft_cfg(tiny_models, **flat):
    cfg = RaykdConfig.from_dict({
        "data": {"synthetic": True, "synthetic_train_size": 24, "synthetic_eval_size": 8, "max_length": 64,
                 "doc_stride": 24},
        "models": {"teacher": None, "student": str(tiny_models["distilbert"]),
                   "teacher_finetune": {"base": str(tiny_models["bert"])}},
    })
    return with_values(cfg, flat)


def _other(dotted: str, value):
    """A valid value of ``dotted`` other than ``value``."""
    special = {"search.metric": "eval_exact_match", "data.max_train_samples": 10}
    if dotted in special:
        return special[dotted]
    tp = config_mod.field_type(dotted)
    if typing.get_origin(tp) is typing.Literal:
        return next(v for v in typing.get_args(tp) if v != value)
    if isinstance(value, bool):
        return not value
    return value + 1 if isinstance(value, int) else value / 2


def _key(cfg, cache_dir):
    return prepare.teacher_key(prepare.teacher_finetune_config(cfg), cache_dir)


@pytest.fixture(scope="module")
def base_key(tmp_path_factory, tiny_models):
    cache = tmp_path_factory.mktemp("teacher-key")
    return cache, _key(_ft_cfg(tiny_models), cache)


@pytest.mark.parametrize("dotted", READ_BY_THE_FINETUNE)
def test_every_setting_the_teacher_finetune_reads_changes_its_key(tiny_models, base_key, dotted):
    cache, key = base_key
    cfg = _ft_cfg(tiny_models)
    section, _, leaf = dotted.rpartition(".")
    value = getattr(operator.attrgetter(section)(cfg), leaf)
    assert _key(with_values(cfg, {dotted: _other(dotted, value)}), cache) != key


def test_the_base_model_is_keyed_by_its_files(tiny_models, base_key, tmp_path):
    cache, key = base_key
    other = str(tiny_models["distilbert"])
    assert _key(_ft_cfg(tiny_models, **{"models.teacher_finetune.base": other}), cache) != key
    import shutil

    moved = shutil.copytree(tiny_models["bert"], tmp_path / "moved")  # the same files elsewhere
    assert _key(_ft_cfg(tiny_models, **{"models.teacher_finetune.base": str(moved)}), cache) == key


@pytest.mark.parametrize("flat", [
    {"optim.learning_rate": 1e-3, "optim.num_epochs": 5.0, "optim.batch_size": 4},  # teacher_finetune's are used
    {"optim.eval_batch_size": 7, "scaling.torch_threads": 1, "scaling.max_failures": 2},
    {"search.num_samples": 3, "search.name": "other", "tracking.experiment_name": "x", "latency.runs": 5},
    {"distill.temperature": 4.0, "models.student": "elsewhere", "models.init_from_teacher_layers": [0]},
])
def test_what_cannot_change_the_teacher_keeps_its_key(tiny_models, base_key, flat):
    cache, key = base_key
    assert _key(_ft_cfg(tiny_models, **flat), cache) == key


def test_what_the_key_leaves_out_are_settings():
    assert set(prepare.NOT_IN_TEACHER_KEY) <= set(config_mod.all_keys())
