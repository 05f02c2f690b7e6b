"""What runs in a search's trial actor: the trial driver, and whether one actor may run several
trials. Tune unpickles the driver in every new trial actor, importing this module and what it
imports, so it imports only what a trial needs: Ray Tune and Train, raykd's config and the
driver side of training (no transformers, datasets, Optuna, MLflow or serving; a Pareto search's
architecture keys are imported when a trial has costs).
"""

from __future__ import annotations

import os
from typing import Any

import ray
import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from raykd import config, errors
from raykd.config import DISTILL, RaykdConfig
from raykd.errors import TrialFailed
from raykd.search.plan import Plan
from raykd.search.schedulers import stopped_at
from raykd.study.runspec import RunSpec, Study
from raykd.training import trainer as train


def reuse_actors(the_plan: Plan) -> bool:
    """Whether Tune may run the next trial in a finished trial's actor (``TuneConfig.reuse_actors``:
    one process start and one unpickling of the driver per search instead of per trial). Only
    when no trial is stopped early: a trial ASHA stops is still inside ``TorchTrainer.fit()``,
    which nothing in the actor can interrupt, so a reused actor would keep its Train run going
    and fail the next trial (Ray 2.60's function trainable gives a reset 2 s for the old trial to
    return). Without reuse Tune kills a stopped trial's actor, and its Train run with it."""
    return the_plan.grace is None


# Tune names a trial's actor and folder after the trainable (``_trial_driver_<id>``): benchmarks
# and the tracking callback read that name.
def _trial_driver(values: dict[str, Any], base: RaykdConfig, study: Study, runs_path: str,
                  rounds: int, keep_by: str, study_keys: list[str], broker=None,
                  costs: dict[str, dict[str, float]] | None = None, stopped_uri: str | None = None,
                  train_env: dict[str, str] | None = None) -> None:
    """One trial: the sampled values on top of the base config, run by a TorchTrainer whose
    reports become this trial's Tune results. The Train run is named after the trial, so a
    resumed trial continues from its own checkpoint. ``costs``: each architecture's measured
    serving costs (a Pareto search), of which the trial reports its own. A trial ASHA already
    stopped (a resume after a hard kill whose saved state still had it running) trains nothing:
    it returns at once, and Tune ends it with the results it had. Keeps nothing between calls: a
    reused actor (:func:`reuse_actors`) runs the next trial afresh. ``train_env``: the Ray Train
    settings the user set in the driver's environment (:func:`raykd.training.trainer.train_env`),
    set here because Train passes them on from the process that calls ``fit()``, and this actor
    is that process."""
    os.environ.update(train_env or {})
    trial_id = tune.get_context().get_trial_id()
    stopped = stopped_at(stopped_uri, trial_id)
    if stopped is not None:
        print(f"[raykd] trial {trial_id} was stopped by ASHA after round {stopped} before the interruption: "
              "not trained further", flush=True)
        return
    # The one check of this trial's config: the base was validated when it loaded.
    cfg = config.validate(config.replace(base, values))
    if study_keys:
        study = ray.get(broker.get.remote({k: values[k] for k in study_keys}))
    mine = None
    if costs:
        from raykd.serving import architectures

        mine = costs.get(architectures.key_of(architectures.of_config(cfg)))
        if mine is None:
            raise TrialFailed(f"architecture {architectures.describe(architectures.of_config(cfg))} was not "
                              "measured before the search")
    trainer = train.build_trainer(
        RunSpec.of(cfg, DISTILL, study, eval_rounds=rounds, costs=mine), name=trial_id,
        storage_path=runs_path, callbacks=[TuneReportCallback()], keep_by=keep_by,
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        # Train's error carries every worker's traceback; the trial's error says why in one line
        # (the traceback stays in the Train run's logs).
        causes = getattr(exc, "worker_failures", None) or {"": exc}
        raise TrialFailed("; ".join(sorted({errors.reason(e) for e in causes.values()}))) from None
