"""The TorchTrainer that runs one training run (``cli.py train`` / ``finetune``, a search trial,
the teacher raykd fine-tunes), on the driver side: the trainer and its checkpoint rules, the
workers' resources and the check that a cluster can ever hold them, joining Ray, and reading a
finished run's best checkpoint and metrics. The workers run :mod:`raykd.training.loop`, imported
only there (by :func:`worker_entry`); studies are prepared by :mod:`raykd.prepare`; what a run is,
is a :class:`~raykd.study.runspec.RunSpec`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from raykd import compat, objective, storage
from raykd.config import DISTILL, FINETUNE, RaykdConfig
from raykd.errors import UserError
from raykd.objective import MODE
from raykd.study.runspec import RunSpec, Study
from raykd.training.checkpoints import META_FILE

__all__ = [
    "DISTILL",
    "FINETUNE",
    "at_largest",
    "best_checkpoint",
    "best_metrics",
    "build_trainer",
    "check_resources",
    "cluster_at_largest",
    "fit",
    "history",
    "init_ray",
    "node_types",
    "train_env_defaults",
    "worker_entry",
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
    train_env_defaults()
    metric = objective.metric(cfg)
    keep_by = keep_by or metric
    return TorchTrainer(
        worker_entry,
        # Train wants a dict (it records it as JSON); the run itself is one typed RunSpec.
        train_loop_config={"spec": spec},
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path or storage.ExperimentPaths.of(cfg).root,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.search.keep_checkpoints,
                checkpoint_score_attribute=keep_by,
                checkpoint_score_order=MODE if keep_by == metric else "max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            callbacks=callbacks or [],
        ),
    )


def worker_entry(config: dict[str, RunSpec]) -> None:
    """Ray Train's entry point: :func:`raykd.training.loop.train_loop_per_worker`, imported when a
    worker runs it. Train's controller unpickles the entry point too (it never runs it): by
    reference to this module, it imports what the driver side imports (Ray Train, raykd's config)
    and not the loop's transformers, tasks and models."""
    from raykd.training.loop import train_loop_per_worker

    train_loop_per_worker(config)


def worker_resources(cfg: RaykdConfig) -> dict[str, float]:
    """What one training worker asks Ray for."""
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **sc.resources_per_worker}
    if sc.use_gpu:
        resources["GPU"] = 1
    return resources


def _autoscaler_status() -> dict[str, Any]:
    """The autoscaler's last status report ({} when there is none yet)."""
    try:
        return json.loads(compat.autoscaler_status() or b"{}")
    except Exception:  # noqa: BLE001 - a private API: without it, judge by what is up now
        return {}


def _published_groups() -> tuple[dict[str, float], list[dict[str, float]]]:
    """(the most of each resource, each node group's resources) from the cluster config an
    autoscaler publishes in the GCS (autoscaler v2, KubeRay): what Ray Train itself reads to
    refuse a worker group that can never start. Empty when none is published."""
    try:
        most, config = compat.published_cluster_config()
        most = most or {}
        groups = [dict(g.resources) for g in config.node_group_configs if g.max_count != 0] if config else []
    except Exception:  # noqa: BLE001 - a private API
        return {}, []
    return {k: float(v) for k, v in most.items()}, groups


def _autoscales(status: dict[str, Any]) -> bool:
    """Whether an autoscaler that may add nodes runs. The v1 autoscaler says so in ``status``: a
    fixed cluster runs a read-only one too, whose node types are named after the nodes, while a
    real one (the fake multi-node provider, ``RAY_UP_enable_autoscaler_v2=0 ray up``) names them
    after the config's node types. The v2 autoscaler (what ``ray up`` starts since Ray 2.50, and
    KubeRay) writes no such status and marks itself in the GCS."""
    try:
        mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
        if any(kind != compat.readonly_node_type(node) for node, kind in mapping.items()):
            return True
    except ImportError:  # a private API: the v2 check below still answers
        pass
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return bool(is_autoscaler_v2(fetch_from_server=True))
    except Exception:  # noqa: BLE001 - not exported by every Ray: judge by what is up now
        return False


def _monitor_pids(status: dict[str, Any]) -> list[int]:
    """The process ids that may be this cluster's autoscaler monitor, on this machine: the one the
    v1 status names, else every ``monitor.py`` (v1 or v2) started for this cluster's GCS address."""
    if "monitor_pid" in status:
        return [int(status["monitor_pid"])]
    gcs = f"--gcs-address={ray.get_runtime_context().gcs_address}"
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if gcs in args and any(a.endswith("monitor.py") for a in args):
            pids.append(int(proc.name))
    return pids


def _monitor_config(status: dict[str, Any]) -> dict[str, Any] | None:
    """The autoscaling config file this cluster's monitor was started with (``ray up`` starts it
    with the bootstrap config it wrote on the head, resources filled in from the cloud's instance
    types). Neither autoscaler publishes its node types, so the file is the only account of how
    large the cluster may grow; it is read on the head node, where a ``ray job submit`` or
    ``ray attach`` driver runs. None elsewhere, or when it cannot be read."""
    import yaml

    flag = "--autoscaling-config="
    for pid in _monitor_pids(status):
        try:
            proc = Path("/proc") / str(pid)
            args = (proc / "cmdline").read_bytes().decode().split("\0")
            path = next(a[len(flag):] for a in args if a.startswith(flag))
            config = yaml.safe_load((proc / "cwd" / Path(path).expanduser()).read_text())
        except Exception:  # noqa: BLE001, S112 - another machine's monitor, no config flag, an unreadable file
            continue
        if isinstance(config, dict):
            return config
    return None


def node_types(config: dict[str, Any]) -> list[tuple[dict[str, float], int]] | None:
    """An autoscaling config's worker node types as (resources of one node, most nodes of the
    type), or None when a type's size is not in the file: resources left for the cloud provider
    to fill in (``resources: {}``, as on AWS) or no max_workers anywhere."""
    top = config.get("max_workers")
    types = []
    for name, kind in (config.get("available_node_types") or {}).items():
        if name == config.get("head_node_type"):
            continue
        count = kind.get("max_workers", top)
        resources = {k: float(v) for k, v in (kind.get("resources") or {}).items()}
        if count is None or not resources:
            return None
        types.append((resources, int(min(count, top) if top is not None else count)))
    return types


def at_largest(head: dict[str, float], types: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """The head as it is, plus every worker node type at its max: an upper bound (the cluster's
    own max_workers may stop short of every type's)."""
    most = dict(head)
    for resources, count in types:
        for key, amount in resources.items():
            most[key] = most.get(key, 0.0) + amount * count
    return most


def _cluster_capacity() -> tuple[dict[str, float], list[dict[str, float]], bool] | None:
    """(the most of each resource the cluster can ever have, what each node or node type has,
    whether it autoscales), or None when that cannot be known. An autoscaling cluster is judged
    at its largest (its node types at their max), whatever is up now: on a cold cluster nothing
    is, and only work queued in Ray makes the autoscaler add nodes. A fixed cluster (whose
    read-only autoscaler names each node's type after the node) has what it has now; an
    autoscaler whose node types cannot be read may add anything, so None."""
    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    alive = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    most, groups = _published_groups()
    if not most:
        status = _autoscaler_status()
        config = _monitor_config(status)
        if config is None:
            # No autoscaling config on this machine: a fixed cluster, or an autoscaling one whose
            # head is elsewhere (a driver joined by --address from another machine).
            return None if _autoscales(status) else (now, alive, False)
        types = node_types(config)
        if types is None:
            return None
        most = at_largest(next((n for n in alive if "node:__internal_head__" in n), {}), types)
        groups = [resources for resources, count in types if count > 0]
    keys = set(now) | set(most)
    return {k: max(now.get(k, 0.0), float(most.get(k, 0.0))) for k in keys}, alive + groups, True


def cluster_at_largest() -> dict[str, float] | None:
    """The most of each resource the joined cluster can ever have (an autoscaling one at its
    largest), or None when an autoscaler does not say how large it may grow."""
    known = _cluster_capacity()
    return known[0] if known else None


def check_resources(cfg: RaykdConfig, driver_cpu: float = 0.0) -> None:
    """Refuse a run whose workers the cluster can never hold, instead of waiting for them
    forever: GPUs on a cluster without any, more CPUs (or custom resources) per trial than the
    cluster has in all, or a worker bigger than every node. ``driver_cpu``: what a search's trial
    driver takes on top of its workers."""
    sc = cfg.scaling
    per_worker = worker_resources(cfg)
    known = _cluster_capacity()
    if known is None:
        print("[raykd] the cluster autoscales, but how large it grows cannot be read here (its autoscaling "
              "config is read on the head node: run the search there, e.g. with `ray job submit`): resources "
              "are not checked up front", flush=True)
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


def _where_from(address: str | None) -> tuple[str, str]:
    """How the user named the cluster, and how to do without it, for the error lines."""
    if address:
        return f"--address {address}", "drop --address for a local Ray"
    return f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}", "unset RAY_ADDRESS for a local Ray"


def _gcs_address(address: str, named: str, local: str) -> str | None:
    """The host:port that ``address`` leads to ('auto': what ``ray start`` last recorded on this
    machine, or a Ray running here), or None for a Ray Client address (ray://), checked by Ray."""
    if "://" in address:
        return None
    if address != "auto":
        return address
    try:
        return compat.local_gcs_address()
    except ConnectionError:
        raise UserError(f"{named}: no Ray cluster runs on this machine (nor did `ray start` record one); start one "
                        f"with `ray start --head`, pass its host:port, or {local}") from None
    except Exception:  # noqa: BLE001 - a private API: leave the lookup to ray.init
        return None


def _check_answers(target: str, named: str, local: str, timeout: float = 5.0) -> None:
    """Refuse, within seconds, an address where nothing listens: ray.init would retry it for
    minutes, printing warnings, and then exit the process."""
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (ValueError, OverflowError):
        raise UserError(f"{named}: not a Ray address; expected host:port (e.g. 10.0.0.5:6379, [::1]:6379) or "
                        "auto") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{named}: no Ray cluster answers at {target} ({reason}); check the address "
                        f"(the head's `ray start` prints it), or {local}") from None


def _auth_error(named: str) -> UserError:
    """The one line for a cluster that refused to let this driver in: since Ray 2.60, a cluster
    started with ``ray start`` asks every driver for its token."""
    token = os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return UserError(f"{named}: the Ray cluster did not let this driver in; it uses token authentication: set "
                         f"RAY_AUTH_MODE=token, with the cluster's token in {token} (copied from the head "
                         "node, where `ray start` wrote it) or in RAY_AUTH_TOKEN")
    return UserError(f"{named}: the Ray cluster wants a token this driver does not have (RAY_AUTH_MODE=token): put "
                     f"the cluster's token (~/.ray/auth_token on the head node) in {token} or in RAY_AUTH_TOKEN")


def train_env_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Ray Train's settings raykd wants (:func:`raykd.compat.train_env_defaults`: the controller
    polls its workers every 0.25 s, not 2 s), where the user has not set them: a value in the
    environment wins. Called by :func:`build_trainer`, in the process that then calls
    ``TorchTrainer.fit()``: Train hands these variables from that process to its controller and
    workers, whoever started the Ray (raykd, ``ray start`` on a cluster, a notebook, a test)."""
    for key, value in compat.train_env_defaults().items():
        environ.setdefault(key, value)


def train_env() -> dict[str, str]:
    """The Ray Train settings the user set in this (the driver's) environment to other values
    than raykd's, for a search's trial actors: a trial's ``TorchTrainer.fit()`` runs there, not in
    the driver. Where the user set none, the actor keeps its own environment's value, else gets
    raykd's default when it builds its trainer."""
    return {key: os.environ[key] for key, value in compat.train_env_defaults().items()
            if os.environ.get(key, value) != value}


def init_ray(address: str | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS), else start a new embedded single-node Ray: never the
    cluster ``ray start`` last recorded on this machine (``ray.init()``'s default), which may be
    long gone (Ray then waits for it forever). A cluster that does not answer, or does not let
    this driver in, is refused in one line."""
    if ray.is_initialized():
        return
    named, local = _where_from(address)
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        target = _gcs_address(address, named, local)
        if target:
            _check_answers(target, named, local)
    try:
        # The dashboard stays on: ASHA-stopped trials release their placement groups through its
        # state API (without it the next trial waits forever).
        ray.init(address=address, log_to_driver=True, configure_logging=True, logging_level="WARNING")
    except ray.exceptions.AuthenticationError:
        raise _auth_error(named) from None
    except ConnectionError as exc:
        if address == "local":
            raise
        # Ray's error says only that it failed; the GCS's answer is in its cause.
        text = str(exc.__cause__ or exc)
        if "unauthenticated" in text.lower() or "authtoken" in text.lower():
            raise _auth_error(named) from None
        last = [ln.strip() for ln in text.splitlines() if ln.strip()][-1:]
        raise UserError(f"{named}: could not join the Ray cluster there ({(last or ['no answer'])[0][:200]}); "
                        f"check the address and that the cluster runs Ray {ray.__version__}") from None
    except (ValueError, RuntimeError) as exc:
        if address == "local":
            raise
        # An address Ray cannot use (a dashboard's http:// address, as Ray's job docs export it)
        # or a cluster of another Ray version: Ray's first line says which.
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise UserError(f"{named}: could not join a Ray cluster there ({first[:200]}); pass the head's "
                        f"host:port (e.g. 10.0.0.5:6379) of a cluster that runs Ray {ray.__version__}") from None


def fit(cfg: RaykdConfig, mode: str, study: Study, name: str | None = None) -> ray.train.Result:
    """One run (``cli.py train`` / ``finetune``) through a real TorchTrainer, on a study the caller
    prepared (:func:`raykd.prepare.prepare_study`)."""
    trainer = build_trainer(RunSpec.of(cfg, mode, study), name or storage.ExperimentPaths.of(cfg, mode).name)
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
