"""The quickstart search as a user runs it (real CLI, default local MLflow store in the working
directory), shrunk with --set so that it fits the test budget: afterwards the registered model
exists in ./mlflow.db and loads."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.integration


def test_quickstart_registers_a_loadable_student_in_the_default_store(tmp_path):
    """Slow: raykd fine-tunes the real 6-layer MiniLM teacher, then a Ray trial trains a 3-layer student."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # One trial: what is checked here is the registration in the default store, not the choice of the
    # best (tests/test_search_integration.py checks that).
    shrink = ["data.synthetic_train_size=120", "data.synthetic_eval_size=30", "models.teacher_finetune.num_epochs=1",
              "search.num_samples=1", "optim.eval_every_steps=8", "search.n_startup_trials=1"]
    cmd = [sys.executable, str(ROOT / "cli.py"), "search", "--config", str(ROOT / "search_spaces" / "quickstart.yaml")]
    for s in shrink:
        cmd += ["--set", s]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "best trial" in out.stdout and "registered model: raykd-student version 1" in out.stdout
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "raykd_results" / "quickstart" / "summary.json").exists()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/raykd-student/1")
    ctx = "Oscar Weber was born in Oslo. Oscar Weber works as a baker."
    pred = model.predict(pd.DataFrame({"question": ["Where was Oscar Weber born?"], "context": [ctx]}))
    assert pred.iloc[0]["answer"] in ctx
