"""A real two-node Ray cluster on one machine, for the multi-node tests: a head (`ray start --head`)
and a second node (`ray start --address`), each a `ray start --block` process in its own process
group with its own custom resources and its own extra environment (what that node's raylet and
workers see, e.g. its node-local cache). Stopped by the pids it started, never by `ray stop`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
# One trial per node: every trial worker asks for a "trial_slot", and each node has one.
HEAD_RESOURCES = '{"node_a": 1, "trial_slot": 1}'
WORKER_RESOURCES = '{"node_b": 1, "trial_slot": 1}'


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
                                          env={**env, **(node_env or {})}, stdout=log,
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
