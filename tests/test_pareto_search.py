"""The Pareto search end to end: the student's depth searched with the distillation settings,
each architecture's latency measured once before the trials, Optuna told [F1, latency] per trial,
one ASHA per architecture, the front in the summary, and every front point exported to ONNX and
registered in MLflow with its costs; the best within the latency budget gets the alias. Also the
pieces the search is built from: layer lists in the space, the architecture keys, the summary's
front and budget pick, the objectives' checks."""

import json
from pathlib import Path

import optuna
import pytest
import yaml

from raykd import spaces
from raykd.config import ConfigError, RaykdConfig, load_config
from raykd.search import report
from raykd.search import summary as summaries
from raykd.search.plan import Plan
from raykd.serving import architectures, pareto

# --- pieces -------------------------------------------------------------------------------------

LAYERS = [[0], [0, 1, 2, 3]]


def test_layer_lists_are_chosen_through_optuna_as_text_and_reach_the_trial_as_lists():
    params = spaces.parse({"models.init_from_teacher_layers": {"type": "choice", "values": LAYERS}}, "s.yaml")
    (p,) = params
    assert spaces.encoded(p)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(6):
        trial = study.ask()
        fixed = spaces.define_by_run(params)(trial)
        assert trial.params["models.init_from_teacher_layers"] in ("[0]", "[0, 1, 2, 3]")
        seen.append(fixed["models.init_from_teacher_layers"])
        study.tell(trial, 0.0)
    assert all(v in LAYERS for v in seen) and len({json.dumps(v) for v in seen}) == 2
    point = spaces.optuna_point({"models.init_from_teacher_layers": [0], "optim.learning_rate": 1e-3}, params)
    assert point == {"models.init_from_teacher_layers": "[0]", "optim.learning_rate": 1e-3}


def test_every_architecture_of_a_space_is_enumerated_once_and_keyed_like_a_trial():
    base = RaykdConfig.from_dict({"models": {"init_from_teacher_layers": [0, 1], "init_from": "base"}})
    params = spaces.parse({"models.init_from_teacher_layers": {"type": "choice", "values": LAYERS + [[0]]},
                           "distill.temperature": {"type": "uniform", "low": 1, "high": 4}}, "s.yaml")
    archs = architectures.all_of(params, base)
    assert [a["models.init_from_teacher_layers"] for a in archs] == LAYERS
    assert all(a["models.init_from"] == "base" for a in archs)
    key_of = architectures.KeyOf(architectures.of_config(base))
    trial_config = {"models.init_from_teacher_layers": [0, 1, 2, 3], "distill.temperature": 2.0}
    assert key_of(trial_config) == architectures.key_of(archs[1])
    with pytest.raises(spaces.SpaceError, match="cannot be searched together with serving costs"):
        architectures.check_space(spaces.parse({"data.max_length": {"type": "choice", "values": [64, 128]}}), "s.yaml")


@pytest.mark.parametrize("objectives, words", [
    (["eval_f1"], ["one score", "at least one cost"]),
    (["eval_f1", "eval_exact_match", "latency_ms"], ["one score"]),
    (["eval_f1", "speed"], ["'speed' is neither a score"]),
    (["eval_f1", "latency_ms", "latency_ms"], ["given twice"]),
])
def test_objectives_are_checked(objectives, words):
    with pytest.raises(ConfigError) as err:
        RaykdConfig.from_dict({"search": {"objectives": objectives}}, source="s.yaml")
    for word in words:
        assert word in str(err.value)
    with pytest.raises(ConfigError, match="search.metric: 'eval_exact_match', but search.objectives scores 'eval_f1'"):
        RaykdConfig.from_dict({"search": {"objectives": ["eval_f1", "latency_ms"], "metric": "eval_exact_match"}})
    with pytest.raises(ConfigError, match="max_latency_ms: must be > 0"):
        RaykdConfig.from_dict({"search": {"max_latency_ms": 0}})


def test_a_searched_architecture_key_no_trial_reads_is_refused():
    layers = {"type": "choice", "values": LAYERS}
    students = {"type": "choice", "values": ["a", "b"]}
    copying = RaykdConfig.from_dict({"models": {"init_from_teacher_layers": [0, 1]}}, source="s.yaml")
    whole = RaykdConfig.from_dict({}, source="s.yaml")
    # Every trial copies layers: the student checkpoint would only name the tokenizer.
    with pytest.raises(spaces.SpaceError, match="space.models.student: every trial builds its student from teacher"):
        architectures.check_effective(spaces.parse({"models.student": students}), copying)
    with pytest.raises(spaces.SpaceError, match="space.models.student"):
        architectures.check_effective(spaces.parse({"models.student": students,
                                                    "models.init_from_teacher_layers": layers}), whole)
    # No trial copies layers: the layer source is never read.
    with pytest.raises(spaces.SpaceError, match="space.models.init_from: no trial copies teacher layers"):
        architectures.check_effective(spaces.parse({"models.init_from": students}), whole)
    # Read by some trials: accepted.
    mixed = {"type": "choice", "values": [None, [0, 1]]}
    architectures.check_effective(spaces.parse({"models.student": students, "models.init_from_teacher_layers": mixed}),
                                  whole)
    architectures.check_effective(spaces.parse({"models.init_from": students}), copying)
    architectures.check_effective(spaces.parse({"models.student": students}), whole)


def test_a_budget_alone_leaves_the_students_that_cannot_win_out_of_the_space():
    space = {"models.init_from_teacher_layers": {"type": "choice", "values": LAYERS + [[0, 1]]},
             "distill.temperature": {"type": "uniform", "low": 1, "high": 4}}
    cfg = RaykdConfig.from_dict({"models": {"init_from_teacher_layers": [0, 1]}, "search": {"max_latency_ms": 5.0},
                                 "space": space}, source="s.yaml")
    params = spaces.parse(cfg.space, cfg.source)
    archs = architectures.all_of(params, cfg)
    ms = {1: 2.0, 4: 8.0, 2: 4.0}
    costs = {architectures.key_of(a): {"latency_ms": ms[len(a["models.init_from_teacher_layers"])]} for a in archs}
    new, dropped = architectures.within_budget(cfg, params, costs, 5.0)
    assert new["models.init_from_teacher_layers"]["values"] == [[0], [0, 1]]
    assert new["distill.temperature"] == space["distill.temperature"]
    assert dropped == ["space.models.init_from_teacher_layers: [0, 1, 2, 3] left out: 8.0 ms > search.max_latency_ms 5"]
    over = RaykdConfig.from_dict({**cfg.to_dict(), "search": {"max_latency_ms": 5.0, "points_to_evaluate": [
        {"models.init_from_teacher_layers": [0, 1, 2, 3], "distill.temperature": 2.0}]}}, source="s.yaml")
    with pytest.raises(architectures.CostError, match="points_to_evaluate entry .* 8.0 ms here, over"):
        architectures.within_budget(over, params, costs, 5.0)


def test_a_second_sampler_needs_objectives():
    with pytest.raises(ConfigError, match="search.sampler: 'nsga2' is the sampler of a multi-objective search"):
        RaykdConfig.from_dict({"search": {"sampler": "nsga2"}}, source="s.yaml")
    RaykdConfig.from_dict({"search": {"sampler": "nsga2", "objectives": ["eval_f1", "latency_ms"]}})


def _row(tid, f1, latency, status="COMPLETED"):
    return {"trial_id": tid, "status": status, "eval_f1": f1, "eval_exact_match": f1 - 5, "latency_ms": latency,
            "params": latency * 1e5, "size_mb": latency, "stopped_early": status == "STOPPED"}


def test_the_summary_front_and_the_best_within_the_budget():
    rows = [_row("a", 50, 10), _row("b", 60, 20), _row("c", 55, 25), _row("d", 40, 5, "STOPPED"),
            _row("e", 70, 40), {**_row("f", 99, 1), "status": "FAILED"}]
    plan = Plan(4, 2, "best", "eval_f1", [("eval_f1", "eval_f1")], [("eval_f1", "max"), ("latency_ms", "min")],
                       max_latency_ms=22.0)

    # summarize reads Tune results; its front/budget logic is checked on rows directly.
    out = summaries._front_and_best(rows, plan)
    assert out["front"] == ["e", "b", "a", "d"]
    assert out["best"]["trial_id"] == "b" and out["over_budget"] == ["c", "e"]
    objs = pareto.objectives(plan.objectives)
    scored = [r for r in rows if r["status"] != "FAILED"]
    for tid in out["front"]:
        assert not pareto.dominators(next(r for r in rows if r["trial_id"] == tid), scored, objs)
    text = report.format_front({**out, "trials": rows, "scores": ["eval_f1", "eval_exact_match"]})
    assert text.splitlines()[0].startswith("Pareto front (eval_f1 max vs latency_ms min): 4 of 6 trials")
    nothing = summaries._front_and_best(rows, Plan(4, 2, "best", "eval_f1", [], [("eval_f1", "max")],
                                                       max_latency_ms=1.0))
    assert nothing["best"] is None and "front" not in nothing


# --- the search, end to end ---------------------------------------------------------------------


@pytest.mark.integration
def test_a_two_objective_search_finds_registers_and_exports_its_front(local_ray, tmp_path, tiny_models):
    pytest.importorskip("onnxruntime")
    from mlflow import MlflowClient

    from raykd import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = {
        "data": {"synthetic": True, "synthetic_train_size": 160, "synthetic_eval_size": 32, "max_length": 64,
                 "doc_stride": 24, "cache_dir": str(tmp_path / "cache")},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["bert"]),
                   "init_from_teacher_layers": [0, 1]},
        "optim": {"num_epochs": 1, "batch_size": 16, "warmup_ratio": 0.0},
        # Both depths, and a shallow trial that learns too slowly, for the shallow ASHA to stop.
        "search": {"name": "pareto", "storage_path": str(tmp_path / "results"), "num_samples": 3, "rounds": 2,
                   "grace_period": 1, "seed": 0, "n_startup_trials": 2, "objectives": ["eval_f1", "latency_ms"],
                   "max_latency_ms": 10000.0,
                   "points_to_evaluate": [
                       {"optim.learning_rate": 3e-3, "models.init_from_teacher_layers": [0]},
                       {"optim.learning_rate": 1e-3, "models.init_from_teacher_layers": [0, 1, 2, 3]},
                       {"optim.learning_rate": 1e-4, "models.init_from_teacher_layers": [0]}]},
        "latency": {"runs": 5, "warmup_runs": 1, "threads": 1},
        "tracking": {"tracking_uri": uri, "experiment_name": "pareto", "registered_model_name": "pareto-student"},
        "space": {"optim.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 3e-3},
                  "models.init_from_teacher_layers": {"type": "choice", "values": LAYERS}},
    }
    path = tmp_path / "pareto.yaml"
    path.write_text(yaml.safe_dump(raw))
    summary = run.search(load_config(str(path)))
    rows = [r for r in summary["trials"] if r["status"] in ("COMPLETED", "STOPPED")]
    assert len(rows) == 3
    # Each trial carries its architecture's measured latency: one number per depth, deeper is slower.
    by_depth = {}
    for r in rows:
        by_depth.setdefault(len(r["models.init_from_teacher_layers"]), set()).add(r["latency_ms"])
    assert all(len(v) == 1 for v in by_depth.values()) and len(by_depth) == 2
    assert min(by_depth[1]) < min(by_depth[4])
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 2  # both depths, measured once
    # The front: non-empty, and no trial dominates a point of it.
    objs = pareto.objectives([("eval_f1", "max"), ("latency_ms", "min")])
    assert summary["front"]
    for tid in summary["front"]:
        point = next(r for r in rows if r["trial_id"] == tid)
        assert not pareto.dominators(point, rows, objs)
    # Optuna was told [score, latency] for every trial that ran its schedule; stopped ones PRUNED.
    study = optuna.load_study(study_name="pareto", storage=f"sqlite:///{summary['experiment_path']}/optuna.db")
    for t in study.trials:
        assert t.state.name in ("COMPLETE", "PRUNED")
        if t.state.name == "COMPLETE":
            assert len(t.values) == 2
    assert sum(t.state.name == "PRUNED" for t in study.trials) == sum(r["stopped_early"] for r in rows) == 1
    # Every front point is a registered version with its costs and score, carrying its ONNX file;
    # the best within the budget has the alias.
    client = MlflowClient(tracking_uri=uri)
    versions = client.search_model_versions("name='pareto-student'")
    tagged = {v.tags["trial_id"]: v for v in versions}
    assert set(tagged) == set(summary["front"])
    for tid, v in tagged.items():
        row = next(r for r in rows if r["trial_id"] == tid)
        assert float(v.tags["latency_ms"]) == pytest.approx(row["latency_ms"], rel=1e-3)
        assert float(v.tags["eval_f1"]) == pytest.approx(row["eval_f1"], abs=1e-3)
        assert int(float(v.tags["params"])) > 0 and v.tags["onnx_parity_ok"] == "true"
        import mlflow

        mlflow.set_tracking_uri(uri)
        local = mlflow.artifacts.download_artifacts(artifact_uri=v.source, dst_path=str(tmp_path / f"dl-{tid}"))
        assert list(Path(local).rglob("model.onnx")), f"version {v.version} carries no ONNX file"
    alias = client.get_model_version_by_alias("pareto-student", "within-budget")
    assert alias.tags["trial_id"] == summary["best"]["trial_id"]
    # Each trial's run carries its architecture's costs beside its scores.
    trial_runs = client.search_runs([client.get_experiment_by_name("pareto").experiment_id],
                                    "tags.`raykd.kind` = 'trial'")
    assert len(trial_runs) == 3 and all(r.data.metrics.get("latency_ms", 0) > 0 for r in trial_runs)


def test_a_pareto_best_breaks_score_ties_on_cost_and_a_budget_nothing_meets_is_refused():
    rows = [_row("slow", 50, 30), _row("fast", 50, 10), _row("worse", 40, 5)]
    plan = Plan(4, 2, "best", "eval_f1", [], [("eval_f1", "max"), ("latency_ms", "min")])
    out = summaries._front_and_best(rows, plan)
    assert out["best"]["trial_id"] == "fast" and "slow" not in out["front"]
    with pytest.raises(architectures.CostError, match="the fastest takes 5.0 ms"):
        architectures.check_budget({"a": {"latency_ms": 5.0}, "b": {"latency_ms": 9.0}}, 4.0, "s.yaml")
    architectures.check_budget({"a": {"latency_ms": 5.0}}, 5.0, "s.yaml")
    with pytest.raises(spaces.SpaceError, match="space.models.teacher: cannot be searched together with serving costs"):
        architectures.check_space(spaces.parse({"models.teacher": {"type": "choice", "values": ["a", "b"]}}), "s.yaml")
    with pytest.raises(spaces.SpaceError, match="latency.runs"):
        spaces.check_keys(spaces.parse({"latency.runs": {"type": "choice", "values": [5, 10]}}), "s.yaml")


def test_a_search_with_no_student_within_its_budget_takes_the_alias_away(tmp_path, monkeypatch):
    # An earlier search registered a version under the alias; this one has a budget and no best.
    import mlflow
    from mlflow import MlflowClient

    from raykd.tracking import registry, runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # MLflow keeps the tracking URI in the environment too: both are restored after the test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.create_registered_model("student")
        (tmp_path / "model").mkdir()
        version = client.create_model_version("student", source=str(tmp_path / "model")).version
        client.set_registered_model_alias("student", registry.BUDGET_ALIAS, version)
        run = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri()))
        cfg = RaykdConfig.from_dict({"tracking": {"registered_model_name": "student"}})
        summary = {"metric": "eval_f1", "scores": ["eval_f1"], "trials": [], "best": None, "max_latency_ms": 1.0,
                   "front": [], "objectives": [["eval_f1", "max"], ["latency_ms", "min"]]}
        out = runs.finish_study(run.info.run_id, summary, cfg, None, [])
        assert out["alias_removed"] == registry.BUDGET_ALIAS
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_model_version_by_alias("student", registry.BUDGET_ALIAS)
        assert runs.finish_study(run.info.run_id, summary, cfg, None, [])["alias_removed"] is None  # none left
        # Parameters are tagged as an exact count.
        assert registry.cost_tags({"params": 22_713_090.0, "latency_ms": 8.31234}) == {
            "params": "22713090", "latency_ms": "8.312"}
    finally:
        mlflow.set_tracking_uri(before)
