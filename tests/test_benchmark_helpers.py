"""The benchmark scripts' own arithmetic (benchmarks/_runner.py, _results.py, _tasks.py): samples
per round, trial timing and the trial-epochs to reach a score, read from a hand-made search folder.
No Ray, no training."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _results
import _runner
import _tasks


def test_samples_at_counts_the_partial_last_batch_of_each_epoch():
    # 10 features, batch 4: steps of 4, 4, 2 samples per epoch.
    assert [_runner.samples_at(s, 10, 4) for s in range(7)] == [0, 4, 8, 10, 14, 18, 20]
    # Two workers, 5 features each: steps of 4 + 1 per worker, so 8 + 2 per epoch.
    assert [_runner.samples_at(s, 10, 4, world=2) for s in range(4)] == [0, 8, 10, 18]


def test_cli_json_is_the_last_object_printed():
    out = "[raykd] hello\n{\n  \"a\": 1\n}\nnoise\n{\n  \"b\": {\"c\": 2}\n}\n"
    assert _runner.CliRun(["x"], 0, out, 1.0).json() == {"b": {"c": 2}}
    with pytest.raises(ValueError):
        _runner.CliRun(["x"], 0, "no json here", 1.0).json()


def test_sets_write_values_as_yaml():
    assert _runner.sets({"a.b": 2.0, "c.d": "/x/y", "e.f": None}) == [
        "--set", "a.b=2.0", "--set", "c.d=/x/y", "--set", "e.f=null"]


def _rows(trial_id, start, rounds, f1s, train_s, evalckpt, setup):
    """Tune rows of a trial: 10 features, batch 5 -> 2 steps per epoch; 1 round per step."""
    rows, t = [], start + setup
    for k, f1 in zip(range(1, rounds + 1), f1s):
        t_iter = train_s + evalckpt + (setup if k == 1 else 0)
        t += train_s + evalckpt
        rows.append({"trial_id": trial_id, "round": k, "step": k, "epoch": k / 2, "train_features": 10,
                     "samples_per_sec": 5 / train_s, "eval_f1": f1, "timestamp": t,
                     "time_this_iter_s": t_iter, "time_total_s": t - start, "config": {}})
    return rows


def _experiment(tmp_path: Path) -> Path:
    exp = tmp_path / "exp"
    trials = {"t1": _rows("t1", 1000.0, 4, [10, 20, 30, 40], 4.0, 1.0, 15.0),
              "t2": _rows("t2", 1000.0 + 15 + 20 + 5, 2, [5, 12], 4.0, 1.0, 15.0)}
    summary = {"metric": "eval_f1", "trial_score": "best", "rounds": 4, "grace_period": 2, "trials": [], "best": None}
    for tid, rows in trials.items():
        d = exp / f"_trial_driver_{tid}"
        d.mkdir(parents=True)
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary["trials"].append({"trial_id": tid, "status": "COMPLETED" if len(rows) == 4 else "STOPPED",
                                  "eval_f1": max(r["eval_f1"] for r in rows), "rounds": len(rows),
                                  "planned_rounds": 4, "distill.temperature": 2.0})
    summary["best"] = {"trial_id": "t1", "eval_f1": 40, "score_round": 4, "checkpoint_path": "/ckpt"}
    (exp / "summary.json").write_text(json.dumps(summary))
    return exp


def test_read_search_times_trials_and_brackets_the_fixed_cost(tmp_path):
    r = _runner.read_search(_experiment(tmp_path), wall_s=120.0, batch_size=5)
    t1, t2 = (t["timing"] for t in r["trials"])
    assert t1["train_s"] == pytest.approx(16.0) and t1["eval_ckpt_s"] == pytest.approx(4.0)
    assert t1["in_trial_s"] == pytest.approx(35.0) and t1["gap_after_s"] == pytest.approx(5.0)
    # 35 s in the trial + 5 s gap - 16 s training - 4 s eval/checkpoint = 20 s (15 s set-up + gap).
    assert t1["fixed_low_s"] == pytest.approx(20.0) and t1["fixed_high_s"] == pytest.approx(24.0)
    assert t2["gap_after_s"] == pytest.approx(5.0)  # the last trial gets the median gap
    assert r["trial_epochs"] == pytest.approx(3.0) and r["stopped_early"] == 1
    assert r["fixed_share_low"] == pytest.approx((20 + 20) / 120)
    assert r["reach"]["trial_epochs"] == pytest.approx(2.0)  # 40 is reached at t1's last round


def test_read_search_uses_raykds_own_timings_when_reported(tmp_path):
    exp = _experiment(tmp_path)
    for tid, rounds in (("t1", 4), ("t2", 2)):
        path = exp / f"_trial_driver_{tid}" / "result.json"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for k, r in enumerate(rows, start=1):
            # 4 s of training and 1 s of evaluation per round, 12 s of worker setup, 0.5 s per checkpoint.
            r.update(time_setup_s=12.0, time_train_s=4.0 * k, time_eval_s=1.0 * k, time_checkpoint_s=0.5 * (k - 1))
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _runner.read_search(exp, wall_s=120.0, batch_size=5)
    t1, _ = (t["timing"] for t in r["trials"])
    assert r["timing_exact"] and t1["train_s"] == 16.0 and t1["eval_ckpt_s"] == 4.0
    # 35 s in the trial + 5 s gap - 16 s training - 4 s evaluation = 20 s, no bracket.
    assert t1["fixed_low_s"] == t1["fixed_high_s"] == pytest.approx(20.0)
    assert r["setup_s"] == 24.0 and r["checkpoint_s"] == pytest.approx(1.5 + 0.5)
    assert r["fixed_share_low"] == r["fixed_share_high"] == pytest.approx((20 + (25 + 5 - 8 - 2)) / 120)


def test_epochs_to_reach_another_searchs_best(tmp_path):
    exp = _experiment(tmp_path)
    r = _runner.read_search(exp, wall_s=None, batch_size=5, reference=30.4, tolerance=0.5)
    assert r["reach"]["trial_epochs"] == pytest.approx(1.5) and r["reach"]["round"] == 3
    r = _runner.read_search(exp, wall_s=None, batch_size=5, reference=50, tolerance=0.5)
    assert r["reach"]["trial_epochs"] is None


def test_arm_store_reuses_an_arm_only_for_the_same_command(tmp_path):
    store = _results.ArmStore(tmp_path)
    store.save("b", {"argv": ["x", 1]}, {"f1": 3.0})
    assert store.load("b", {"argv": ["x", 1]})["f1"] == 3.0
    assert store.load("b", {"argv": ["x", 2]}) is None
    assert store.load("c", {"argv": ["x", 1]}) is None


def test_results_writer_heads_both_files_with_command_machine_and_versions(tmp_path):
    j, m = _results.write(tmp_path, "t", "Title", {"x": 1}, [_results.md_table(["a", "b"], [[1.234, None]])])
    data = json.loads(j.read_text())
    assert data["x"] == 1 and set(_results.PACKAGES) <= set(data["versions"]) and data["machine"]["cores"] >= 1
    text = m.read_text()
    assert "- Command: `python" in text and "| 1.23 | – |" in text and "torch" in text


def test_squad_subset_keeps_the_first_questions(tmp_path):
    task = _tasks.get("squad")
    dst = tmp_path / "dev.json"
    task.subset(task.validation_file, dst, 7)
    assert len(task.examples(dst)) == 7
    assert task.examples(dst) == task.examples(task.validation_file)[:7]


def test_search_efficiency_flags_that_turn_something_off_are_kept():
    import search_efficiency

    assert search_efficiency.Settings.parse(["--no-tracking"]).tracking is False
    assert search_efficiency.Settings.parse(["--tolerance", "0"]).tolerance == 0
    assert search_efficiency.Settings.parse([]).tracking is not False
