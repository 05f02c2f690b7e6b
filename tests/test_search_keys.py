"""What a searched key does to a trial (honoured / a study per value / refused before Ray starts),
the evaluation rounds at fractions of each trial's own schedule, and the grace period that keeps
late bloomers. Pure functions: no Ray."""

from pathlib import Path

import pytest

from raykd import spaces
from raykd.config import ConfigError, RaykdConfig, load_config
from raykd.search import plan as planning
from raykd.search import searchers
from raykd.search import summary as summaries
from raykd.training import schedule

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("key,effect", [
    ("distill.temperature", "trial"), ("distill.alpha_ce", "trial"), ("optim.learning_rate", "trial"),
    ("optim.batch_size", "trial"), ("optim.num_epochs", "trial"), ("optim.warmup_ratio", "trial"),
    ("models.init_from_teacher_layers", "trial"), ("data.n_best", "trial"),
    ("data.max_length", "study"), ("data.doc_stride", "study"), ("data.max_train_samples", "study"),
    ("models.teacher", "study"), ("models.student", "study"), ("distill.teacher_mode", "study"),
    ("data.validation_file", "rejected"), ("data.dataset_name", "rejected"), ("data.max_eval_samples", "rejected"),
    ("data.synthetic_eval_size", "rejected"), ("data.cache_dir", "rejected"), ("optim.eval_every_steps", "rejected"),
    ("models.teacher_finetune.base", "rejected"), ("scaling.num_workers", "rejected"),
    ("search.num_samples", "rejected"), ("tracking.enabled", "rejected"),
])
def test_key_effect(key, effect):
    assert spaces.key_effect(key) == effect


def test_rejected_keys_name_the_key_and_why():
    params = spaces.parse({"optim.eval_every_steps": {"type": "choice", "values": [5, 10]}}, "s.yaml")
    with pytest.raises(spaces.SpaceError, match=r"s.yaml: space.optim.eval_every_steps: cannot be searched.*search.rounds"):
        spaces.check_keys(params, "s.yaml")
    params = spaces.parse({"data.validation_file": {"type": "choice", "values": ["a.json", "b.json"]}}, "s.yaml")
    with pytest.raises(spaces.SpaceError, match="not be comparable"):
        spaces.check_keys(params, "s.yaml")


def test_study_keys_and_constants():
    params = spaces.parse({
        "data.doc_stride": {"type": "choice", "values": [32, 64]},
        "data.max_length": 128,
        "distill.temperature": {"type": "uniform", "low": 1, "high": 4},
    })
    assert spaces.study_keys(params) == ["data.doc_stride"]  # the constant is in the base study
    assert spaces.constants(params) == {"data.max_length": 128}


def test_corners_refused_before_ray_starts():
    base = RaykdConfig.from_dict({"data": {"max_length": 96, "doc_stride": 32}}, source="s.yaml")
    params = spaces.parse({"data.doc_stride": {"type": "qint", "low": 32, "high": 128, "step": 32}}, "s.yaml")
    with pytest.raises(spaces.SpaceError, match=r"space.data.doc_stride: value 128 makes an invalid config"):
        spaces.check_corners(base, params)
    ok = spaces.parse({"data.doc_stride": {"type": "qint", "low": 16, "high": 64, "step": 16}})
    spaces.check_corners(base, ok)
    # Each end is valid on the base config (max_length 384), but a trial may sample 128 with 192.
    base = RaykdConfig.from_dict({"data": {"max_length": 384, "doc_stride": 64}}, source="s.yaml")
    joint = spaces.parse({"data.max_length": {"type": "choice", "values": [128, 384]},
                          "data.doc_stride": {"type": "int", "low": 64, "high": 192}}, "s.yaml")
    with pytest.raises(spaces.SpaceError, match=r"'data.max_length': 128, 'data.doc_stride': 192"):
        spaces.check_corners(base, joint)
    spaces.check_corners(base, spaces.parse({"data.max_length": {"type": "choice", "values": [256, 384]},
                                             "data.doc_stride": {"type": "int", "low": 64, "high": 192}}))


def test_teacher_logits_prepared_when_any_point_distils():
    base = RaykdConfig.from_dict({"distill": {"alpha_ce": 0.0, "alpha_squad": 1.0}})
    assert not spaces.may_use_teacher_logits(base, [])
    searched = spaces.parse({"distill.alpha_ce": {"type": "uniform", "low": 0.0, "high": 1.0}})
    assert spaces.may_use_teacher_logits(base, searched)
    tied = spaces.parse({"distill.alpha_squad": {"type": "uniform", "low": 0.5, "high": 1.0},
                         "distill.alpha_ce": {"type": "complement", "of": "distill.alpha_squad"}})
    assert spaces.may_use_teacher_logits(base, tied)  # alpha_ce = 1 - alpha_squad reaches 0.5
    online = RaykdConfig.from_dict({"distill": {"teacher_mode": "online"}})
    assert not spaces.may_use_teacher_logits(online, searched)


@pytest.mark.parametrize("total,rounds", [(100, 6), (7, 3), (5, 8), (1, 4), (53, 53)])
def test_eval_points_fall_at_fractions_of_the_run(total, rounds):
    points = schedule.eval_points(total, every=999, rounds=rounds)
    assert points[total] == rounds  # the last step is the last round, always
    assert all(1 <= s <= total for s in points)
    for step, k in points.items():
        assert step == max(1, -(-k * total // rounds))  # ceil(k/R of this run's own steps)
    assert sorted(points.values()) == list(points.values())


def test_eval_points_every_k_steps_without_rounds():
    assert schedule.eval_points(10, every=4) == {4: 1, 8: 2, 10: 3}
    assert schedule.eval_points(8, every=4) == {4: 1, 8: 2}


def test_two_batch_sizes_report_the_same_rounds():
    base = RaykdConfig.from_dict({"optim": {"num_epochs": 1, "batch_size": 16}})
    for bs in (4, 16):
        cfg = RaykdConfig.from_dict({"optim": {"num_epochs": 1, "batch_size": bs}})
        _, total, every = schedule.schedule(cfg, 400, 1)
        assert max(schedule.eval_points(total, every, rounds=6).values()) == 6
    del base


def _cfg(search=None, optim=None):
    return RaykdConfig.from_dict({"search": search or {}, "optim": optim or {}}, source="s.yaml")


def test_default_grace_lies_past_warmup_and_min_share():
    p = planning.plan(_cfg({"rounds": 6}, {"warmup_ratio": 0.1}), [], 1000)
    assert (p.rounds, p.grace) == (6, 3)  # half of 6 rounds
    p = planning.plan(_cfg({"rounds": 10, "min_share_before_stop": 0.2}, {"warmup_ratio": 0.35}), [], 1000)
    assert p.grace == 4  # warm-up (35 %) dominates: round 4 of 10 is the first past it
    searched = spaces.parse({"optim.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.6}})
    assert planning.plan(_cfg({"rounds": 10, "min_share_before_stop": 0.2}), searched, 1000).grace == 6


def test_explicit_grace_wins_with_a_warning_inside_warmup():
    said = []
    p = planning.plan(_cfg({"rounds": 8, "grace_period": 1}, {"warmup_ratio": 0.3}), [], 1000, warn=said.append)
    assert p.grace == 1 and said and "warm-up" in said[0]
    with pytest.raises(ConfigError, match="s.yaml: search.grace_period: 5 is past the last of the 4 rounds"):
        planning.plan(_cfg({"rounds": 4, "grace_period": 5}), [], 1000)
    # Rounds that only the features decide (2 epochs x 10 steps / 5): refused once they are counted.
    with pytest.raises(ConfigError, match="search.grace_period: 30 is past the last of the 4 rounds"):
        planning.plan(_cfg({"grace_period": 30}, {"num_epochs": 2, "batch_size": 10, "eval_every_steps": 5}), [], 100)
    # Without ASHA a grace period stops nothing and is left alone, as the config's check leaves it.
    assert planning.plan(_cfg({"rounds": 4, "grace_period": 5, "scheduler": "fifo"}), [], 1000).grace is None


def test_no_rung_before_the_last_round_means_no_early_stopping():
    assert planning.plan(_cfg({"rounds": 1}), [], 1000).grace is None
    assert planning.plan(_cfg({"rounds": 4, "min_share_before_stop": 1.0}), [], 1000).grace is None
    assert planning.plan(_cfg({"rounds": 8, "scheduler": "fifo"}), [], 1000).grace is None


def test_rounds_default_to_the_base_schedule():
    cfg = _cfg({}, {"num_epochs": 2, "batch_size": 10, "eval_every_steps": 5})
    assert planning.plan(cfg, [], 100).rounds == 4  # 2 epochs x 10 steps / 5


@pytest.mark.parametrize("name", ["quickstart.yaml", "distilbert_squad.yaml", "bert_small_squad.yaml",
                                  "sst2_quickstart.yaml", "sst2_bert_tiny.yaml"])
def test_shipped_spaces_first_rung_is_past_warmup(name):
    cfg = load_config(str(ROOT / "search_spaces" / name))
    params = spaces.parse(cfg.space, cfg.source)
    spaces.check_keys(params, cfg.source, cfg.task)
    spaces.check_corners(cfg, params)
    p = planning.plan(cfg, params, 10_000, warn=pytest.fail)
    assert p.grace is not None, "the shipped space should stop bad trials early"
    warm = spaces.largest(params, cfg, "optim.warmup_ratio")
    assert p.grace / p.rounds >= max(warm, cfg.search.min_share_before_stop)
    assert p.grace < p.rounds


def _searcher(trial_score):
    import optuna

    params = spaces.parse({"distill.temperature": {"type": "uniform", "low": 1, "high": 4}})
    s = searchers.TruthfulOptunaSearch(space=spaces.define_by_run(params), metric="eval_f1", mode="max",
                                    sampler=optuna.samplers.RandomSampler(seed=0), trial_score=trial_score)
    return s


def _feed(s, trial_id, f1s, final):
    s.suggest(trial_id)
    for r, f1 in enumerate(f1s[:-1], start=1):
        s.on_trial_result(trial_id, {"round": r, "eval_f1": f1, "training_iteration": r, "final": False})
    last = {"round": len(f1s), "eval_f1": f1s[-1], "training_iteration": len(f1s), "final": final}
    s.on_trial_complete(trial_id, result=last)
    return s.study.trials[-1]


@pytest.mark.parametrize("rule,expected", [("best", 30.0), ("last", 20.0)])
def test_optuna_is_told_the_trial_score(rule, expected):
    s = _searcher(rule)
    done = _feed(s, "a", [10.0, 30.0, 20.0], final=True)
    assert done.state.name == "COMPLETE" and done.value == expected
    assert done.intermediate_values[3] == expected  # the last round, reported once
    pruned = _feed(s, "b", [10.0, 30.0, 20.0], final=False)
    # Optuna records a pruned trial's last intermediate value as its value: the score again.
    assert pruned.state.name == "PRUNED" and pruned.value == expected
    assert pruned.intermediate_values[max(pruned.intermediate_values)] == expected


def test_summary_score_row_by_rule():
    import pandas as pd

    df = pd.DataFrame({"round": [1, 2, 3, 4], "eval_f1": [10.0, 30.0, 30.0, 20.0]})
    assert int(summaries.trial_score(df, "best", "eval_f1")["round"]) == 3  # ties: the latest (its checkpoint was kept)
    assert int(summaries.trial_score(df, "last", "eval_f1")["round"]) == 4
