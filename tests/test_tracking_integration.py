"""MLflow end to end: a real `mlflow server` on 127.0.0.1, a tiny search through the real CLI, and
everything read back through MlflowClient; plus fail-fast on an unreachable server."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests
import yaml

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - the server writes to it until the fixture ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art"),
         "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{uri}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group this test started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _cli(args, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env, capture_output=True, check=False,
                          text=True, timeout=timeout)


def _config(tmp_path, tiny_models, name):
    raw = {
        "data": {"synthetic": True, "synthetic_train_size": 200, "synthetic_eval_size": 40,
                 "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"])},
        "optim": {"num_epochs": 1, "batch_size": 16, "eval_every_steps": 4, "warmup_ratio": 0.0},
        "search": {"name": name, "storage_path": str(tmp_path / "results"), "num_samples": 2,
                   "grace_period": 1, "reduction_factor": 2, "seed": 3,
                   # One trial that learns (F1 ~17 at round 1) and one that cannot (~6): ASHA stops it.
                   "points_to_evaluate": [{"optim.learning_rate": 3e-3}, {"optim.learning_rate": 1e-8}]},
        "tracking": {"experiment_name": name, "registered_model_name": f"{name}-student"},
        "space": {"optim.learning_rate": {"type": "choice", "values": [3e-3, 1e-8]}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_search_is_recorded_in_a_real_mlflow_server(tmp_path, tiny_models, mlflow_server):
    cfg = _config(tmp_path, tiny_models, "tracked")
    out = _cli(["search", "--config", str(cfg), "--tracking-uri", mlflow_server], tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads((tmp_path / "results" / "tracked" / "summary.json").read_text())
    client = mlflow.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("raykd.kind") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.num_samples"] == "2"
    assert parent.data.metrics["best_eval_f1"] == pytest.approx(summary["best"]["eval_f1"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/eval_f1_by_round.png" in artifacts and "plots/optuna_history.png" in artifacts
    assert any(a.path.startswith("config/") for a in client.list_artifacts(parent.info.run_id, "config"))
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and sum(bool(r["stopped_early"]) for r in summary["trials"]) == 1
    by_trial = {r.data.tags["raykd.trial_id"]: r for r in children}
    for row in summary["trials"]:
        child = by_trial[row["trial_id"]]
        assert float(child.data.params["optim.learning_rate"]) == pytest.approx(row["optim.learning_rate"])
        history = client.get_metric_history(child.info.run_id, "eval_f1")
        assert len(history) == row["rounds"] and [m.step for m in history] == list(range(1, row["rounds"] + 1))
        # Early stopping is the search working: FINISHED, tagged; the run is named by what it tried.
        assert child.info.status == "FINISHED"
        assert ("stopped_early" in child.data.tags) == bool(row["stopped_early"])
        if row["stopped_early"]:
            assert "ASHA" in child.data.tags["raykd.end"]
        lr = "3e-3" if row["optim.learning_rate"] == pytest.approx(3e-3) else "1e-8"
        assert child.info.run_name.startswith("trial ") and child.info.run_name.endswith(f" · lr {lr}")
    # the best student: registered, tagged, loadable, and it answers from the context
    versions = client.search_model_versions("name='tracked-student'")
    assert len(versions) == 1 and versions[0].tags["study"] == "tracked"
    assert versions[0].tags["teacher"] == str(tiny_models["bert"])
    for key in ("student_parameters", "student_size_mb", "student_latency_ms", "student_eval_f1"):
        assert key in parent.data.metrics
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/tracked-student/{versions[0].version}")
    import pandas as pd

    context = "Alice Novak was born in Lisbon. Alice Novak works as a chemist. " * 30  # long: several windows
    pred = model.predict(pd.DataFrame({"question": ["Where was Alice Novak born?"], "context": [context]}))
    row = pred.iloc[0]
    assert row["answer"] and context[int(row["start"]):int(row["end"])] == row["answer"]


def test_unreachable_tracking_server_fails_fast_and_starts_no_trial(tmp_path, tiny_models):
    cfg = _config(tmp_path, tiny_models, "unreachable")
    t0 = time.time()
    out = _cli(["search", "--config", str(cfg), "--tracking-uri", f"http://127.0.0.1:{_free_port()}"], tmp_path,
               timeout=120)
    assert out.returncode == 2
    assert "unreachable" in out.stderr and "Traceback" not in out.stderr
    assert time.time() - t0 < 60
    assert not (tmp_path / "results").exists()
