"""Multi-node on one machine: a real Ray head (`ray start --head`) and a second node
(`ray start --address`), each with its own custom resource; a tiny search joins the cluster with
--address, trials land on both nodes, and the test stops both nodes by the pids it started. Also
validates cluster.yaml against Ray's own cluster-config schema."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def test_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(__import__("ray.autoscaler", fromlist=["x"]).__file__).parent / "ray-schema.json")
                        .read_text())
    jsonschema.validate(raw, schema)
    validate_config(prepare_config(raw))
    workers = raw["available_node_types"]["gpu_worker"]
    assert workers["max_workers"] >= workers["min_workers"] >= 0
    assert any("pip install" in c and "raykd" in c for c in raw["setup_commands"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def two_node_cluster(tmp_path):
    """Head and worker node as `ray start --block` processes in their own process groups; each one
    stops the Ray processes it started when it is terminated."""
    port = _free_port()
    temp = Path("/tmp") / f"rkd{port}"  # short: unix socket paths are limited to 107 bytes
    # Ray 2.60 enables token auth for clusters started with `ray start`; joining one by address
    # needs RAY_AUTH_MODE=token (the token is in ~/.ray/auth_token), as a user's shell would.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token"}
    procs = []

    def start(args, name):
        log = open(tmp_path / f"{name}.log", "w")
        p = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        start(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", '--resources={"node_a": 1, "trial_slot": 1}',
               f"--temp-dir={temp}", "--include-dashboard=true", f"--dashboard-port={_free_port()}"], "head")
        address = f"127.0.0.1:{port}"
        _wait_nodes(address, 1, env, tmp_path)
        start([f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=2", '--resources={"node_b": 1, "trial_slot": 1}'], "worker")
        _wait_nodes(address, 2, env, tmp_path)
        yield address, env
    finally:
        for p in reversed(procs):  # by the pids this fixture started
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _wait_nodes(address, n, env, tmp_path, timeout=120):
    code = ("import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))")
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        out = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        last = out.stderr[-1500:]
        time.sleep(2)
    logs = "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("*.log"))
    pytest.fail(f"cluster did not reach {n} nodes: {last}\n{logs}")


@pytest.mark.integration
def test_search_joins_a_two_node_cluster_and_uses_both_nodes(tmp_path, two_node_cluster, tiny_models):
    address, env = two_node_cluster
    raw = {
        "data": {"synthetic": True, "synthetic_train_size": 120, "synthetic_eval_size": 30,
                 "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"])},
        "optim": {"num_epochs": 1, "batch_size": 16, "learning_rate": 3e-3},
        # One trial per node: every worker needs the per-node "trial_slot" resource.
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "resources_per_worker": {"trial_slot": 1}},
        "search": {"name": "multinode", "storage_path": str(tmp_path / "shared"), "num_samples": 4, "scheduler": "fifo"},
        "tracking": {"enabled": False},
        "space": {"distill.temperature": {"type": "uniform", "low": 1.0, "high": 4.0}},
    }
    cfg = tmp_path / "multinode.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "search", "--config", str(cfg), "--address", address],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    exp = tmp_path / "shared" / "multinode"
    nodes = set()
    for f in exp.glob("*/result.json"):
        nodes |= {json.loads(line)["node_id"] for line in f.read_text().splitlines() if line.strip()}
    assert len(nodes) == 2, nodes  # trials ran on both nodes
    summary = json.loads((exp / "summary.json").read_text())
    assert len(summary["trials"]) == 4 and summary["best"]["checkpoint_path"]
