"""PerArchitectureScheduler inside a real Tune run (function trainables, no Train): Tune hands it
its metric/mode and every trial's config, and its decisions stop trials."""

import sys

import pytest
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from raykd.search.schedulers import PerArchitectureScheduler
from raykd.serving.architectures import key_of

pytestmark = pytest.mark.integration
LAYERS = "models.init_from_teacher_layers"
LARGE, SMALL = [0, 1, 2, 3, 4, 5], [0, 5]
ROUNDS = 4


def trainable(config):
    # Large students score 80-ish, small ones 40-ish, at every round; within a size, "quality".
    layers, quality = config["case"]
    base = 80.0 if len(layers) == 6 else 40.0
    for r in range(1, ROUNDS + 1):
        tune.report({"round": r, "eval_f1": base + quality + r})


class LayersOfCase:
    """The architecture key of this test's trials (a module-level class: Tune pickles the scheduler)."""

    def __call__(self, config):
        return key_of({LAYERS: config["case"][0]})


@pytest.fixture
def by_value():
    # The trainable is defined here; Ray's workers cannot import a test module by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def run(scheduler, tmp_path):
    # Large trials first, then small ones, one at a time: the order that hurts small students most.
    space = {"case": tune.grid_search([(arch, q) for arch in (LARGE, SMALL) for q in (3.0, 2.0, 1.0)])}
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric="eval_f1", mode="max", scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="fair", verbose=0),
    )
    grid = tuner.fit()
    return {(len(r.config["case"][0]), r.config["case"][1]): int(r.metrics["round"]) for r in grid}


def asha():
    return ASHAScheduler(time_attr="round", max_t=ROUNDS + 1, grace_period=1, reduction_factor=2)


def test_small_students_are_judged_among_themselves(local_ray, by_value, tmp_path):
    plain = run(asha(), tmp_path / "plain")
    # One ASHA for all sizes: every small student is stopped at the first rung.
    assert all(plain[(2, q)] == 1 for q in (3.0, 2.0, 1.0)), plain

    fair = run(PerArchitectureScheduler(LayersOfCase(), lambda key: asha(),
                                        [key_of({LAYERS: LARGE}), key_of({LAYERS: SMALL})]),
               tmp_path / "fair")
    # Per architecture: the first small student runs its whole schedule, as the first large one does.
    assert fair[(2, 3.0)] == ROUNDS and fair[(6, 3.0)] == ROUNDS, fair
