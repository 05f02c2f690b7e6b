"""The runs: a search's study (parent) run and how its trial runs are named, found and ended, what
a finished search logs on it (best trial, plots, the best student or the Pareto front's), and the
single run of ``cli.py train`` / ``finetune``. Trial runs are written by the Tune callback
(:mod:`raykd.tracking.callback`), in the driver, so workers never reach MLflow.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from raykd import storage
from raykd.config import COSTS, RaykdConfig
from raykd.tracking import plots, registry

# Logged per round besides every evaluation score (``eval_*``: the task's scores).
LOGGED_METRICS = ("train_loss", "train_kd", "train_ce", "train_cos", "learning_rate", "samples_per_sec", "epoch",
                  "step", "time_setup_s", "time_train_s", "time_eval_s", "time_checkpoint_s")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "space":
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (dict, list)) else v
    return out


def _params(cfg: RaykdConfig) -> dict[str, str]:
    # The space is logged whole with the config file, not as parameters.
    return {k: str(v)[:500] for k, v in _flat(cfg.to_dict()).items() if not k.startswith("space")}


def metrics(row: dict[str, Any]) -> dict[str, float]:
    """What a round's result logs: the scores, the costs and :data:`LOGGED_METRICS`, as numbers."""
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
    client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in _params(cfg).items()])
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


def child_runs(uri: str | None, parent_run_id: str, extra: str | None = None) -> list:
    """The trial runs under a study run (``extra``: a further MLflow filter)."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" + (f" and {extra}" if extra else "")
    return client.search_runs([parent.info.experiment_id], filter_string=query, max_results=10_000)


def mark_interrupted(parent_run_id: str) -> int:
    """An interrupted search: its study run and every trial run still open end KILLED, tagged
    why (``--resume`` reopens them). Returns how many trial runs were open."""
    client = MlflowClient()
    open_runs = [r for r in child_runs(None, parent_run_id) if r.info.status == "RUNNING"]
    for run in open_runs + [client.get_run(parent_run_id)]:
        client.set_tag(run.info.run_id, "raykd.end", "interrupted; continue with --resume")
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(open_runs)


def reopen_study(parent_run_id: str) -> None:
    """A resumed search continues in its study run."""
    MlflowClient().update_run(parent_run_id, status="RUNNING")


def finish_study(run_id: str, summary: dict[str, Any], cfg: RaykdConfig, teacher: str | None,
                 searched: list[str], optuna_study=None, config_of: Callable[[dict[str, Any]], RaykdConfig] | None = None,
                 export_onnx: registry.ExportOnnx | None = None) -> dict[str, Any]:
    """Best trial's params and metrics, the plots, and the best student (logged + registered); in
    a Pareto search every student of the front, with its ONNX export made by ``export_onnx``
    (:data:`registry.ExportOnnx`). ``config_of(row)``: the config a trial ran with (its serving
    settings); default ``cfg``."""
    out: dict[str, Any] = {"run_id": run_id}
    with mlflow.start_run(run_id=run_id):
        best = summary.get("best")
        if best:
            mlflow.log_params({f"best.{k}": best[k] for k in searched if k in best})
            mlflow.log_metrics({f"best_{k}": best[k] for k in summary["scores"] if best.get(k) is not None})
            mlflow.set_tag("raykd.best_trial", best["trial_id"])
        mlflow.log_dict(summary, "summary.json")
        _log_plots(summary, optuna_study)
        alias = registry.BUDGET_ALIAS if summary.get("max_latency_ms") is not None else None
        if summary.get("front") is not None:
            mlflow.log_dict({"objectives": summary["objectives"], "front": summary["front"]}, "pareto_front.json")
            out["front"] = registry.log_front(summary, config_of or (lambda row: cfg), teacher, export_onnx)
            winner = next((f for f in out["front"] if best and f["trial_id"] == best["trial_id"]), None)
            if winner:
                out.update({k: v for k, v in winner.items() if k != "trial_id"})
        elif best and best.get("checkpoint_path"):
            # The checkpoint may live in a bucket (a cloud storage_path): logged from a local copy.
            with storage.local_copy(best["checkpoint_path"]) as ckpt_dir:
                out.update(registry.log_student(ckpt_dir, cfg, teacher, best, study=cfg.search.name, alias=alias,
                                                tags=registry.cost_tags(best)))
    given = out.get("alias") or any(f.get("alias") for f in out.get("front", []))
    if alias and not given and cfg.tracking.register_best:
        # No student of this search met the budget: the alias must not keep serving an earlier
        # search's student under this search's name.
        out["alias_removed"] = alias if registry.drop_alias(cfg.tracking.registered_model_name, alias) else None
    return out


def _log_plots(summary: dict[str, Any], study=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        mlflow.log_params(_params(cfg))
        if cfg.source:
            mlflow.log_artifact(cfg.source, artifact_path="config")
        for row in history:
            mlflow.log_metrics(metrics(row), step=int(row["round"]))
        out = {"run_id": run.info.run_id}
        if checkpoint_dir:
            out.update(registry.log_student(checkpoint_dir, cfg, teacher, best, study=None, register=False))
    return out
