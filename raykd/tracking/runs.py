"""MLflow, and the only module that imports it: where runs are written, the study's parent run, one
child run per trial (a Tune callback running in the driver, so workers never reach MLflow), single
train/finetune runs, the plots, and the best student as a registered ``mlflow.pyfunc`` model that
does its task (answers questions, labels texts: the task's predictor, :mod:`raykd.tasks`).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import tempfile
import time
import warnings
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
from ray.air.integrations.mlflow import MLflowLoggerCallback

from raykd import errors, objective, storage, tasks
from raykd.config import COSTS, RaykdConfig
from raykd.errors import UserError
from raykd.training.checkpoints import NOT_MODEL_FILES

# Logged per round besides every evaluation score (``eval_*``: the task's scores).
LOGGED_METRICS = ("train_loss", "train_kd", "train_ce", "train_cos", "learning_rate", "samples_per_sec", "epoch",
                  "step", "time_setup_s", "time_train_s", "time_eval_s", "time_checkpoint_s")
MODEL_NAME = "student"


class TrackingError(UserError):
    """The tracking store cannot be used (found before any trial starts)."""


def resolve_uri(cfg: RaykdConfig, cli_uri: str | None = None) -> str:
    """--tracking-uri, else tracking.tracking_uri, else MLFLOW_TRACKING_URI, else a local sqlite
    store in the working directory (absolute: Ray changes workers' cwd)."""
    uri = cli_uri or cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    # A local sqlite store keeps artifacts beside it; a server decides for itself.
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def check(cfg: RaykdConfig, cli_uri: str | None = None, timeout_s: float = 5.0) -> str:
    """Whether the store can be used, without writing to it (a refused command leaves no store
    behind): a server answers its health check; a local sqlite file's folder exists and the file,
    if there, is a sqlite database; a file store is allowed. Returns the URI."""
    uri = resolve_uri(cfg, cli_uri)
    fix = "start it, or pass --tracking-uri / --no-tracking"
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
        except requests.RequestException as exc:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({type(exc).__name__}); {fix}") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.parent.is_dir():
            raise TrackingError(f"MLflow tracking store {uri}: folder {db.parent} does not exist; create it, or "
                                "pass --tracking-uri / --no-tracking")
        if db.exists() and (not db.is_file() or _head(db) not in (b"", b"SQLite format 3\x00")):
            raise TrackingError(f"MLflow tracking store {uri}: {db} is not a sqlite database; "
                                "pass another --tracking-uri or --no-tracking")
    elif ("://" not in uri or uri.startswith("file:")) and \
            os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise TrackingError(f"MLflow tracking store {uri}: MLflow 3 refuses a file store unless "
                                "MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///<path>/mlflow.db or set it")
    return uri


def connect(cfg: RaykdConfig, cli_uri: str | None = None, timeout_s: float = 5.0) -> str:
    """Point MLflow at the store (creating the experiment) once it is known to answer: after
    :func:`check`, and after every other check, so that a refused command writes nothing."""
    uri = check(cfg, cli_uri, timeout_s)
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.get_experiment_by_name(cfg.tracking.experiment_name)
        if exp is None:
            mlflow.create_experiment(cfg.tracking.experiment_name, artifact_location=_artifact_root(uri))
    except Exception as exc:  # noqa: BLE001 -- any store error: say which store and stop before training
        raise TrackingError(f"MLflow tracking store {uri} cannot be used: {exc}") from None
    mlflow.set_experiment(cfg.tracking.experiment_name)
    return uri


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "space":
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (dict, list)) else v
    return out


def _metrics(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if (k in LOGGED_METRICS or k in COSTS or k.startswith("eval_"))
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------------------------------------
# Study (search) runs


def start_study(cfg: RaykdConfig, uri: str, run_name: str) -> str:
    """The study's parent run: the YAML as an artifact, settings as params. Returns its run id."""
    client = MlflowClient()
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment_name)
    run = client.create_run(exp.experiment_id, run_name=run_name,
                            tags={"raykd.kind": "study", "raykd.search": cfg.search.name})
    run_id = run.info.run_id
    params = {k: str(v)[:500] for k, v in _flat(cfg.to_dict()).items() if not k.startswith("space")}
    client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    if cfg.source:
        client.log_artifact(run_id, cfg.source, artifact_path="config")
    client.log_dict(run_id, cfg.to_dict(), "config/resolved.yaml")
    return run_id


# How a searched key is shown in a trial run's name: its last part, or a shorter word.
SHORT_NAMES = {"temperature": "T", "learning_rate": "lr", "init_from_teacher_layers": "layers",
               "num_epochs": "epochs"}


def _short_value(value: Any) -> str:
    """A value as a person reads it in a run list: numbers to 3 significant digits (``1.64e-4``,
    ``0.721``), lists without spaces, long texts cut to their end (a model path's last part)."""
    if isinstance(value, float):
        if value != 0 and not 1e-2 <= abs(value) < 1e4:
            mantissa, exponent = f"{value:.2e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short_value(v) for v in value) + "]"
    text = str(value)
    return text if len(text) <= 32 else "…" + text[-31:]


def trial_run_name(number: int | str, config: dict[str, Any], searched: list[str], trial_id: str | None = None) -> str:
    """A trial run's name: its number in the search, the start of its id (as the console and the
    summary name it), then what it tried, e.g. ``trial 3 (db375ef1) · T 4.84 · alpha_ce 0.721 ·
    lr 1.64e-4`` (constants and tied alphas left out)."""
    parts = [f"trial {number}" + (f" ({trial_id[:8]})" if trial_id else "")]
    for key in searched:
        if key in config:
            leaf = key.rsplit(".", 1)[-1]
            parts.append(f"{SHORT_NAMES.get(leaf, leaf)} {_short_value(config[key])}")
    return " · ".join(parts)


def _trial_number(trial) -> int | str:
    """The trial's place in the search (1, 2, ...): Tune's experiment tag starts with its counter,
    which a restored experiment keeps. The trial id when a tag has no number."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else trial.trial_id


class TrialRunsCallback(MLflowLoggerCallback):
    """Ray's MLflow logger callback, made to nest each trial under the study run, to name it by what
    it tried (:func:`trial_run_name`) and to tell the truth about how a trial ended: metrics are
    indexed by evaluation round; a trial ASHA stopped ran as it should and ends FINISHED, tagged
    ``stopped_early``; a crashed one ends FAILED, tagged with the error. (An interrupted search
    marks its open runs KILLED: :func:`mark_interrupted`.)"""

    def __init__(self, uri: str, experiment_name: str, parent_run_id: str, searched: list[str] | None = None):
        super().__init__(tracking_uri=uri, experiment_name=experiment_name,
                         tags={"mlflow.parentRunId": parent_run_id, "raykd.kind": "trial"})
        self.parent_run_id = parent_run_id
        self.searched = list(searched or [])

    def log_trial_start(self, trial) -> None:
        self.tags = {**self.tags, "raykd.trial_id": trial.trial_id}
        if trial not in self._trial_runs:
            # A trial resumed by --resume continues in its own child run (Ray's callback keeps no
            # state across a restore, so it would open a second one).
            existing = _child_runs(self.tracking_uri, self.parent_run_id, f"tags.`raykd.trial_id` = '{trial.trial_id}'")
            if existing:
                run_id = existing[0].info.run_id
                MlflowClient(self.tracking_uri).update_run(run_id, status="RUNNING")
                self._trial_runs[trial] = run_id
        super().log_trial_start(trial)
        # Ray names the run after the trainable and trial id (`_trial_driver_8a…`), which says nothing.
        name = trial_run_name(_trial_number(trial), trial.config or {}, self.searched, trial.trial_id)
        MlflowClient(self.tracking_uri).update_run(self._trial_runs[trial], name=name)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        run_id = self._trial_runs[trial]
        self.mlflow_util.log_metrics(run_id=run_id, metrics_to_log=_metrics(result), step=int(result["round"]))

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self._trial_runs[trial]
        last = trial.last_result or {}
        client = MlflowClient(self.tracking_uri)
        if failed:
            client.set_tag(run_id, "raykd.end", "failed")
            try:
                # The trial's local error file: the copy in storage is synced later.
                local = Path(trial.error_file) if trial.error_file else None
                why = errors.reason(local.read_text() if local and local.is_file() else trial.get_error())
            except Exception:  # noqa: BLE001 -- the error file is gone or unreadable: point at it
                why = ""
            client.set_tag(run_id, "raykd.error", why or f"see {getattr(trial, 'error_file', None) or 'the Ray logs'}")
            status = "FAILED"
        elif not last.get("final", True):
            # Early stopping is the search working, not a failure: FINISHED (KILLED is drawn as a
            # failure), and the tag says that it was cut short.
            client.set_tag(run_id, "raykd.end", f"stopped early by ASHA after round {last.get('round')}")
            client.set_tag(run_id, "stopped_early", "true")
            status = "FINISHED"
        else:
            client.set_tag(run_id, "raykd.end", "completed")
            status = "FINISHED"
        self.mlflow_util.end_run(run_id=run_id, status=status)


def _child_runs(uri: str | None, parent_run_id: str, extra: str | None = None) -> list:
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" + (f" and {extra}" if extra else "")
    return client.search_runs([parent.info.experiment_id], filter_string=query, max_results=10_000)


def mark_interrupted(parent_run_id: str) -> int:
    """An interrupted search: its study run and every trial run still open end KILLED, tagged
    why (``--resume`` reopens them). Returns how many trial runs were open."""
    client = MlflowClient()
    open_runs = [r for r in _child_runs(None, parent_run_id) if r.info.status == "RUNNING"]
    for run in open_runs + [client.get_run(parent_run_id)]:
        client.set_tag(run.info.run_id, "raykd.end", "interrupted; continue with --resume")
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(open_runs)


def reopen_study(parent_run_id: str) -> None:
    """A resumed search continues in its study run."""
    MlflowClient().update_run(parent_run_id, status="RUNNING")


def finish_study(run_id: str, summary: dict[str, Any], cfg: RaykdConfig, teacher: str | None,
                 searched: list[str], optuna_study=None, config_of=None) -> dict[str, Any]:
    """Best trial's params and metrics, the plots, and the best student (logged + registered); in
    a Pareto search every student of the front. ``config_of(row)``: the config a trial ran with
    (its serving settings); default ``cfg``."""
    out: dict[str, Any] = {"run_id": run_id}
    with mlflow.start_run(run_id=run_id):
        best = summary.get("best")
        if best:
            mlflow.log_params({f"best.{k}": best[k] for k in searched if k in best})
            mlflow.log_metrics({f"best_{k}": best[k] for k in summary["scores"] if best.get(k) is not None})
            mlflow.set_tag("raykd.best_trial", best["trial_id"])
        mlflow.log_dict(summary, "summary.json")
        _log_plots(summary, optuna_study)
        alias = BUDGET_ALIAS if summary.get("max_latency_ms") is not None else None
        if summary.get("front") is not None:
            mlflow.log_dict({"objectives": summary["objectives"], "front": summary["front"]}, "pareto_front.json")
            out["front"] = _log_front(summary, config_of or (lambda row: cfg), teacher)
            winner = next((f for f in out["front"] if best and f["trial_id"] == best["trial_id"]), None)
            if winner:
                out.update({k: v for k, v in winner.items() if k != "trial_id"})
        elif best and best.get("checkpoint_path"):
            # The checkpoint may live in a bucket (a cloud storage_path): logged from a local copy.
            with storage.local_copy(best["checkpoint_path"]) as ckpt_dir:
                out.update(log_student(ckpt_dir, cfg, teacher, best, study=cfg.search.name, alias=alias,
                                       tags=_cost_tags(best)))
    given = out.get("alias") or any(f.get("alias") for f in out.get("front", []))
    if alias and not given and cfg.tracking.register_best:
        # No student of this search met the budget: the alias must not keep serving an earlier
        # search's student under this search's name.
        out["alias_removed"] = alias if _drop_alias(cfg.tracking.registered_model_name, alias) else None
    return out


def _drop_alias(name: str, alias: str) -> bool:
    """Remove ``alias`` from registered model ``name``; whether it was there."""
    client = MlflowClient()
    try:
        client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return False  # no such model or no such alias
    client.delete_registered_model_alias(name, alias)
    return True


# The registered version that is the best student within search.max_latency_ms.
BUDGET_ALIAS = "within-budget"


def _cost_tags(row: dict[str, Any]) -> dict[str, str]:
    # Parameters as an exact count; latency and size to 4 significant digits.
    return {k: (str(int(row[k])) if k == "params" else f"{row[k]:.4g}") for k in COSTS if row.get(k) is not None}


def _log_front(summary: dict[str, Any], config_of, teacher: str | None) -> list[dict[str, Any]]:
    """Each point of the Pareto front: a nested run ``front-<trial>`` holding the student exported
    to ONNX (parity-checked, timed) and logged as a pyfunc model that carries the ONNX folder,
    registered as a version tagged with its costs and score; the best within the latency budget
    gets the alias."""
    from raykd.serving import onnx_export

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
        cfg = config_of(row)
        with mlflow.start_run(run_name=f"front-{trial_id}", nested=True), \
                storage.local_copy(row["checkpoint_path"]) as ckpt_dir, \
                tempfile.TemporaryDirectory(prefix="raykd-onnx-") as onnx_dir:
            report = onnx_export.export_student(ckpt_dir, onnx_dir, max_length=cfg.data.max_length, lc=cfg.latency)
            mlflow.log_metrics({"onnx_latency_ms": report.latency.median_ms, "onnx_max_abs_diff": report.parity.max_abs_diff,
                                **{k: float(row[k]) for k in COSTS if row.get(k) is not None}})
            mlflow.set_tags({"raykd.trial_id": trial_id, "raykd.pareto_front": str(trial_id in summary["front"]).lower()})
            tags = {**_cost_tags(row), "trial_id": trial_id, "onnx_max_abs_diff": f"{report.parity.max_abs_diff:.3g}",
                    "onnx_parity_ok": str(bool(report.parity.ok)).lower()}
            alias = BUDGET_ALIAS if budget and best.get("trial_id") == trial_id else None
            logged = log_student(ckpt_dir, cfg, teacher, row, study=cfg.search.name, onnx_dir=onnx_dir, tags=tags,
                                 alias=alias)
        out.append({"trial_id": trial_id, **logged})
    return out


def _log_plots(summary: dict[str, Any], study=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raykd.tracking import plots

    fig = plots.rounds_figure(summary)
    mlflow.log_figure(fig, f"plots/{summary['metric']}_by_round.png")
    plt.close(fig)
    if summary.get("front"):
        fig = plots.front_figure(summary)
        mlflow.log_figure(fig, "plots/pareto_front.png")
        plt.close(fig)
    if study is None:
        return
    import optuna
    import optuna.visualization.matplotlib as ovm

    optuna_plots = {"optuna_history": ovm.plot_optimization_history,
                    "optuna_parallel_coordinates": ovm.plot_parallel_coordinate}
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(completed) >= 2 and len(study.trials[0].params) >= 2:
        optuna_plots["optuna_param_importances"] = ovm.plot_param_importances
    for name, fn in optuna_plots.items():
        try:
            # Optuna flags its matplotlib plots as experimental on every call (raykd chose them),
            # and warns about degenerate studies (one learning rate for all trials, equal
            # importances); the plot is logged either way.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.tight_layout()
            mlflow.log_figure(fig, f"plots/{name}.png")
            plt.close(fig)
        except (ValueError, RuntimeError) as exc:  # e.g. too few finished trials for a plot
            mlflow.set_tag(f"raykd.plot.{name}", f"skipped: {exc}"[:250])


# ---------------------------------------------------------------------------------------------
# Single runs (cli.py train / finetune)


def log_single_run(cfg: RaykdConfig, mode: str, history: list[dict[str, Any]], best: dict[str, Any],
                   checkpoint_dir: str | None, teacher: str | None) -> dict[str, Any]:
    with mlflow.start_run(run_name=f"{cfg.search.name}-{mode}", tags={"raykd.kind": mode}) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in _flat(cfg.to_dict()).items() if not k.startswith("space")})
        if cfg.source:
            mlflow.log_artifact(cfg.source, artifact_path="config")
        for row in history:
            mlflow.log_metrics(_metrics(row), step=int(row["round"]))
        out = {"run_id": run.info.run_id}
        if checkpoint_dir:
            out.update(log_student(checkpoint_dir, cfg, teacher, best, study=None, register=False))
    return out


# ---------------------------------------------------------------------------------------------
# The student as an MLflow model


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
# ray: the model class lives in this module, which imports Ray's MLflow integration; loading needs it.
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
