"""What a search's trial actor and Train's controller pay before a trial trains: the trial driver
and the train entry point are pickled by reference to light modules (no transformers, datasets,
Optuna, MLflow or serving imported to unpickle them), a trial actor is reused only where no trial
is stopped early, and the controller's poll interval is raykd's unless the user set one. No Ray
cluster is started."""

import os
import subprocess
import sys

import cloudpickle

from raykd import compat
from raykd.search.plan import Plan
from raykd.search.trial import _trial_driver, reuse_actors
from raykd.training import trainer

HEAVY = ("transformers", "datasets", "optuna", "mlflow", "raykd.serving", "raykd.training.loop", "raykd.tuner",
         "raykd.search.tuner", "raykd.search.searchers")


def test_the_trial_driver_and_the_train_entry_point_unpickle_without_the_heavy_modules():
    # By reference (module and name), so unpickling imports their modules and nothing else of raykd.
    assert b"raykd.search.trial" in cloudpickle.dumps(_trial_driver)
    assert b"raykd.training.trainer" in cloudpickle.dumps(trainer.worker_entry)
    code = ("import sys, raykd.search.trial, raykd.training.trainer; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_trial_actors_are_reused_only_where_no_trial_is_stopped_early():
    fifo = Plan(4, None, "best", "eval_f1", [("eval_f1", "F1")])
    asha = Plan(4, 1, "best", "eval_f1", [("eval_f1", "F1")])
    assert reuse_actors(fifo) and not reuse_actors(asha)


def test_the_controllers_poll_interval_is_set_unless_the_user_set_one():
    (name, value), = compat.train_env_defaults().items()
    env: dict[str, str] = {}
    trainer.train_env_defaults(env)
    assert env == {name: value}
    mine = {name: "5"}
    trainer.train_env_defaults(mine)
    assert mine == {name: "5"}


def test_the_poll_interval_reaches_a_train_run_in_a_ray_someone_else_started(monkeypatch, tmp_path):
    """A Ray raykd did not start (``--address``, a notebook's, a test's) never inherited raykd's
    setting: whichever process builds a TorchTrainer sets it where unset, and fit() hands it from
    there to Train's controller; a value the user set in the driver goes to every trial actor."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from raykd.config import DISTILL, RaykdConfig
    from raykd.study.runspec import RunSpec, Study

    (name, value), = compat.train_env_defaults().items()
    monkeypatch.delenv(name, raising=False)
    study = Study(prepared="/p", teacher_file=None, teacher=None, tokenizer="tok")
    trainer.build_trainer(RunSpec.of(RaykdConfig.from_dict({}), DISTILL, study), "poll", storage_path=str(tmp_path))
    assert get_env_vars_to_propagate()[name] == value
    # raykd's own default is not handed to trial actors (a cluster's environment may hold one)...
    assert trainer.train_env() == {}
    # ...the user's value is.
    monkeypatch.setenv(name, "5")
    assert trainer.train_env() == {name: "5"}


def test_a_trial_actor_takes_the_drivers_train_settings_before_anything_else(monkeypatch, tmp_path):
    """The trial driver sets what the driver handed it first: here a trial that ASHA had stopped
    before an interruption, which returns at once without training."""
    from types import SimpleNamespace

    from raykd.search import trial

    (name, _), = compat.train_env_defaults().items()
    monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(trial.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(trial, "stopped_at", lambda uri, trial_id: 2)
    assert _trial_driver({}, None, None, str(tmp_path), 4, "eval_f1", [], train_env={name: "5"}) is None
    assert os.environ[name] == "5"
