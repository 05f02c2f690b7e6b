"""Every use of a private (underscore or ``_private``) part of Ray, Optuna, MLflow or transformers
that raykd cannot do without, one function each, with the version it was read from and why no
public API serves. ``tests/test_compat.py`` checks that each internal is still where and what these
functions expect, so an upgrade that moves one fails there, loudly, not as a silent change here.

Callers keep their own fallback where an internal may be missing (an older or newer Ray): the
functions here raise whatever the internal raises.
"""

from __future__ import annotations

from typing import Any

# --- Ray Tune (read from Ray 2.60.0) ------------------------------------------------------------


def progress_text(reporter, trials: list, done: bool, *sys_info: str) -> str:
    """The text a ``CLIReporter`` prints for ``trials``, to print it without two of its lines.
    Ray 2.60.0, ``ray/tune/progress_reporter.py``: ``TuneReporterBase._progress_str(trials, done,
    *sys_info, fmt="psql", delim="\\n")``. No public option drops the "Result logdir:" line (it is
    written inside ``_trial_progress_str`` for every trial's experiment path)."""
    return reporter._progress_str(trials, done, *sys_info)


def result_grid_statuses(grid) -> dict[str, str]:
    """Each trial's Tune status as a ``ResultGrid`` holds it. Ray 2.60.0,
    ``ray/tune/result_grid.py``: ``ResultGrid.__init__`` keeps its ``ExperimentAnalysis`` as
    ``self._experiment_analysis``, whose ``trials`` carry ``trial_id`` and ``status``; the public
    ``Result`` has no status (an errored one has ``error``; a PENDING one cannot be told from a
    TERMINATED one)."""
    return {t.trial_id: t.status for t in grid._experiment_analysis.trials}


# --- Ray core and autoscaler (read from Ray 2.60.0) -----------------------------------------------


def autoscaler_status() -> bytes | None:
    """The v1 autoscaler's last status report (JSON bytes), or None before its first. Ray 2.60.0:
    the monitor writes it to the GCS key-value store under
    ``ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS``, read with
    ``ray.experimental.internal_kv._internal_kv_get``; ``ray status`` reads it the same way and no
    public API returns it."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(DEBUG_AUTOSCALING_STATUS)


def published_cluster_config() -> tuple[dict[str, Any], Any]:
    """(the most of each resource, the cluster config) an autoscaler (v2, KubeRay) publishes in the
    GCS, each possibly None. Ray 2.60.0, ``ray/_private/state.py``: the ``state`` singleton's
    ``get_max_resources_from_cluster_config()`` and ``get_cluster_config()`` (whose
    ``node_group_configs`` have ``resources`` and ``max_count``); Ray Train reads them the same way
    to refuse a worker group that can never start."""
    from ray._private.state import state

    return state.get_max_resources_from_cluster_config(), state.get_cluster_config()


def readonly_node_type(node_id: str) -> str:
    """The node type a read-only (fixed-cluster) autoscaler gives a node. Ray 2.60.0,
    ``ray/autoscaler/_private/util.py``: ``format_readonly_node_type(node_id)``; a real
    autoscaler names node types after its config instead, which is how raykd tells them apart."""
    from ray.autoscaler._private.util import format_readonly_node_type

    return format_readonly_node_type(node_id)


def local_gcs_address() -> str:
    """The host:port ``address="auto"`` leads to (what ``ray start`` last recorded on this machine,
    or a Ray running here); raises ConnectionError when there is none. Ray 2.60.0,
    ``ray/_private/services.py``: ``canonicalize_bootstrap_address_or_die("auto")``, what
    ``ray.init(address="auto")`` calls; raykd calls it first to check the cluster answers."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    return canonicalize_bootstrap_address_or_die("auto")


# --- Ray Train V2 settings (read from Ray 2.60.0) ---------------------------------------------

# How often Train's controller polls its worker group (Ray's default: 2 s). Each poll collects the
# workers' reports (so Tune and ASHA see a round up to one interval late) and sees the train
# function return: a run that has finished waits up to two intervals more before its workers are
# shut down, ~3.5 s a trial at 2 s on a 2-core machine. A poll is one small actor call per worker.
TRAIN_POLL_INTERVAL_S = "0.25"


def train_env_defaults() -> dict[str, str]:
    """Ray Train settings raykd wants when the user has not set them, as environment variables to
    set in the process that calls ``TorchTrainer.fit()`` (Train hands them to its controller).
    Ray 2.60.0, ``ray/train/v2/_internal/constants.py``: ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``
    (``HEALTH_CHECK_INTERVAL_S_ENV_VAR``, default 2.0), read by the ``TrainController`` and listed in
    ``ENV_VARS_TO_PROPAGATE`` (the controller passes it on to its workers). Not documented on
    docs.ray.io (which documents Tune's variables, not Train V2's), and no public option
    (``RunConfig``, ``ScalingConfig``) sets the interval. ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER``
    and ``RAY_TRAIN_METRICS_ENABLED`` (one actor and two callbacks a run that one fixed node never
    uses) are equally undocumented and are left at Ray's defaults: switching features off through
    an internal flag could change what a run does, not only how fast it is told it ended."""
    return {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_INTERVAL_S}
