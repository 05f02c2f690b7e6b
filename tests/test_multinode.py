"""Multi-node on one machine with a shared folder as storage: a real two-node Ray cluster
(tests/ray_cluster.py), a tiny search joins it with --address, trials land on both nodes, and the
cluster is stopped by the pids it started. (tests/test_cloud_storage.py runs the same cluster with a
bucket instead of a shared folder.) Also: which cluster a driver joins when it is given no
address, or one that is gone."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray_cluster
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Ray cluster for this module."""
    env = ray_cluster.base_env()
    with ray_cluster.two_node_cluster(tmp_path_factory.mktemp("cluster-logs"), env) as address:
        yield address, env


@pytest.mark.cluster
def test_search_joins_a_two_node_cluster_and_uses_both_nodes(tmp_path, cluster, tiny_models):
    """Slow: a real two-node cluster (started once for the module) and two Ray Train trials."""
    address, env = cluster
    raw = {
        "data": {"synthetic": True, "synthetic_train_size": 120, "synthetic_eval_size": 30,
                 "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"])},
        "optim": {"num_epochs": 1, "batch_size": 16, "learning_rate": 3e-3},
        # One trial per node: every worker needs the per-node "trial_slot" resource.
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "resources_per_worker": {"trial_slot": 1}},
        # Two trials, queued at once: each needs a node's one trial_slot, so they run on both nodes.
        "search": {"name": "multinode", "storage_path": str(tmp_path / "shared"), "num_samples": 2, "scheduler": "fifo"},
        "tracking": {"enabled": False},
        "space": {"distill.temperature": {"type": "uniform", "low": 1.0, "high": 4.0}},
    }
    cfg = tmp_path / "multinode.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "search", "--config", str(cfg), "--address", address],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    exp = tmp_path / "shared" / "multinode"
    nodes = ray_cluster.nodes_of_results([f.read_text() for f in exp.glob("*/result.json")])
    assert len(nodes) == 2, nodes  # trials ran on both nodes
    summary = json.loads((exp / "summary.json").read_text())
    assert len(summary["trials"]) == 2 and summary["best"]["checkpoint_path"]


def _stale_record(ray_tmp: Path) -> str:
    """What `ray start` leaves in Ray's temp folder, naming a cluster that is gone."""
    dead = f"127.0.0.1:{ray_cluster.free_port()}"
    (ray_tmp / "ray").mkdir(parents=True)
    (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
    return dead


def test_no_address_starts_a_local_ray_whatever_ray_start_last_recorded():
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk"))  # short: Ray's socket paths have a length limit
    dead = _stale_record(ray_tmp)
    env = {**ray_cluster.base_env(), "RAY_TMPDIR": str(ray_tmp)}
    code = ("import ray; from raykd.training import trainer; trainer.init_ray(); "
            "print(ray.get_runtime_context().gcs_address, len(ray.nodes()))")
    # Its own process group: the local Ray it starts is stopped with it.
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)  # joining the dead cluster would wait far longer
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    address, nodes = out.split()[-2:]
    assert address.rpartition(":")[2] != dead.rpartition(":")[2] and nodes == "1"

