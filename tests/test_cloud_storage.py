"""A search on a cluster whose nodes share no filesystem, proven without a cloud: a two-node Ray
cluster on one machine (tests/ray_cluster.py) whose storage_path is an S3 bucket on a moto server
started here on 127.0.0.1, with no data.cache_dir and each node's local cache in its own folder
(RAYKD_NODE_CACHE in the environment of that node's `ray start`). The teacher is fine-tuned by
raykd and the students are initialised from its layers, so the teacher travels too. Every process
started here is stopped by its pid."""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import ray_cluster
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.cluster]
ROOT = Path(__file__).parents[1]
BUCKET = "raykd-test"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server (moto[server] from PyPI) on 127.0.0.1, with one empty bucket."""
    port = ray_cluster.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        _fs(endpoint).create_dir(BUCKET)
        yield endpoint
    finally:
        proc.terminate()  # by its pid
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _fs(endpoint: str) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing",
                             region="us-east-1", scheme="http", allow_bucket_creation=True)


@pytest.fixture(scope="module")
def cloud_cluster(tmp_path_factory, s3_endpoint):
    """One two-node cluster for this module; each node has its own local cache folder."""
    caches = tmp_path_factory.mktemp("node-caches")
    # What a cloud node has from its instance profile; AWS_ENDPOINT_URL points pyarrow (Ray's and
    # raykd's storage layer) at the local server.
    env = ray_cluster.base_env({
        "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    })
    env.pop("RAYKD_NODE_CACHE", None)
    node_a, node_b = {"RAYKD_NODE_CACHE": str(caches / "node_a")}, {"RAYKD_NODE_CACHE": str(caches / "node_b")}
    with ray_cluster.two_node_cluster(tmp_path_factory.mktemp("cluster-logs"), env, node_a, node_b) as address:
        # The driver runs on the head node, so it shares the head's cache, as on a real cluster.
        yield address, {**env, **node_a}, caches


def _files(fs: pafs.FileSystem, root: str) -> list[str]:
    return [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
            if i.type == pafs.FileType.File]


def test_search_on_nodes_sharing_no_filesystem_with_an_s3_storage_path(tmp_path, cloud_cluster, s3_endpoint,
                                                                      tiny_models):
    """Slow: a real two-node cluster, an S3 server, a teacher fine-tuned and two Ray Train trials."""
    address, env, caches = cloud_cluster
    raw = {
        "data": {"synthetic": True, "synthetic_train_size": 120, "synthetic_eval_size": 30,
                 "max_length": 96, "doc_stride": 32},
        # No teacher given: raykd fine-tunes one, and every student starts from its layers 0 and 2,
        # so each node needs the teacher's folder as well as the features and logits.
        "models": {"teacher": None, "student": str(tiny_models["bert"]), "init_from_teacher_layers": [0, 2],
                   "teacher_finetune": {"base": str(tiny_models["bert"]), "num_epochs": 1, "batch_size": 16,
                                        "learning_rate": 3e-3}},
        "optim": {"num_epochs": 1, "batch_size": 16, "learning_rate": 3e-3},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "resources_per_worker": {"trial_slot": 1}},
        "search": {"name": "cloud", "storage_path": f"s3://{BUCKET}/runs", "num_samples": 2, "scheduler": "fifo"},
        "tracking": {"experiment_name": "cloud"},
        "space": {"distill.temperature": {"type": "uniform", "low": 1.0, "high": 4.0}},
    }
    assert "cache_dir" not in raw["data"]
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    db = tmp_path / "mlflow.db"
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "search", "--config", str(cfg), "--address", address,
                          "--tracking-uri", f"sqlite:///{db}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:]

    fs = _fs(s3_endpoint)
    exp = f"{BUCKET}/runs/cloud"
    # Summary and checkpoints in the bucket; the best checkpoint named by a URI that opens.
    with fs.open_input_stream(f"{exp}/summary.json") as f:
        summary = json.loads(f.read())
    assert [r["status"] for r in summary["trials"]] == ["COMPLETED", "COMPLETED"]
    best = summary["best"]["checkpoint_path"]
    assert best.startswith(f"s3://{exp}/train_runs/"), best
    assert fs.get_file_info(f"{best[len('s3://'):]}/model.safetensors").type == pafs.FileType.File
    results = []
    for path in _files(fs, exp):
        if path.endswith("/result.json"):
            with fs.open_input_stream(path) as f:
                results.append(f.read().decode())
    assert len(ray_cluster.nodes_of_results(results)) == 2  # trials ran on both nodes

    # The study and the teacher were published once, under <storage_path>/cache.
    cache = _files(fs, f"{BUCKET}/runs/cache")
    # (The teacher's fine-tuning and the distillation tokenize alike here: one features folder.)
    assert len([p for p in cache if p.endswith("/manifest.json")]) == 1
    logits = [p for p in cache if p.rsplit("/", 1)[-1].startswith("teacher-") and p.endswith(".npy")]
    assert len(logits) == 1
    assert len([p for p in cache if p.endswith("/_raykd_complete") and "/teachers/" in p]) == 1

    # Each node fetched what its trials read into its own cache, once, with no partial leftovers.
    study_fp = logits[0].split("/")[-2]
    teacher_key = next(p for p in cache if "/teachers/" in p).split("/teachers/")[1].split("/")[0]
    for node in ("node_a", "node_b"):
        root = caches / node
        assert (root / "prepared" / study_fp / logits[0].rsplit("/", 1)[-1]).is_file(), node
        assert (root / "prepared" / study_fp / "train").is_dir(), node
        assert (root / "teachers" / teacher_key / "config.json").is_file(), node
        assert not [p for p in root.rglob("*") if ".tmp" in p.name], node
    assert not (tmp_path / "raykd_results").exists()  # nothing on a local disk stands in for the bucket

    # The best student is registered.
    from mlflow.tracking import MlflowClient

    versions = MlflowClient(tracking_uri=f"sqlite:///{db}").search_model_versions("name='raykd-student'")
    assert len(versions) == 1 and versions[0].tags.get("study") == "cloud"
