"""The architecture key and the on-disk cache of latency measurements."""

import json
import threading
import time
from dataclasses import replace

import pytest
from transformers import AutoConfig, BertConfig, DistilBertConfig

from raykd.config import LatencyConfig
from raykd.serving import architectures, latency
from raykd.serving.latency import LatencyCache, Measurement
from raykd.serving.latency_key import ArchKey, LatencyError, arch_key

QA = "BertForQuestionAnswering"


def bert(**kw):
    base = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 256}
    return BertConfig(**{**base, **kw})


def key(config=None, max_length=128, lc=None, **kw):
    return arch_key(config or bert(), max_length, lc or LatencyConfig(), task=QA, **kw)


def test_key_reads_the_architecture_not_the_weights_or_training_settings(tmp_path):
    k = key()
    assert (k.model_type, k.layers, k.hidden, k.heads, k.intermediate, k.vocab) == ("bert", 2, 32, 2, 64, 30522)
    assert (k.max_length, k.batch_size, k.precision, k.device, k.head) == (128, 1, "fp32", "cpu", QA)
    assert k.target.startswith("cpu:") and k.runtime.startswith("onnxruntime")
    # Dropout and the initialiser range change no cost.
    same = key(bert(hidden_dropout_prob=0.3, initializer_range=0.5))
    assert same == k and same.digest == k.digest
    # The position table, token types and labels change the parameters and the file size: other keys.
    for other in ({"max_position_embeddings": 64}, {"type_vocab_size": 1}, {"num_labels": 3}):
        assert key(bert(**other)).digest != k.digest, other
    # A config.json read as a dict keys the same (save_pretrained leaves default labels out of it).
    assert key(bert().to_dict()) == k
    saved = tmp_path / "saved"
    bert().save_pretrained(saved)
    assert key(json.loads((saved / "config.json").read_text())) == k
    assert "bert L2 H32 A2 I64 @128 fp32 cpu" == k.label


@pytest.mark.parametrize("change", [
    {"config": bert(num_hidden_layers=3)}, {"config": bert(hidden_size=64)}, {"config": bert(intermediate_size=128)},
    {"config": bert(num_attention_heads=4)}, {"config": bert(vocab_size=1000)}, {"max_length": 384},
    {"lc": LatencyConfig(device="cuda")}, {"lc": LatencyConfig(threads=1)}, {"lc": LatencyConfig(batch_size=8)},
    {"precision": "int8"},
])
def test_key_changes_with_what_the_latency_depends_on(change):
    assert key(**change).digest != key().digest


def test_other_families_and_refusals():
    d = arch_key(DistilBertConfig(dim=64, n_layers=3, n_heads=2, hidden_dim=128), 64,
                         task="DistilBertForQuestionAnswering")
    assert (d.model_type, d.layers, d.hidden, d.heads, d.intermediate) == ("distilbert", 3, 64, 2, 128)
    with pytest.raises(LatencyError, match="heads"):
        arch_key({"model_type": "mystery", "num_hidden_layers": 2, "hidden_size": 8, "intermediate_size": 8,
                          "vocab_size": 10}, 64, task=QA)
    with pytest.raises(LatencyError, match="no model class"):
        arch_key(bert(), 64)  # a config without architectures, and no task given
    assert arch_key(bert(architectures=[QA]), 64).head == QA
    with pytest.raises(LatencyError, match="precision"):
        key(precision="fp16")


def m(ms=12.5):
    return Measurement(latency_ms=ms, latency_p90_ms=ms + 1, params=1000, onnx_bytes=2**20, runs=5,
                       warmup_runs=1, measured_at=0.0)


def test_cache_round_trip_and_file_format(tmp_path):
    cache = LatencyCache(tmp_path / "lat")
    k = key()
    assert cache.get(k) is None
    cache.put(k, m())
    assert cache.get(k) == m()
    doc = json.loads(cache.path(k).read_text())
    assert doc["key"]["layers"] == 2 and doc["label"] == k.label and doc["measurement"]["latency_ms"] == 12.5
    assert [p.name for p in (tmp_path / "lat").iterdir()] == [f"{k.digest}.json"]  # no temporary file left
    assert cache.get(key(bert(num_hidden_layers=4))) is None
    assert m().metrics() == {"latency_ms": 12.5, "params": 1000.0, "size_mb": 1.0}


def test_get_or_measure_measures_once_per_architecture(tmp_path):
    cache = LatencyCache(tmp_path)
    calls = []

    def measure():
        calls.append(1)
        return m(len(calls) * 10.0)

    k2, k3 = key(), key(bert(num_hidden_layers=3))
    assert cache.get_or_measure(k2, measure) == (m(10.0), True)
    assert cache.get_or_measure(k2, measure) == (m(10.0), False)  # a second trial of the same architecture
    assert LatencyCache(tmp_path).get_or_measure(k2, measure) == (m(10.0), False)  # another process, same folder
    assert cache.get_or_measure(k3, measure) == (m(20.0), True)
    assert len(calls) == 2


def test_concurrent_callers_measure_once(tmp_path):
    cache = LatencyCache(tmp_path)
    calls, results = [], []

    def measure():
        calls.append(1)
        time.sleep(0.3)
        return m()

    threads = [threading.Thread(target=lambda: results.append(cache.get_or_measure(key(), measure))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(fresh for _, fresh in results) == [False, False, True]


def test_unreadable_or_foreign_files_are_measured_again(tmp_path):
    cache = LatencyCache(tmp_path)
    k = key()
    cache.path(k).write_text("{not json")
    assert cache.get(k) is None
    # A file holding another architecture's key under this name (never written by put) is not trusted.
    other = key(bert(num_hidden_layers=5))
    cache.put(other, m())
    cache.path(k).write_text(cache.path(other).read_text())
    assert cache.get(k) is None
    assert cache.get_or_measure(k, lambda: m(3.0)) == (m(3.0), True)
    assert cache.get(k) == m(3.0)


def test_a_failed_measurement_writes_nothing(tmp_path):
    cache = LatencyCache(tmp_path)

    def broken():
        raise RuntimeError("onnxruntime crashed")

    with pytest.raises(RuntimeError):
        cache.get_or_measure(key(), broken)
    assert cache.get(key()) is None and not list(tmp_path.glob("*.json"))
    assert cache.get_or_measure(key(), lambda: m())[1] is True  # the lock was released


def test_version_is_part_of_the_key():
    k = key()
    assert replace(k, version=k.version + 1).digest != k.digest
    assert isinstance(k, ArchKey)


def test_student_config_from_teacher_layers_or_checkpoint(tiny_models):
    c = latency.student_config("unused", [0, 2], str(tiny_models["bert"]))
    assert c.num_hidden_layers == 2 and c.hidden_size == 32
    assert latency.student_config(str(tiny_models["distilbert"])).n_layers == 2
    with pytest.raises(LatencyError, match="layers 0..3"):
        latency.student_config("unused", [0, 9], str(tiny_models["bert"]))
    with pytest.raises(LatencyError, match="needs the model"):
        latency.student_config("unused", [0, 1], None)


def test_measure_architecture_for_real_then_from_the_cache(tmp_path, tiny_models):
    pytest.importorskip("onnxruntime")
    config = AutoConfig.from_pretrained(tiny_models["bert"])
    lc = LatencyConfig(runs=5, warmup_runs=1, threads=1)
    cache = LatencyCache(tmp_path)
    k, first, fresh = latency.measure_architecture(config, QA, 32, lc, cache)
    assert fresh and first.latency_ms > 0 and first.latency_p90_ms >= first.latency_ms
    from transformers import BertForQuestionAnswering

    assert first.params == sum(p.numel() for p in BertForQuestionAnswering(config).parameters())
    assert first.onnx_bytes > first.params * 4 * 0.9  # fp32 weights inline
    k2, again, fresh2 = latency.measure_architecture(config, QA, 32, lc, cache)
    assert (k2, again, fresh2) == (k, first, False)


def test_the_served_class_is_the_one_the_auto_class_builds():
    # Built on the meta device through the auto class's public from_config: no weights allocated.
    assert architectures.concrete_class("AutoModelForQuestionAnswering", bert()) == QA
    distil = DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    assert architectures.concrete_class("AutoModelForSequenceClassification", distil) == \
        "DistilBertForSequenceClassification"
