"""A real two-node Ray cluster on one machine, for the multi-node tests: a head (`ray start --head`)
and a second node (`ray start --address`), each a `ray start --block` process in its own process
group with its own custom resources and its own extra environment (what that node's raylet and
workers see, e.g. its node-local cache). Stopped by the pids it started, never by `ray stop`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# The head node id Ray's fake multi-node provider expects under the v2 autoscaler (a test
# utility of Ray's, imported the way ray.cluster_utils.AutoscalingCluster does).
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

RAY = str(Path(sys.executable).parent / "ray")
# One trial per node: every trial worker asks for a "trial_slot", and each node has one.
HEAD_RESOURCES = '{"node_a": 1, "trial_slot": 1}'
WORKER_RESOURCES = '{"node_b": 1, "trial_slot": 1}'


# Ray 2.60's `ray start --block` drains its node for up to 30 s on SIGTERM before it stops its
# processes (for Serve's proxies); the head's drain then waits out the whole 30 s on its own GCS,
# which the same SIGTERM of its process group has stopped. These nodes serve nothing: no drain.
NO_DRAIN = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the nodes and of a driver joining them. Ray 2.60 enables token auth for
    clusters started with `ray start`; joining one by address needs RAY_AUTH_MODE=token (the token
    is in ~/.ray/auth_token), as a user's shell would."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return {**env, "RAY_AUTH_MODE": "token", **(extra or {})}


@contextlib.contextmanager
def two_node_cluster(logs: Path, env: dict[str, str], head_env: dict[str, str] | None = None,
                     worker_env: dict[str, str] | None = None, cpus_per_node: int = 2) -> Iterator[str]:
    """Yields the head's address once both nodes are alive."""
    port = free_port()
    temp = Path("/tmp") / f"rkd{port}"  # short: unix socket paths are limited to 107 bytes
    procs: list[subprocess.Popen] = []

    def start(args, name, node_env):
        with open(logs / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args],
                                          env={**env, **NO_DRAIN, **(node_env or {})}, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))

    logs.mkdir(parents=True, exist_ok=True)
    try:
        start(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={cpus_per_node}",
               f"--resources={HEAD_RESOURCES}", f"--temp-dir={temp}", "--include-dashboard=true",
               f"--dashboard-port={free_port()}"], "head", head_env)
        address = f"127.0.0.1:{port}"
        _wait_nodes(address, 1, env, logs)
        start([f"--address={address}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}",
               f"--resources={WORKER_RESOURCES}"], "worker", worker_env)
        _wait_nodes(address, 2, env, logs)
        yield address
    finally:
        # By the pids started here, each stopping the Ray processes it started: the worker node
        # first, while the head it deregisters from is still up.
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _wait_nodes(address: str, n: int, env: dict[str, str], logs: Path, timeout: float = 120) -> None:
    code = ("import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))")
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        out = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True, text=True,
                             check=False)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        last = out.stderr[-1500:]
        time.sleep(2)
    tails = "\n".join(p.read_text()[-1500:] for p in logs.glob("*.log"))
    raise RuntimeError(f"cluster did not reach {n} nodes: {last}\n{tails}")


def nodes_of_results(result_texts: list[str]) -> set[str]:
    """The node ids the trials' rank-0 workers reported from (result.json lines)."""
    import json

    return {json.loads(line)["node_id"] for text in result_texts for line in text.splitlines() if line.strip()}


def fake_autoscaling_config(port: int, head_cpus: int, worker_types: dict[str, dict],
                            autoscaler_v2: bool = False) -> dict:
    """A whole config for Ray's fake multi-node provider (the wheel lacks the example.yaml that
    ray.cluster_utils.AutoscalingCluster reads): a head of ``head_cpus`` CPUs that never scales,
    and ``worker_types`` ({name: {"resources": ..., "min_workers": ..., "max_workers": ...}}). The
    fake nodes join the head at ``provider.gcs_address`` (otherwise at port 6379)."""
    lists = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
             "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
             "rsync_filter")
    provider = {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{port}", "use_node_id_as_ip": True,
                "disable_node_updaters": True, "disable_launch_config_check": True}
    if autoscaler_v2:
        # What Ray's AutoscalingCluster sets for its fake provider under the v2 autoscaler. The v2
        # monitor reads the provider type's defaults file, which the wheel lacks for
        # fake_multinode; as an external provider (the same class) it needs none.
        provider.update({"type": "external", "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID,
                         "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"})
    return {
        "cluster_name": f"fake{port}",
        "max_workers": sum(t["max_workers"] for t in worker_types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,  # no node is taken away while a test runs
        "provider": provider,
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            **{name: {"node_config": {}, **t} for name, t in worker_types.items()},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{k: [] for k in lists},
    }


@contextlib.contextmanager
def fake_autoscaling_cluster(logs: Path, env: dict[str, str], head_cpus: int,
                             worker_types: dict[str, dict], autoscaler_v2: bool = False) -> Iterator[str]:
    """A head node alone (`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`, as
    ray.cluster_utils.AutoscalingCluster starts it) whose autoscaler adds fake worker nodes (Ray
    processes on this machine) for queued work. Yields its address once the head is up; stopped
    by the process group started here. ``autoscaler_v2``: the autoscaler ``ray up`` starts since
    Ray 2.50 (the v1 one otherwise, as ``RAY_UP_enable_autoscaler_v2=0 ray up`` does)."""
    import json

    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    config = logs / "autoscaling.yaml"
    config.write_text(json.dumps(fake_autoscaling_config(port, head_cpus, worker_types, autoscaler_v2)))  # JSON is YAML
    temp = Path("/tmp") / f"rkf{port}"  # short: unix socket paths are limited to 107 bytes
    head_env = {**env, **NO_DRAIN, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    if autoscaler_v2:
        head_env.update({"RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
                         "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID})
    with open(logs / "head.log", "w") as log:
        proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--head", "--node-ip-address=127.0.0.1",
                                 f"--port={port}", f"--num-cpus={head_cpus}", f"--temp-dir={temp}",
                                 f"--autoscaling-config={config}", "--include-dashboard=true",
                                 f"--dashboard-port={free_port()}"],
                                env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        _wait_nodes(address, 1, env, logs)
        yield address
    finally:
        # Every process of the cluster (the head's and the fake nodes') is in the group started
        # here; what is still up 10 s after SIGTERM is killed.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def cluster_state(address: str, env: dict[str, str], code: str) -> object:
    """What ``code`` (run in a fresh process joined to the cluster, with ``ray`` imported) prints
    as JSON on its last line."""
    import json

    script = f"import ray,sys,json\nray.init(address=sys.argv[1], log_to_driver=False)\n{code}"
    out = subprocess.run([sys.executable, "-c", script, address], env=env, capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
