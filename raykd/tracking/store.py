"""Where runs are written: the tracking URI (flag, config, environment, else a local sqlite file),
the check that the store can be used before anything is written, and the experiment."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from raykd.config import RaykdConfig
from raykd.errors import UserError


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
