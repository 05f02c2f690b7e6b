import dataclasses
import pickle

import pytest

import raykd.tasks  # noqa: F401  (registers the tasks' checks, as every entry point does)
from raykd import config as config_mod
from raykd.config import ConfigError, RaykdConfig, load_config, replace, with_values


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_live_in_dataclasses_and_yaml_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, "distill:\n  temperature: 4\noptim:\n  learning_rate: 1e-4\n"))
    assert cfg.distill.temperature == 4.0 and isinstance(cfg.distill.temperature, float)
    assert cfg.optim.learning_rate == 1e-4
    assert cfg.distill.alpha_ce == RaykdConfig().distill.alpha_ce


def test_set_overrides_take_precedence(tmp_path):
    path = _write(tmp_path, "distill:\n  temperature: 4\n")
    cfg = load_config(path, ["distill.temperature=8", "models.init_from_teacher_layers=[0, 2]",
                             "data.max_train_samples=null"])
    assert cfg.distill.temperature == 8.0
    assert cfg.models.init_from_teacher_layers == [0, 2]


@pytest.mark.parametrize(
    "text, key",
    [
        ("distill:\n  temprature: 2\n", "distill.temprature"),
        ("optimizer:\n  lr: 1\n", "optimizer"),
        ("optim:\n  batch_size: sixteen\n", "optim.batch_size"),
        ("optim:\n  batch_size: 1.5\n", "optim.batch_size"),
        ("scaling:\n  use_gpu: 3\n", "scaling.use_gpu"),
        ("distill:\n  teacher_mode: sometimes\n", "distill.teacher_mode"),
        ("models:\n  init_from_teacher_layers: [0, x]\n", "models.init_from_teacher_layers[1]"),
        ("distill:\n  temperature: 0\n", "distill.temperature"),
        ("distill:\n  alpha_ce: 1.5\n", "distill.alpha_ce"),
        ("distill:\n  alpha_cos: 1.0\n", "distill.alpha_cos"),
        ("data:\n  doc_stride: 500\n", "data.doc_stride"),
    ],
)
def test_bad_keys_and_types_name_the_file_and_key(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert key in str(err.value) and path in str(err.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="distill.nope"):
        load_config(None, ["distill.nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["distill.temperature"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "missing.yaml"))


def test_round_trip_and_with_values():
    cfg = RaykdConfig()
    again = RaykdConfig.from_dict(cfg.to_dict())
    assert again == cfg
    trial = with_values(cfg, {"distill.temperature": 6.0, "optim.learning_rate": 3e-5})
    assert trial.distill.temperature == 6.0 and cfg.distill.temperature == 2.0


def test_shipped_search_spaces_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "search_spaces").glob("*.yaml")):
        load_config(str(path))


@pytest.mark.parametrize(
    "text, words",
    [
        ("", ["empty"]),
        ("- a\n", ["mapping"]),
        ("a: [1\n", ["line 2, column 1", "line 1, column 4"]),
        ("distill:\n  temperature: 2\n  temperature: 3\n", ["line 3, column 3", "twice"]),
        ("optim:\n  lr: 1\n", ["did you mean optim.learning_rate"]),
        ("optim:\n  temperature: 1\n", ["did you mean distill.temperature"]),
        ("optim:\n  learning_rate: .inf\n", ["finite"]),
        ("distill:\n  alpha_ce: 0\n  alpha_squad: 0\n", ["all 0"]),
        ("search:\n  name: a/b\n", ["search.name"]),
    ],
)
def test_config_file_problems_are_one_line_naming_the_place(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_non_utf8_config_and_unknown_set_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xff\xfe\x00data")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(str(p))
    with pytest.raises(ConfigError, match=r"--set optim\.lr: unknown key; did you mean optim\.learning_rate"):
        load_config(None, ["optim.lr=1"])


def test_grace_period_past_known_rounds_is_refused():
    from raykd.config import check_search_plan

    with pytest.raises(ConfigError, match="search.grace_period"):
        check_search_plan(RaykdConfig.from_dict({"search": {"rounds": 3, "grace_period": 4}}))
    with pytest.raises(ConfigError, match="2 rounds"):  # one round per epoch: ceil(num_epochs)
        check_search_plan(RaykdConfig.from_dict({"optim": {"num_epochs": 1.5}, "search": {"grace_period": 3}}))
    # Rounds that depend on the data size are checked once the features are counted.
    check_search_plan(RaykdConfig.from_dict({"optim": {"eval_every_steps": 5}, "search": {"grace_period": 30}}))
    check_search_plan(RaykdConfig.from_dict({"search": {"rounds": 3, "grace_period": 4, "scheduler": "fifo"}}))


def test_replace_coerces_each_value_to_its_field_type_and_keeps_the_messages():
    cfg = RaykdConfig(source="c.yaml")
    out = replace(cfg, {"optim.learning_rate": 1, "distill.alpha_squad": 0.25, "data.train_file": "t.json",
                        "models.teacher_finetune.num_epochs": 3, "scaling.resources_per_worker": {"node": 1}})
    # An int from Optuna is the float the field declares, as when a file is read.
    assert out.optim.learning_rate == 1.0 and isinstance(out.optim.learning_rate, float)
    assert isinstance(out.models.teacher_finetune.num_epochs, float) and out.distill.alpha_hard == 0.25
    assert out.data.train_file == "t.json" and out.scaling.resources_per_worker == {"node": 1.0}
    assert out.source == "c.yaml" and cfg == RaykdConfig(source="c.yaml")  # the original is unchanged
    assert cfg.replace(**{"optim.learning_rate": 1e-4}).optim.learning_rate == 1e-4
    assert replace(cfg, {"models": {"student": "s"}}).models == config_mod.ModelsConfig(student="s")  # whole
    # A key two levels into a mapping setting leaves the base config's mapping as it was.
    spaced = replace(cfg, {"space": {"x": {"type": "choice", "values": [1e-4]}}})
    changed = replace(spaced, {"space.x.values": [3e-4]})
    assert spaced.space["x"]["values"] == [1e-4] and changed.space["x"]["values"] == [3e-4]
    for flat, message in [
        ({"optim.lr": 1}, "c.yaml: optim.lr: unknown key; did you mean optim.learning_rate?"),
        ({"optimizer.x": 1}, "c.yaml: optimizer: unknown key"),
        ({"optim.batch_size": 1.5}, "c.yaml: optim.batch_size: expected an integer, got 1.5"),
        ({"data.train_file": 3}, "c.yaml: data.train_file: expected a string, got 3"),
        ({"distill.teacher_mode": "x"}, "c.yaml: distill.teacher_mode: must be one of ['cached', 'online']"),
    ]:
        with pytest.raises(ConfigError) as err:
            replace(cfg, flat)
        assert str(err.value).startswith(message)


def test_replace_does_not_validate_with_values_does():
    cfg = RaykdConfig()
    zero = {"distill.alpha_ce": 0.0, "distill.alpha_hard": 0.0}
    assert replace(cfg, zero).distill.alpha_ce == 0.0  # checked where a config enters, not here
    with pytest.raises(ConfigError, match="distill: alpha_ce, alpha_hard and alpha_cos are all 0"):
        with_values(cfg, zero)
    with pytest.raises(ConfigError, match="data.doc_stride: must be in"):  # the task's own check
        config_mod.validate(replace(cfg, {"data.doc_stride": 500}))


def test_a_config_is_a_frozen_value_that_pickles():
    cfg = load_config(None, ["optim.learning_rate=1e-4", "models.init_from_teacher_layers=[0, 2]"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.learning_rate = 1.0
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and again.optim.learning_rate == 1e-4


def test_validation_reads_the_registered_tasks():
    assert set(config_mod.task_names()) >= {"question_answering", "classification"}
    with pytest.raises(ConfigError, match="unknown task 'clasification'; did you mean classification"):
        RaykdConfig.from_dict({"task": "clasification"})


def test_config_imports_no_task_and_refuses_to_validate_without_them():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, raykd.config as c\n"
            "assert 'raykd.tasks' not in sys.modules, 'config imports the tasks'\n"
            "try:\n    c.load_config(None)\nexcept RuntimeError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert "import raykd.tasks" in out.stdout
