"""What a search's trial actor and Train's controller pay before a trial trains: the trial driver
and the train entry point are pickled by reference to light modules (no transformers, datasets,
Optuna, MLflow or serving imported to unpickle them), a trial actor is reused only where no trial
is stopped early, and the controller's poll interval is raykd's unless the user set one. No Ray
cluster is started."""

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
    setting: the driver hands its value to each trial actor, and whichever process builds a
    TorchTrainer holds it when it calls fit(), which hands it to Train's controller."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from raykd.config import DISTILL, RaykdConfig
    from raykd.study.runspec import RunSpec, Study

    (name, value), = compat.train_env_defaults().items()
    monkeypatch.delenv(name, raising=False)
    assert trainer.train_env() == {name: value}  # what a trial actor is given
    monkeypatch.setenv(name, "5")
    assert trainer.train_env() == {name: "5"}  # the user's, where they set one
    monkeypatch.delenv(name)
    study = Study(prepared="/p", teacher_file=None, teacher=None, tokenizer="tok")
    trainer.build_trainer(RunSpec.of(RaykdConfig.from_dict({}), DISTILL, study), "poll", storage_path=str(tmp_path))
    assert get_env_vars_to_propagate()[name] == value
