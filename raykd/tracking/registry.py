"""The student as an MLflow model: a ``mlflow.pyfunc`` model that does its task (answers
questions, labels texts: the task's predictor, :mod:`raykd.tasks`), its pip requirements, and its
registered versions (tags, the latency-budget alias). A Pareto front's students also carry their
ONNX export, which the caller makes (:mod:`raykd.serving`) and hands in as a folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from raykd import objective, storage, tasks
from raykd.config import COSTS, RaykdConfig
from raykd.training.checkpoints import NOT_MODEL_FILES

MODEL_NAME = "student"
# The registered version that is the best student within search.max_latency_ms.
BUDGET_ALIAS = "within-budget"

# Exports a checkpoint folder to an ONNX folder for the given config and returns what is logged
# beside it: ``onnx_latency_ms``, ``onnx_max_abs_diff``, ``onnx_parity_ok``.
ExportOnnx = Callable[[str, str, RaykdConfig], Mapping[str, Any]]


class StudentModel(mlflow.pyfunc.PythonModel):
    """The student as its task serves it: the task's predictor over the saved model (question
    answering: ``question`` + ``context`` -> ``answer``, ``score``, ``start``, ``end``;
    classification: ``text`` -> ``label``, ``score``). The settings file names the task."""

    def load_context(self, context) -> None:
        settings = json.loads(Path(context.artifacts["settings"]).read_text())
        self.predict_fn = tasks.get(settings["task"]).predictor(context.artifacts["model"], settings)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predict_fn(model_input)


def signature(task: tasks.Task) -> ModelSignature:
    # Declared rather than inferred from the example: inference warns that integer columns could
    # not hold missing values, and the task knows what it returns.
    def schema(cols):
        return Schema([ColSpec(c.type, c.name, required=c.required) for c in cols])

    return ModelSignature(inputs=schema(task.serving_inputs), outputs=schema(task.serving_outputs))


# What the logged model imports when it is loaded, besides raykd's own code (shipped with it).
# ray: the model class is imported through raykd.tracking, whose Tune callback imports Ray.
MODEL_PACKAGES = ("torch", "transformers", "datasets", "numpy", "pandas", "pyyaml", "mlflow", "cloudpickle", "ray")


def model_requirements() -> list[str]:
    """The logged model's pip requirements: for each package it needs, raykd's own requirement
    (e.g. ``transformers>=4.45``), so an environment where raykd is installed satisfies them and
    loading the model prints no dependency-mismatch warning; the package name alone for one raykd
    does not declare. MLflow's inference would instead pin whatever modules happened to be imported
    while it probed the model (it misses torch and transformers, and adds ``raykd==<version>``, which
    is shipped as code, not installed from an index)."""
    try:
        declared = importlib.metadata.requires("raykd") or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    by_name = {}
    for line in declared:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None:  # extras (dev, offline) are not the model's
            by_name[canonicalize_name(req.name)] = f"{req.name}{req.specifier}"
    return [by_name.get(canonicalize_name(p), p) for p in MODEL_PACKAGES]


class _NoPickleNotice(logging.Filter):
    """MLflow warns on every pyfunc logged as a Python object (pickled) rather than from a code
    file. raykd's object is a stateless ``StudentModel()`` whose code travels with it (code_paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Passing a Python object as `python_model`" not in record.getMessage()


def _register(name: str, info) -> str:
    """Register the logged model as a new version of ``name``; through the client, which (unlike
    the fluent API) does not print what it did: raykd prints the version itself."""
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = str(client.create_model_version(name, source=info.model_uri, run_id=info.run_id,
                                              model_id=info.model_id).version)
    # The link from the (just logged) model to its version, which the UI's runs table shows.
    client.set_logged_model_tags(info.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([{"name": name, "version": version}])})
    return version


def _dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def log_student(checkpoint_dir: str, cfg: RaykdConfig, teacher: str | None, best: dict[str, Any],
                study: str | None, register: bool | None = None, onnx_dir: str | None = None,
                tags: dict[str, str] | None = None, alias: str | None = None) -> dict[str, Any]:
    """Log the checkpoint as a pyfunc model in the active run (+ metrics), register it if asked.
    ``onnx_dir``: an ``export`` folder the model carries as its ``onnx`` artifact; ``tags`` go on
    the registered version, ``alias`` names it."""
    import raykd

    task = tasks.get(cfg.task)
    metric = objective.metric(cfg)
    register = cfg.tracking.register_best if register is None else register
    with tempfile.TemporaryDirectory(prefix="raykd-model-") as tmp:
        model_dir = Path(tmp) / "hf"
        model_dir.mkdir()
        for f in Path(checkpoint_dir).iterdir():
            if f.is_file() and f.name not in NOT_MODEL_FILES:  # optimizer state is not part of the model
                (model_dir / f.name).write_bytes(f.read_bytes())
        settings = Path(tmp) / "settings.json"
        settings.write_text(json.dumps({"task": task.name, **task.serving_settings(cfg)}))
        predict = task.predictor(str(model_dir), json.loads(settings.read_text()))
        example = pd.DataFrame(task.serving_example())
        example_out = predict(example)
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            predict(example)
        latency_ms = (time.perf_counter() - t0) / reps * 1000
        sig = signature(task)
        assert list(example_out.columns) == [c.name for c in sig.outputs.inputs]
        notice = _NoPickleNotice()
        logging.getLogger("mlflow.pyfunc").addFilter(notice)
        try:
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME, python_model=StudentModel(),
                artifacts={"model": str(model_dir), "settings": str(settings),
                           **({"onnx": onnx_dir} if onnx_dir else {})},
                code_paths=[str(Path(raykd.__file__).parent)],
                signature=sig, input_example=example, pip_requirements=model_requirements(),
            )
        finally:
            logging.getLogger("mlflow.pyfunc").removeFilter(notice)
        mlflow.log_metrics({
            **{f"student_{s.key}": float(best.get(s.key) or 0.0) for s in task.scores},
            "student_parameters": float(sum(p.numel() for p in predict.model.parameters())),
            "student_size_mb": _dir_size_mb(model_dir),
            "student_latency_ms": latency_ms,
        })
    out: dict[str, Any] = {"model_uri": info.model_uri}
    if register:
        client = MlflowClient()
        name = cfg.tracking.registered_model_name
        version = _register(name, info)
        if study:
            client.set_model_version_tag(name, version, "study", study)
        client.set_model_version_tag(name, version, "teacher", str(teacher))
        client.set_model_version_tag(name, version, "task", task.name)
        client.set_model_version_tag(name, version, metric, f"{best.get(metric, 0.0):.4f}")
        for key, value in (tags or {}).items():
            client.set_model_version_tag(name, version, key, value)
        if alias:
            client.set_registered_model_alias(name, alias, version)
        out.update({"registered_model": name, "version": version, **({"alias": alias} if alias else {})})
    return out


def drop_alias(name: str, alias: str) -> bool:
    """Remove ``alias`` from registered model ``name``; whether it was there."""
    client = MlflowClient()
    try:
        client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return False  # no such model or no such alias
    client.delete_registered_model_alias(name, alias)
    return True


def cost_tags(row: dict[str, Any]) -> dict[str, str]:
    # Parameters as an exact count; latency and size to 4 significant digits.
    return {k: (str(int(row[k])) if k == "params" else f"{row[k]:.4g}") for k in COSTS if row.get(k) is not None}


def log_front(summary: dict[str, Any], config_of: Callable[[dict[str, Any]], RaykdConfig], teacher: str | None,
              export_onnx: ExportOnnx | None) -> list[dict[str, Any]]:
    """Each point of the Pareto front: a nested run ``front-<trial>`` holding the student exported
    to ONNX by ``export_onnx`` (parity-checked, timed) and logged as a pyfunc model that carries the
    ONNX folder, registered as a version tagged with its costs and score; the best within the
    latency budget gets the alias."""
    rows = {r["trial_id"]: r for r in summary["trials"]}
    best = summary.get("best") or {}
    budget = summary.get("max_latency_ms") is not None
    out = []
    # The best (within the budget) is registered even when it is off the front (a budget on
    # latency_ms with another cost as objective), so that it can carry the alias.
    chosen = list(summary["front"]) + ([best["trial_id"]] if best and best["trial_id"] not in summary["front"] else [])
    for trial_id in chosen:
        row = rows[trial_id]
        if not row.get("checkpoint_path"):
            continue
        if export_onnx is None:
            raise ValueError("a Pareto front's students are logged with their ONNX export: pass export_onnx")
        cfg = config_of(row)
        with mlflow.start_run(run_name=f"front-{trial_id}", nested=True), \
                storage.local_copy(row["checkpoint_path"]) as ckpt_dir, \
                tempfile.TemporaryDirectory(prefix="raykd-onnx-") as onnx_dir:
            exported = export_onnx(ckpt_dir, onnx_dir, cfg)
            mlflow.log_metrics({"onnx_latency_ms": exported["onnx_latency_ms"],
                                "onnx_max_abs_diff": exported["onnx_max_abs_diff"],
                                **{k: float(row[k]) for k in COSTS if row.get(k) is not None}})
            mlflow.set_tags({"raykd.trial_id": trial_id, "raykd.pareto_front": str(trial_id in summary["front"]).lower()})
            tags = {**cost_tags(row), "trial_id": trial_id, "onnx_max_abs_diff": f"{exported['onnx_max_abs_diff']:.3g}",
                    "onnx_parity_ok": str(bool(exported["onnx_parity_ok"])).lower()}
            alias = BUDGET_ALIAS if budget and best.get("trial_id") == trial_id else None
            logged = log_student(ckpt_dir, cfg, teacher, row, study=cfg.search.name, onnx_dir=onnx_dir, tags=tags,
                                 alias=alias)
        out.append({"trial_id": trial_id, **logged})
    return out
