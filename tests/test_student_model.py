"""The student as logged to MLflow (no Ray): its pip requirements are raykd's own, and logging,
registering and loading it print none of MLflow's warnings or notices."""

import logging

import pandas as pd
import pytest
from packaging.requirements import Requirement

from raykd import tracking
from raykd.config import RaykdConfig

pytestmark = pytest.mark.integration


def test_logged_requirements_are_raykds_and_loading_warns_nothing(tmp_path, tiny_models, caplog, capfd):
    import mlflow

    cfg = RaykdConfig().replace(**{"tracking.experiment_name": "student-model",
                                   "data.max_length": 128, "data.doc_stride": 32})  # the tiny model has 256 positions
    tracking.connect(cfg, f"sqlite:///{tmp_path / 'mlflow.db'}")
    capfd.readouterr()
    with caplog.at_level(logging.WARNING), mlflow.start_run():
        out = tracking.log_student(str(tiny_models["bert"]), cfg, None, {"eval_f1": 1.0, "eval_exact_match": 1.0},
                                   study="s", register=True)
    assert out["registered_model"] == "raykd-student" and out["version"] == "1"
    reqs = mlflow.pyfunc.get_model_dependencies(out["model_uri"])
    with open(reqs) as f:
        logged = [line.strip() for line in f if line.strip()]
    assert logged == tracking.model_requirements()
    names = [Requirement(r).name for r in logged]
    # ray: the model's class is imported from raykd.tracking, which imports Ray's MLflow integration.
    assert {"torch", "transformers", "datasets", "mlflow", "ray"} <= set(names) and "raykd" not in names
    model = mlflow.pyfunc.load_model(f"models:/raykd-student/{out['version']}")
    ctx = "Oscar Weber was born in Oslo."
    pred = model.predict(pd.DataFrame({"question": ["Where was Oscar Weber born?"], "context": [ctx]}))
    assert set(pred.columns) == {"answer", "score", "start", "end"}
    said = capfd.readouterr()
    mlflow_warnings = [r.getMessage() for r in caplog.records
                       if r.name.startswith("mlflow") and r.levelno >= logging.WARNING]
    assert not mlflow_warnings, mlflow_warnings
    for text in ("mismatch", "Successfully registered", "Hint: Inferred schema", "CloudPickle"):
        assert text not in said.out + said.err
