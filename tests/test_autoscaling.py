"""A search on an autoscaling cluster that starts cold, as `ray up cluster.yaml` leaves it: a head
that cannot run a trial and no worker node (`min_workers: 0`), without a cloud: Ray's fake
multi-node provider adds worker nodes (Ray processes on this machine) for queued work. The real
CLI joins it with --address; the teacher-logit pass and both trials run on nodes the autoscaler
added, and the best student is registered in MLflow. Slow (about 70 s on 2 cores): a Ray
head, two autoscaled nodes and two Ray Train trials, each with its own worker processes."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray_cluster
import yaml

from raykd.training import trainer as train

ROOT = Path(__file__).parents[1]
# Trial workers need a resource only worker nodes have: the head (1 CPU, for the trial drivers)
# can run no trial, so every trial waits for a node the autoscaler adds.
WORKER = {"trial_node": {"resources": {"CPU": 2, "raykd_worker": 1}, "min_workers": 0, "max_workers": 2}}
NODES = "print(json.dumps([[n['NodeID'], 'node:__internal_head__' in n['Resources']] for n in ray.nodes() if n['Alive']]))"
LOGIT_TASKS = ("from ray.util.state import list_tasks\n"
               "print(json.dumps([[t.node_id, str(t.state)] for t in list_tasks(address=sys.argv[1], "
               "filters=[('name', '=', '_teacher_logits_task')], raise_on_missing_output=False)]))")


def test_an_autoscaling_config_is_sized_at_its_largest():
    config = ray_cluster.fake_autoscaling_config(6379, 1, WORKER)
    types = train.node_types(config)
    assert types == [({"CPU": 2.0, "raykd_worker": 1.0}, 2)]
    assert train.at_largest({"CPU": 1.0}, types) == {"CPU": 5.0, "raykd_worker": 2.0}
    # The cluster's own max_workers caps a type's.
    assert train.node_types({**config, "max_workers": 1})[0][1] == 1
    # A type whose resources the cloud provider fills in (AWS: `resources: {}`) has no known size.
    unsized = {**config, "available_node_types": {
        name: {**kind, "resources": {}} for name, kind in config["available_node_types"].items()}}
    assert train.node_types(unsized) is None
    # The shipped cluster.yaml leaves its workers' size to `ray up`, which fills it in on the head.
    assert train.node_types(yaml.safe_load((ROOT / "cluster.yaml").read_text())) is None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = ray_cluster.base_env()
    # The v2 autoscaler, as `ray up` starts it since Ray 2.50.
    with ray_cluster.fake_autoscaling_cluster(tmp_path_factory.mktemp("autoscaling"), env, 1, WORKER,
                                              autoscaler_v2=True) as address:
        yield address, env


def _config(tmp_path: Path, tiny_models) -> Path:
    raw = {
        "data": {"synthetic": True, "synthetic_train_size": 60, "synthetic_eval_size": 20,
                 "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"])},
        "optim": {"num_epochs": 1, "batch_size": 16, "learning_rate": 3e-3},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "resources_per_worker": {"raykd_worker": 1}},
        "search": {"name": "autoscaled", "storage_path": str(tmp_path / "shared"), "num_samples": 2,
                   "scheduler": "fifo", "rounds": 1},
        "tracking": {"experiment_name": "autoscaled", "registered_model_name": "autoscaled-student"},
        "space": {"distill.temperature": {"type": "uniform", "low": 1.0, "high": 4.0}},
    }
    path = tmp_path / "autoscaled.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.integration
@pytest.mark.cluster
def test_search_on_a_cold_autoscaling_cluster_runs_on_the_nodes_it_adds(tmp_path, cluster, tiny_models):
    address, env = cluster
    before = ray_cluster.cluster_state(address, env, NODES)
    assert [head for _, head in before] == [True], before  # the head alone: no worker node yet
    head = before[0][0]
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t0 = time.time()
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "search", "--config", str(_config(tmp_path, tiny_models)),
                          "--address", address, "--tracking-uri", tracking],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-4000:]
    print(f"search took {time.time() - t0:.0f} s")
    # Sized from the autoscaler's config read on the head, not from the nodes up at the start.
    assert "cannot be read here" not in out.stdout, out.stdout[-3000:]
    exp = tmp_path / "shared" / "autoscaled"
    summary = json.loads((exp / "summary.json").read_text())
    assert len(summary["trials"]) == 2 and summary["best"]["checkpoint_path"]
    # Both trials were queued at once (the cluster at its largest holds two; each needs a node of
    # its own), and ran on nodes the autoscaler added.
    trial_nodes = ray_cluster.nodes_of_results([f.read_text() for f in exp.glob("*/result.json")])
    after = {node for node, _ in ray_cluster.cluster_state(address, env, NODES)}
    assert len(trial_nodes) == 2 and head not in trial_nodes and trial_nodes <= after, (head, trial_nodes, after)
    # The teacher-logit pass ran once, as a Ray task on an added node (the head lacks the trial
    # workers' resource it asks for).
    tasks = ray_cluster.cluster_state(address, env, LOGIT_TASKS)
    assert len(tasks) == 1 and tasks[0][0] != head and "FINISHED" in tasks[0][1], tasks
    # The best student is registered.
    import mlflow

    versions = mlflow.MlflowClient(tracking).search_model_versions("name='autoscaled-student'")
    assert len(versions) == 1 and versions[0].tags["study"] == "autoscaled"


@pytest.mark.integration
@pytest.mark.cluster
def test_a_driver_without_the_clusters_token_is_refused_in_one_line(tmp_path, cluster, tiny_models):
    address, env = cluster
    # Ray retries a refused connection for about 20 s before it gives up; a shorter budget here.
    env = {**{k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}, "RAY_gcs_server_port_wait_time_s": "2"}
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "search", "--config", str(_config(tmp_path, tiny_models)),
                          "--address", address, "--no-tracking"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    errors = [line for line in out.stderr.splitlines() if line.startswith("raykd: error: ")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert "RAY_AUTH_MODE=token" in errors[0] and address in errors[0] and "auth_token" in errors[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "shared").exists()
