import optuna
import pytest

from raykd import spaces
from raykd.config import load_config


def _params(space):
    return spaces.parse(space, "s.yaml")


def test_translation_to_optuna_define_by_run():
    params = _params({
        "distill.temperature": {"type": "uniform", "low": 1, "high": 8},
        "optim.learning_rate": {"type": "loguniform", "low": "1e-5", "high": 1e-4},
        "optim.batch_size": {"type": "choice", "values": [8, 16]},
        "data.doc_stride": {"type": "qint", "low": 32, "high": 128, "step": 32},
        "distill.alpha_ce": {"type": "uniform", "low": 0, "high": 1},
        "distill.alpha_squad": {"type": "complement", "of": "distill.alpha_ce"},
        "optim.warmup_ratio": 0.2,
    })
    fn = spaces.define_by_run(params)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        fixed = fn(trial)
        p = trial.params
        assert 1 <= p["distill.temperature"] <= 8
        assert 1e-5 <= p["optim.learning_rate"] <= 1e-4
        assert p["optim.batch_size"] in (8, 16)
        assert p["data.doc_stride"] in (32, 64, 96, 128)
        assert fixed["distill.alpha_squad"] == pytest.approx(1 - p["distill.alpha_ce"])
        assert fixed["optim.warmup_ratio"] == 0.2
        study.tell(trial, 0.0)
    assert isinstance(study.trials[0].distributions["optim.learning_rate"], optuna.distributions.FloatDistribution)
    assert study.trials[0].distributions["optim.learning_rate"].log
    assert spaces.searched_keys(params) == ["distill.temperature", "optim.learning_rate", "optim.batch_size",
                                            "data.doc_stride", "distill.alpha_ce"]


@pytest.mark.parametrize(
    "space, key, msg",
    [
        ({"distill.temprature": {"type": "uniform", "low": 1, "high": 2}}, "distill.temprature", "unknown config field"),
        ({"distill.temperature": {"type": "uniform", "low": 3, "high": 3}}, "distill.temperature", "must be < high"),
        ({"optim.learning_rate": {"type": "loguniform", "low": 0, "high": 1e-3}}, "optim.learning_rate", "low > 0"),
        ({"distill.alpha_ce": {"type": "uniform", "low": 0, "high": 1.5}}, "distill.alpha_ce", "[0, 1]"),
        ({"distill.alpha_ce": {"type": "uniform", "low": -0.1, "high": 1}}, "distill.alpha_ce", "[0, 1]"),
        ({"distill.alpha_ce": 2.0}, "distill.alpha_ce", "[0, 1]"),
        ({"distill.temperature": {"type": "uniform", "low": 0, "high": 4}}, "distill.temperature", "> 0"),
        ({"distill.temperature": {"type": "choice", "values": [2, -1]}}, "distill.temperature", "> 0"),
        ({"distill.temperature": {"type": "gaussian", "low": 1, "high": 2}}, "distill.temperature", "type must be"),
        ({"optim.batch_size": {"type": "int", "low": 8}}, "optim.batch_size", "missing 'high'"),
        ({"distill.temperature": {"type": "int", "low": 1, "high": 4}}, "distill.temperature", "non-integer"),
        ({"optim.batch_size": {"type": "choice", "values": []}}, "optim.batch_size", "non-empty"),
        ({"distill.alpha_squad": {"type": "complement", "of": "distill.alpha_ce"}}, "distill.alpha_squad",
         "not searched"),
        ({"distill.teacher_mode": "sometimes"}, "distill.teacher_mode", "must be one of"),
        ({"distill": {"type": "uniform", "low": 0, "high": 1}}, "distill", "unknown config field"),
    ],
)
def test_bad_spaces_name_file_and_key(space, key, msg):
    with pytest.raises(spaces.SpaceError) as err:
        spaces.parse(space, "s.yaml")
    assert f"s.yaml: space.{key}" in str(err.value) and msg in str(err.value)


def test_points_to_evaluate_are_checked():
    params = _params({"distill.temperature": {"type": "uniform", "low": 1, "high": 8}})
    spaces.check_point({"distill.temperature": 2.0}, params, "s.yaml")
    with pytest.raises(spaces.SpaceError, match="outside"):
        spaces.check_point({"distill.temperature": 9.0}, params, "s.yaml")
    with pytest.raises(spaces.SpaceError, match="exactly"):
        spaces.check_point({"optim.learning_rate": 1e-4}, params, "s.yaml")


def test_shipped_spaces_are_valid():
    from pathlib import Path

    files = sorted((Path(__file__).parents[1] / "search_spaces").glob("*.yaml"))
    assert files
    for path in files:
        cfg = load_config(str(path))
        params = spaces.parse(cfg.space, str(path))
        assert spaces.searched_keys(params)
        for point in cfg.search.points_to_evaluate:
            spaces.check_point(point, params, str(path))
