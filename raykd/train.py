"""The TorchTrainer that runs one training run (``cli.py train`` / ``finetune``, a search trial,
the teacher raykd fine-tunes), on the driver side: the trainer and its checkpoint rules, the
workers' resources and the check that a cluster can ever hold them, joining Ray, and reading a
finished run's best checkpoint and metrics. The workers run :mod:`raykd.loop`; studies are
prepared by :mod:`raykd.prepare`; what a run is, is a :class:`~raykd.runspec.RunSpec`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from raykd import objective
from raykd.checkpoints import META_FILE
from raykd.config import DISTILL, FINETUNE, RaykdConfig, run_name, storage_root
from raykd.errors import UserError
from raykd.loop import train_loop_per_worker
from raykd.objective import MODE
from raykd.runspec import RunSpec, Study

__all__ = [
    "DISTILL",
    "FINETUNE",
    "best_checkpoint",
    "best_metrics",
    "build_trainer",
    "check_resources",
    "fit",
    "history",
    "init_ray",
    "worker_resources",
]


def build_trainer(
    spec: RunSpec, name: str, storage_path: str | None = None, callbacks: list | None = None,
    keep_by: str | None = None,
) -> TorchTrainer:
    """``keep_by``: the reported metric that ranks checkpoints (default: the objective; ``round``
    keeps the latest)."""
    cfg = spec.cfg
    sc = cfg.scaling
    resources = worker_resources(cfg)
    metric = objective.metric(cfg)
    keep_by = keep_by or metric
    return TorchTrainer(
        train_loop_per_worker,
        # Train wants a dict (it records it as JSON); the run itself is one typed RunSpec.
        train_loop_config={"spec": spec},
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path or storage_root(cfg),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.search.keep_checkpoints,
                checkpoint_score_attribute=keep_by,
                checkpoint_score_order=MODE if keep_by == metric else "max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            callbacks=callbacks or [],
        ),
    )


def worker_resources(cfg: RaykdConfig) -> dict[str, float]:
    """What one training worker asks Ray for."""
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **sc.resources_per_worker}
    if sc.use_gpu:
        resources["GPU"] = 1
    return resources


def _cluster_capacity() -> tuple[dict[str, float], list[dict[str, float]], bool] | None:
    """(the most of each resource the cluster can ever have, what each node or node type has,
    whether it autoscales), or None when that cannot be known. An autoscaler that publishes its
    node types (what Ray Train itself reads to refuse a worker group that can never start) is
    judged at its largest; an autoscaler that does not (the v1 monitor) may add anything, so
    None; a fixed cluster has what it has now."""
    now = ray.cluster_resources()
    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    # Private APIs: without them, judge by what the cluster has now.
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
        config = state.get_cluster_config()
        groups = [dict(g.resources) for g in config.node_group_configs if g.max_count != 0] if config else []
    except Exception:  # noqa: BLE001
        most, groups = {}, []
    if not most:
        try:
            from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
            from ray.autoscaler._private.util import format_readonly_node_type
            from ray.experimental.internal_kv import _internal_kv_get

            # A fixed cluster runs a read-only autoscaler too; its node types are named after
            # the nodes. A real one (ray up) names them after the config's node types.
            report = json.loads(_internal_kv_get(DEBUG_AUTOSCALING_STATUS) or b"{}").get("autoscaler_report") or {}
            mapping = report.get("node_type_mapping") or {}
            if any(kind != format_readonly_node_type(node) for node, kind in mapping.items()):
                return None
        except Exception:  # noqa: BLE001, S110
            pass
    keys = set(now) | set(most)
    return {k: max(float(now.get(k, 0)), float(most.get(k, 0))) for k in keys}, nodes + groups, bool(most)


def check_resources(cfg: RaykdConfig, driver_cpu: float = 0.0) -> None:
    """Refuse a run whose workers the cluster can never hold, instead of waiting for them
    forever: GPUs on a cluster without any, more CPUs (or custom resources) per trial than the
    cluster has in all, or a worker bigger than every node. ``driver_cpu``: what a search's trial
    driver takes on top of its workers."""
    sc = cfg.scaling
    per_worker = worker_resources(cfg)
    known = _cluster_capacity()
    if known is None:
        print("[raykd] the cluster autoscales without publishing its largest size: resources are not checked "
              "up front", flush=True)
        return
    capacity, nodes, autoscales = known
    where = f"{cfg.source}: " if cfg.source else ""
    have = ", ".join(f"{k} {v:g}" for k, v in sorted(capacity.items()) if k in ("CPU", "GPU") or k in per_worker)
    cluster = f"the Ray cluster{' (autoscaling, at its largest)' if autoscales else ''} has {have or 'nothing'}"
    if sc.use_gpu and capacity.get("GPU", 0) < 1:
        raise UserError(f"{where}scaling.use_gpu: true, but {cluster}: no GPU; set scaling.use_gpu: false or "
                        "run on a cluster with GPUs (--address)")
    for key, amount in per_worker.items():
        need = amount * sc.num_workers + (driver_cpu if key == "CPU" else 0.0)
        if need > capacity.get(key, 0.0) + 1e-9:
            fix = ("lower scaling.num_workers or scaling.cpus_per_worker" if key == "CPU" else
                   "lower scaling.num_workers" if key == "GPU" else f"drop scaling.resources_per_worker.{key}")
            raise UserError(f"{where}scaling: a trial needs {key} {need:g} ({sc.num_workers} worker(s) x {amount:g}"
                            f"{' + the trial driver' if key == 'CPU' and driver_cpu else ''}), but {cluster}; {fix}")
    if nodes and not any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in per_worker.items()) for n in nodes):
        raise UserError(f"{where}scaling: one worker needs {per_worker}, more than any node of the Ray cluster "
                        "has; lower scaling.cpus_per_worker or scaling.resources_per_worker")


def init_ray(address: str | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS), else start an embedded single-node Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # The dashboard stays on: ASHA-stopped trials release their placement groups through its
    # state API (without it the next trial waits forever).
    ray.init(address=address, log_to_driver=True,
             configure_logging=True, logging_level="WARNING")


def fit(cfg: RaykdConfig, mode: str, name: str | None = None, study: Study | None = None) -> ray.train.Result:
    """One run (``cli.py train`` / ``finetune``) through a real TorchTrainer."""
    if study is None:
        from raykd.prepare import prepare_study

        study, _ = prepare_study(cfg, mode)
    trainer = build_trainer(RunSpec.of(cfg, mode, study), name or run_name(cfg, mode))
    return trainer.fit()


def _ranked(result: ray.train.Result, metric: str):
    ranked = result.best_checkpoints or []
    return max(ranked, key=lambda cm: cm[1].get(metric, float("-inf"))) if ranked else None


def best_checkpoint(result: ray.train.Result, metric: str) -> ray.train.Checkpoint:
    """The best kept checkpoint by ``metric`` (the objective; not the last one)."""
    best = _ranked(result, metric)
    if best:
        return best[0]
    if result.checkpoint is None:
        raise RuntimeError("the run reported no checkpoint")
    return result.checkpoint


def history(result: ray.train.Result) -> list[dict[str, Any]]:
    """Every round's metrics of a finished run, read from its latest checkpoint."""
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as d:
        meta = json.loads((Path(d) / META_FILE).read_text())
    return meta.get("history", [meta])


def best_metrics(result: ray.train.Result, metric: str) -> dict[str, Any]:
    best = _ranked(result, metric)
    return dict(best[1]) if best else dict(result.metrics or {})
