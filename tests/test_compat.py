"""Each private part of Ray that raykd.compat reaches is still where, and what, compat expects: an
upgrade that moves or reshapes one fails here by name instead of changing raykd's behaviour
quietly (every caller falls back when an internal is missing). No Ray cluster is started."""

import inspect

import ray
from ray import tune
from ray.tune.experiment import Trial

from raykd import compat
from raykd.search.report import ProgressTable


def test_read_from_ray_2_60():
    # Every function in compat names the version it was read from; a new Ray needs them reread.
    assert ray.__version__.startswith("2.60."), f"compat.py was read from Ray 2.60.x, this is {ray.__version__}"
    for name, fn in inspect.getmembers(compat, inspect.isfunction):
        if fn.__module__ == compat.__name__:
            assert "Ray 2.60.0" in (fn.__doc__ or ""), f"compat.{name} does not name the version it was read from"


def test_progress_text_is_the_reporters_table():
    table = ProgressTable(["distill.temperature"], [("eval_f1", "F1")])
    assert list(inspect.signature(type(table)._progress_str).parameters)[:3] == ["self", "trials", "done"]
    text = compat.progress_text(table, [], False)
    assert isinstance(text, str) and text.startswith("== Status ==")


def test_a_result_grid_keeps_its_experiment_analysis():
    # compat.result_grid_statuses reads ResultGrid's ExperimentAnalysis, whose trials have statuses.
    assert "experiment_analysis" in inspect.signature(tune.ResultGrid.__init__).parameters
    assert "self._experiment_analysis = experiment_analysis" in inspect.getsource(tune.ResultGrid.__init__)
    assert "self.trials = " in inspect.getsource(tune.ExperimentAnalysis.__init__)
    assert {"trial_id", "status"} <= set(vars(Trial("raykd_trial", trial_id="t", stub=True)))


def test_the_autoscaler_internals_are_where_compat_reads_them():
    from ray._private import ray_constants
    from ray._private.state import state
    from ray.experimental import internal_kv

    assert isinstance(ray_constants.DEBUG_AUTOSCALING_STATUS, (str, bytes))
    assert callable(internal_kv._internal_kv_get)
    assert callable(state.get_max_resources_from_cluster_config) and callable(state.get_cluster_config)
    node = "a" * 56
    assert isinstance(compat.readonly_node_type(node), str) and node in compat.readonly_node_type(node)


def test_the_bootstrap_address_lookup_is_where_compat_reads_it():
    from ray._private import services

    params = inspect.signature(services.canonicalize_bootstrap_address_or_die).parameters
    assert next(iter(params)) == "addr"


def test_the_train_poll_interval_is_the_variable_train_reads_and_propagates():
    from ray.train.v2._internal import constants
    from ray.train.v2._internal.execution.controller import controller

    (name, value), = compat.train_env_defaults().items()
    assert name == constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR
    assert name in constants.ENV_VARS_TO_PROPAGATE
    assert "HEALTH_CHECK_INTERVAL_S_ENV_VAR" in inspect.getsource(controller.TrainController.__init__)
    assert 0 < float(value) < constants.DEFAULT_HEALTH_CHECK_INTERVAL_S
