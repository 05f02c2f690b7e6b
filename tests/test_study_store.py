"""The study's journey without a shared filesystem, on local folders standing in for the bucket and
for each node's cache: publish once, fetch once per node, concurrent fetchers share one download
and never see a partial folder."""

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from raykd import storage, tasks
from raykd.config import DataConfig, RaykdConfig
from raykd.study import store as study_store
from raykd.study.cache import prepare_features, prepare_teacher_logits


def _bucket(tmp_path, *parts):
    """A ``file://`` URI: goes through the same remote code path as ``s3://``."""
    (tmp_path / "bucket").mkdir(exist_ok=True)
    return storage.join((tmp_path / "bucket").as_uri(), *parts)


@pytest.fixture()
def prepared(tmp_path, tiny_models):
    cfg = DataConfig(synthetic=True, synthetic_train_size=24, synthetic_eval_size=8, max_length=64, doc_stride=24)
    teacher = str(tiny_models["bert"])
    prep, _ = prepare_features(tasks.get("question_answering"), cfg, teacher, tmp_path / "driver")
    prep, _ = prepare_teacher_logits(prep, teacher)
    return prep


def test_place_cache_dir_local_storage_and_cloud(tmp_path, monkeypatch):
    monkeypatch.setenv(study_store.NODE_CACHE_ENV, str(tmp_path / "node"))
    at = storage.ExperimentPaths.at
    assert study_store.place(at("s3://b/x", "s", str(tmp_path / "mnt"))) == study_store.Place(tmp_path / "mnt")
    assert study_store.place(at(str(tmp_path / "res"), "s")) == study_store.Place(tmp_path / "res" / "cache")
    cloud = study_store.place(at("s3://b/x", "s"))  # no ValueError any more: nothing shared is needed
    assert cloud == study_store.Place(tmp_path / "node", "s3://b/x/cache")
    assert cloud.shared(str(tmp_path / "node" / "prepared" / "abc")) == "s3://b/x/cache/prepared/abc"
    assert cloud.shared("bert-base-uncased") == "bert-base-uncased"
    assert cloud.shared("/elsewhere/model") == "/elsewhere/model"


def test_experiment_paths_of_a_local_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = RaykdConfig().replace(**{"search.storage_path": "res", "search.name": "exp"})
    p = storage.ExperimentPaths.of(cfg)
    root = str(tmp_path / "res")  # resolved, so that every process (and Ray's workers) agrees
    assert (p.root, p.name, p.remote) == (root, "exp", False)
    assert p.experiment == f"{root}/exp"
    assert (p.runs, p.summary) == (f"{root}/exp/train_runs", f"{root}/exp/summary.json")
    assert p.optuna_db == f"{root}/exp/optuna.db" and p.logs == tmp_path / "res" / "exp" / "logs"
    assert p.cache == f"{root}/cache"
    single = storage.ExperimentPaths.of(cfg, "finetune")
    assert single.experiment == f"{root}/exp-finetune" and single.logs == tmp_path / "res" / "exp-finetune" / "logs"
    assert single.cache == p.cache  # one cache per storage root, shared by searches and runs
    mounted = storage.ExperimentPaths.of(cfg.replace(**{"data.cache_dir": "~/mnt"}))
    assert mounted.cache == str(Path("~/mnt").expanduser().resolve())
    assert not (tmp_path / "res").exists()  # pure paths: nothing is created


def test_experiment_paths_of_a_cloud_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = storage.ExperimentPaths.of(RaykdConfig().replace(**{"search.storage_path": "s3://b/x/", "search.name": "e"}))
    assert p.remote and p.root == "s3://b/x/" and p.experiment == "s3://b/x/e"
    assert (p.runs, p.summary, p.cache) == ("s3://b/x/e/train_runs", "s3://b/x/e/summary.json", "s3://b/x/cache")
    # Optuna keeps its study in memory and the console logs here: nothing local to write beside it.
    assert p.optuna_db is None and p.logs == tmp_path / "raykd_logs" / "e" / "logs"
    with pytest.raises(AttributeError):
        p.name = "other"  # frozen: a value, like the config it comes from


def test_publish_once_then_fetch_once_per_node(tmp_path, prepared, monkeypatch):
    remote = _bucket(tmp_path, "cache", "prepared", prepared.root.name)
    assert study_store.publish_prepared(prepared.root, remote) == ["train", "eval", "examples", prepared.teacher_file]
    assert study_store.publish_prepared(prepared.root, remote) == []  # uploaded once
    published = json.loads(storage.read_text(storage.join(remote, "manifest.json")))
    assert published["teachers"] and published["complete"]

    monkeypatch.setenv(study_store.NODE_CACHE_ENV, str(tmp_path / "node_b"))
    local = study_store.local_prepared(remote, prepared.teacher_file)
    assert local == tmp_path / "node_b" / "prepared" / prepared.root.name
    for name in ("train", "eval", "examples", prepared.teacher_file, "manifest.json"):
        assert (local / name).exists(), name
    assert (local / prepared.teacher_file).read_bytes() == (prepared.root / prepared.teacher_file).read_bytes()
    assert not [p for p in local.parent.iterdir() if ".tmp" in p.name]
    calls = []
    monkeypatch.setattr(storage, "download", lambda *a: calls.append(a))
    assert study_store.local_prepared(remote, prepared.teacher_file) == local and calls == []  # reused


def test_local_locations_are_used_in_place(tmp_path):
    assert study_store.local_prepared(str(tmp_path / "p")) == tmp_path / "p"
    assert study_store.local_model("bert-base-uncased") == "bert-base-uncased"
    assert study_store.local_model(None) is None


def test_pull_takes_what_another_driver_published(tmp_path, prepared, monkeypatch):
    remote = _bucket(tmp_path, "prepared", prepared.root.name)
    study_store.publish_prepared(prepared.root, remote)
    fresh = tmp_path / "other_driver" / "prepared" / prepared.root.name
    assert study_store.pull_prepared(remote, fresh)
    manifest = json.loads((fresh / "manifest.json").read_text())
    assert manifest["complete"] and set(manifest["teachers"]) == set(prepared.manifest()["teachers"])
    assert (fresh / prepared.teacher_file).exists()
    assert not study_store.pull_prepared(_bucket(tmp_path, "nothing"), tmp_path / "x")


def test_model_folder_published_with_marker_and_fetched(tmp_path, tiny_models, monkeypatch):
    remote = _bucket(tmp_path, "teachers", "k1")
    assert study_store.publish_model(Path(tiny_models["bert"]), remote)
    assert not study_store.publish_model(Path(tiny_models["bert"]), remote)
    monkeypatch.setenv(study_store.NODE_CACHE_ENV, str(tmp_path / "node"))
    local = study_store.local_model(remote)
    assert local == str(tmp_path / "node" / "teachers" / "k1")
    assert (Path(local) / "config.json").exists()
    target = tmp_path / "driver2" / "k1"
    assert study_store.pull_model(remote, target) and (target / "config.json").exists()


def _fetch_in_child(remote, teacher_file, node, log):
    os.environ[study_store.NODE_CACHE_ENV] = node
    real = storage.download

    def counted(location, local):
        with open(log, "a") as f:
            f.write(location + "\n")
        real(location, local)

    storage.download = counted
    study_store.local_prepared(remote, teacher_file)


def test_concurrent_fetchers_on_a_node_download_once(tmp_path, prepared):
    remote = _bucket(tmp_path, "prepared", prepared.root.name)
    study_store.publish_prepared(prepared.root, remote)
    log = tmp_path / "downloads.log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_fetch_in_child, args=(remote, prepared.teacher_file, str(tmp_path / "node"), log))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    downloads = log.read_text().splitlines()
    assert len(downloads) == len(set(downloads)) == 5  # 3 datasets, manifest, logits: each once
    local = tmp_path / "node" / "prepared" / prepared.root.name
    assert not [p for p in local.iterdir() if ".tmp" in p.name]


def test_storage_uri_helpers():
    assert storage.as_uri("bucket/a/checkpoint_1", "s3://bucket/a") == "s3://bucket/a/checkpoint_1"
    assert storage.as_uri("/tmp/x", "/tmp") == "/tmp/x"
    assert storage.as_uri(None, "s3://b") is None
    assert storage.join("s3://b/x/", "cache", "prepared/") == "s3://b/x/cache/prepared"
