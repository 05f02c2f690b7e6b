"""Real Ray Train runs (on the session's local Ray) with tiny models built from configs."""

import shutil

import helpers
import pytest
import ray
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from raykd.config import RaykdConfig
from raykd.prepare import prepare_study
from raykd.study.runspec import RunSpec
from raykd.tasks.qa.metrics import METRIC
from raykd.training import trainer as train

# The session's one local Ray (conftest.local_ray).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]


def _cfg(tmp_path, teacher, student, **over):
    raw = {
        "data": {"synthetic": True, "synthetic_train_size": 160, "synthetic_eval_size": 40,
                 "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(teacher), "student": str(student)},
        "distill": {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5},
        "optim": {"learning_rate": 2e-3, "num_epochs": 3, "batch_size": 16, "warmup_ratio": 0.0},
        # Keep every round's checkpoint: Train V2 keeps per-round metrics only with them.
        "search": {"storage_path": str(tmp_path / "results"), "name": "t", "keep_checkpoints": 3},
    }
    for key, value in over.items():
        section, field = key.split("__")
        raw.setdefault(section, {})[field] = value
    return RaykdConfig.from_dict(raw)


def test_distill_cached_mode_learns_reports_and_never_loads_teacher(tmp_path, tiny_models):
    """Slow: a Ray Train run of three rounds, each with a checkpoint (what per-round metrics need)."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_models["bert"], teacher)
    cfg = _cfg(tmp_path, teacher, tiny_models["distilbert"])
    study, info = prepare_study(cfg, train.DISTILL)
    assert info["teacher_logits_computed"] and study.teacher_file
    # Cached mode must not construct the teacher: take it away before the trial runs.
    shutil.move(str(teacher), str(tmp_path / "teacher-gone"))
    result = train.fit(cfg, train.DISTILL, study)
    import pandas as pd

    df = pd.DataFrame(sorted((m for _, m in result.best_checkpoints), key=lambda m: m["round"]))
    assert list(df["round"]) == [1, 2, 3]
    assert df["train_loss"].iloc[-1] < df["train_loss"].iloc[0]
    assert (df["train_kd"] > 0).all() and (df["train_ce"] > 0).all()
    for col in (METRIC, "eval_exact_match", "learning_rate", "samples_per_sec", "train_cos"):
        assert col in df and df[col].notna().all()
    assert bool(df["final"].iloc[-1]) and not df["final"].iloc[0]
    # Where the worker's time went, cumulative: setup once, training and evaluation every round,
    # checkpointing counted up to the previous round.
    assert (df["time_setup_s"] > 0).all() and df["time_setup_s"].nunique() == 1
    assert df["time_train_s"].is_monotonic_increasing and df["time_eval_s"].is_monotonic_increasing
    assert (df["time_eval_s"] > 0).all() and df["time_checkpoint_s"].iloc[0] == 0 < df["time_checkpoint_s"].iloc[-1]
    best = train.best_checkpoint(result, METRIC)
    with best.as_directory() as d:
        model = AutoModelForQuestionAnswering.from_pretrained(d)
        AutoTokenizer.from_pretrained(d)
    assert model.config.model_type == "distilbert"
    assert train.best_metrics(result, METRIC)[METRIC] == df[METRIC].max()
    # A second prepare reuses features and logits (teacher restored, same fingerprint).
    shutil.move(str(tmp_path / "teacher-gone"), str(teacher))
    _, info2 = prepare_study(cfg, train.DISTILL)
    assert not info2["features_built"] and not info2["teacher_logits_computed"]


def test_online_mode_with_cosine_loss_and_layer_init(tmp_path, tiny_models):
    cfg = _cfg(tmp_path, tiny_models["bert"], tiny_models["bert"],
               distill__teacher_mode="online", distill__alpha_cos=0.5, optim__num_epochs=1,
               models__init_from_teacher_layers=[0, 3], search__name="online")
    study, info = prepare_study(cfg, train.DISTILL)
    assert study.teacher_file is None and not info["teacher_logits_computed"]
    result = train.fit(cfg, train.DISTILL, study)
    row = result.metrics
    assert row["train_cos"] > 0 and row["train_kd"] > 0
    with train.best_checkpoint(result, METRIC).as_directory() as d:
        assert AutoModelForQuestionAnswering.from_pretrained(d).config.num_hidden_layers == 2


def test_learning_a_learnable_task(tmp_path):
    """A 3-layer student from real MiniLM weights fine-tuned on the generated set reaches F1 >= 30
    (measured here: 41-51 after one epoch; a broken label or post-processing gives < 15)."""
    cfg = RaykdConfig.from_dict({
        "data": {"synthetic": True, "synthetic_train_size": 600, "synthetic_eval_size": 100,
                 "max_length": 96, "doc_stride": 32},
        "models": {"teacher": None, "student": helpers.MINILM, "init_from": helpers.MINILM,
                   "init_from_teacher_layers": [0, 2, 4]},
        "optim": {"learning_rate": 3e-4, "num_epochs": 1, "batch_size": 8},
        "scaling": {"torch_threads": 2},
        "search": {"storage_path": str(tmp_path / "results"), "name": "learn"},
    })
    study, _ = prepare_study(cfg, train.FINETUNE)
    result = train.fit(cfg, train.FINETUNE, study)
    assert train.best_metrics(result, METRIC)[METRIC] >= 30.0


def test_disk_use_stays_bounded_by_keep_checkpoints_during_the_run(tmp_path, tiny_models):
    """Train V2 deletes checkpoints beyond num_to_keep as each new one registers, not at the end.
    While a run reports, its storage holds at most keep_checkpoints best + the latest registered
    (kept for resume) + the next one, which the worker uploads while the controller handles the
    last report; a finished run holds keep_checkpoints + 1 (a finished search prunes to keep)."""
    cfg = _cfg(tmp_path, tiny_models["bert"], tiny_models["distilbert"], search__keep_checkpoints=1,
               search__name="disk", optim__num_epochs=1, optim__eval_every_steps=2)
    study, _ = prepare_study(cfg, train.DISTILL)
    run_dir = tmp_path / "results" / "disk"

    class CountCheckpoints(ray.train.UserCallback):
        """Counts the run's checkpoint folders in storage after every report, into a file. It
        runs in Train's controller, after Train's checkpoint manager has handled the report
        (defined here so that it is pickled by value)."""

        def __init__(self, run_dir, out):
            self.run_dir, self.out = str(run_dir), str(out)

        def after_report(self, run_context, metrics, checkpoint):
            import pathlib

            n = sum(p.is_dir() for p in pathlib.Path(self.run_dir).glob("checkpoint_*"))
            with open(self.out, "a") as f:
                f.write(f"{n}\n")

    counts = tmp_path / "counts.txt"
    trainer = train.build_trainer(RunSpec.of(cfg, train.DISTILL, study), name="disk",
                                  callbacks=[CountCheckpoints(run_dir, counts)])
    trainer.fit()
    seen = [int(x) for x in counts.read_text().split()]
    keep = cfg.search.keep_checkpoints
    assert len(seen) >= 5  # more reports than the bound
    assert max(seen) <= keep + 2, seen
    assert sum(p.is_dir() for p in run_dir.glob("checkpoint_*")) <= keep + 1
