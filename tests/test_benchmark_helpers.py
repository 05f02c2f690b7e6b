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


# --- benchmarks/peer.py and benchmarks/gpu.sh: their arguments and arithmetic, no training ----------


def test_peer_arguments_pick_settings_sides_and_trials():
    import peer

    s = peer.Settings.parse(["--settings", "sst2", "--sides", "peer", "--trials", "3"])
    assert (s.settings, s.sides, s.setting("sst2").trials) == (["sst2"], ["peer"], 3)
    assert peer.Settings.parse([]).settings == ["sst2", "squad"] and peer.Settings.parse([]).sides == ["raykd", "peer"]
    smoke = peer.Settings.parse(["--smoke"])
    assert "bench-smoke" in str(smoke.storage) and smoke.setting("squad").max_train_samples == 48
    with pytest.raises(SystemExit):
        peer.Settings.parse(["--settings", "mnli"])


def test_peer_evaluates_as_often_as_raykds_rounds_and_prunes_at_its_rung():
    import peer

    st = peer.SETTINGS["sst2"]  # 2,000 sentences, batch 16, 4 rounds: 125 steps
    assert peer.eval_steps(2000, st) == (125, 32, [32, 64, 96, 125])
    assert peer.grace_round(st) == 2  # raykd's plan: half of the training
    odd = peer.eval_steps(9, peer.dataclasses.replace(st, batch_size=1))  # 9 steps, every 3: 3 evaluations
    assert odd == (9, 3, [3, 6, 9])


def test_peer_reach_is_the_first_evaluation_within_tolerance():
    import peer

    events = [{"t": 30.0, "score": 70.0, "trial": 0, "epoch": 0.5}, {"t": 10.0, "score": 60.0, "trial": 0, "epoch": 0.25},
              {"t": 50.0, "score": 80.2, "trial": 1, "epoch": 0.5}, {"t": 40.0, "score": 79.8, "trial": 1, "epoch": 0.25}]
    peer._with_epochs(events)
    got = peer.reach(events, 80.2, 0.5)
    assert (got["t"], got["trial_epochs"], got["score"]) == (40.0, 0.75, 79.8)
    assert peer.reach(events, None, 0.5)["t"] is None
    raykd = {"events": events, "wall_s": 100.0}
    assert peer.verdict(raykd, {"best": 80.0, "wall_s": 100.0}) == {
        "raykd_reaches_peer_best_at_s": 50.0, "limit_s": 70.0, "met": True, "wall_ratio": 1.0}
    assert not peer.verdict(raykd, {"best": 81.0, "wall_s": 100.0})["met"]


def test_peer_configs_are_raykds_own_and_share_its_shipped_space(tmp_path):
    import peer
    import yaml

    import raykd.tasks  # noqa: F401 - registers the tasks whose rules a config is checked by
    from raykd.config import RaykdConfig

    for name, st in peer.SETTINGS.items():
        for teacher in (None, str(tmp_path)):
            cfg = RaykdConfig.from_dict(peer.raykd_config(st, _tasks.get(st.task).validation_file, tmp_path, teacher))
            assert cfg.search.num_samples == st.trials and cfg.models.init_from_teacher_layers == [0, 2, 4]
            assert cfg.distill.teacher_mode == ("online" if teacher is None else "cached"), name
    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "search_spaces" / "sst2_quickstart.yaml").read_text())
    assert peer.SST2_SPACE == shipped["space"]
    assert [peer.SETTINGS["sst2"].first] == shipped["search"]["points_to_evaluate"]


ROOT = Path(__file__).resolve().parents[1]


def _gpu_sh(*args: str, check: bool = True):
    import subprocess

    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), *args], capture_output=True, text=True,
                          check=check, cwd=ROOT)


def test_gpu_sh_dry_run_commands_parse_with_their_entry_points(tmp_path, monkeypatch):
    import argparse
    import shlex

    import cli

    out = _gpu_sh("--dry-run", "--python", "python").stdout
    commands = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ python ")]
    scripts = [c[1] for c in commands]
    assert scripts == ["benchmarks/distill_step.py", "cli.py"], out
    # distill_step.py parses inside main(): its real parser is run on the arguments, then stopped.
    import distill_step

    class Parsed(Exception):
        pass

    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real_parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", commands[0][1:])
    with pytest.raises(Parsed) as parsed:
        distill_step.main()
    ns = parsed.value.args[0]
    assert (ns.device, ns.arch, ns.seq_len, ns.batch_size) == ("cuda", "real", 384, 32)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real_parse)
    search = cli.build_parser().parse_args(commands[1][2:])
    assert search.command == "search" and search.config.endswith("search.yaml")
    # The config it writes is a valid raykd config: GPU workers, bf16, 4 trials.
    lines = out.split("+ write raykd_results/gpu/search.yaml:\n", 1)[1].split("\n+ ", 1)[0]
    path = tmp_path / "search.yaml"
    path.write_text("\n".join(line[4:] for line in lines.splitlines()))
    import raykd.tasks  # noqa: F401
    from raykd.config import load_config

    cfg = load_config(str(path))
    assert (cfg.scaling.use_gpu, cfg.optim.precision, cfg.search.num_samples, cfg.data.max_length) == (True, "bf16", 4,
                                                                                                       384)
    assert "num_samples: 7" in _gpu_sh("--dry-run", "--trials", "7").stdout


def test_gpu_sh_refuses_unknown_arguments():
    assert _gpu_sh("--gpus", "2", check=False).returncode == 2
    assert _gpu_sh("--trials", "four", check=False).returncode == 2


def test_gpu_sh_mfu_from_a_distill_step_report(tmp_path):
    src = tmp_path / "distill_step-cuda-real.json"
    src.write_text(json.dumps({"arch": "real", "seq_len": 384, "precision": "bfloat16", "samples_per_s": {"cached": 1000.0},
                               "machine": "Linux; x86_64; torch 2.13.0; threads 16; GPU NVIDIA H100 80GB HBM3"}))
    _gpu_sh("--mfu", str(src), "--out", str(tmp_path), "--python", sys.executable)
    got = json.loads((tmp_path / "gpu-mfu.json").read_text())
    params = 6 * (4 * 768 * 768 + 2 * 768 * 3072)  # DistilBERT's 6 layers, no embeddings
    flops = 384 * (6 * params + 12 * 6 * 384 * 768)
    assert got["train_flops_per_sample"] == flops and got["peak_tflops"] == 989.4
    assert got["mfu"] == pytest.approx(flops * 1000 / 1e12 / 989.4)
    assert "MFU" in (tmp_path / "gpu-mfu.md").read_text()


def test_fixed_cost_breakdown_reads_a_ray_sessions_logs(tmp_path):
    """A hand-made Ray session of one trial (and the next trial's actor): each step's seconds
    come from the GCS's actor registration and creation, the core logs, Train's controller and
    worker marks and raykd's own timings."""
    from datetime import datetime, timezone

    import search_efficiency as se

    logs = tmp_path / "logs"
    (logs / "train").mkdir(parents=True)

    def ts(sec: float) -> str:
        return f"[2026-12-05 17:00:{int(sec):02d},{round(sec % 1 * 1000):03d} I 1 1]"

    def ns(sec: float) -> int:
        return int(datetime(2026, 12, 5, 17, 0, tzinfo=timezone.utc).timestamp() * 1e9 + sec * 1e9)

    gcs = []
    for actor, registered, created in (("AAA", 0.0, 3.0), ("CCC", 3.2, 6.0), ("BBB", 30.0, 33.0)):
        gcs += [f"{ts(registered)} (gcs_server) gcs_actor_manager.cc:341: Registering actor job_id=01 actor_id={actor}",
                (f"{ts(created)} (gcs_server) gcs_actor_manager.cc:475: Finished creating actor. Status: OK job_id=01 "
                f"actor_id={actor}")]
    (logs / "gcs_server.out").write_text("\n".join(gcs) + "\n")
    for worker, pid, names, start, creating, actor, end in (
            ("w1", 101, ":actor_name:ImplicitFunc\n:actor_name:_trial_driver\n", 0.5, 0.6, "AAA", 29.0),
            ("w2", 102, ":actor_name:TrainController\n", 3.5, 3.7, "CCC", 26.0),
            ("w4", 104, ":actor_name:ImplicitFunc\n", 30.5, 30.6, "BBB", 40.0)):
        (logs / f"worker-{worker}-01000000-{pid}.out").write_text(names)
        (logs / f"python-core-worker-{worker}_{pid}.log").write_text(
            f"{ts(start)} core_worker_process.cc:872: Constructing CoreWorkerProcess. pid: {pid}\n"
            f"{ts(creating)} core_worker.cc:3247: Creating actor actor_id={actor}\n"
            f"{ts(end)} core_worker_process.cc:954: Destructing CoreWorkerProcessImpl. pid: {pid}\n")

    def jsonl(marks):
        return "".join(json.dumps({"message": m, "timestamp_ns": ns(t), "run_name": "t1"}) + "\n" for t, m in marks)

    (logs / "train" / "ray-train-sys-controller-w2.log").write_text(jsonl([
        (5.0, "Requesting resources: {'CPU': 1.0} * 1"), (6.1, "Attempting to start training worker group of size 1"),
        (7.0, "[Worker Group Initialization] 1 worker actors created in 0.90s."),
        (8.0, "[Worker Group Initialization] Train context initialized on workers in 1.00s."),
        (8.5, "[Worker Group Initialization] Train function launched on workers in 0.50s."),
        (25.0, "Shutting down 1 workers."), (25.1, "Worker group shutdown successful.")]))
    (logs / "train" / "ray-train-sys-worker-w3.log").write_text(jsonl([
        (8.4, "Rank 0: Launching training function."), (15.0, "Checkpoint successfully created at: x"),
        (20.0, "Checkpoint successfully created at: y")]))
    rows = {"t1": [{"round": 1, "timestamp": ns(20.0) / 1e9, "time_setup_s": 2.0, "time_train_s": 6.0,
                    "time_eval_s": 2.0, "time_checkpoint_s": 0.5}]}
    [trial] = se.trial_breakdown(se.read_ray_session(logs), rows)
    got = {k: round(v, 2) for k, v in trial["steps"].items()}
    assert trial["trial"] == "t1" and trial["span_s"] == pytest.approx(30.0)
    assert list(got.values()) == [0.5, 0.1, 2.4, 0.2, 0.5, 1.3, 1.0, 0.1, 0.9, 1.0, 0.4, 2.0, 6.0, 2.0, 0.5, 5.1, 4.9,
                                  1.1], got
    classes = {r[0]: r[1] for r in se.side_actors(se.read_ray_session(logs))}
    assert classes == {"TrainController": 1, se.TRIAL_ACTOR: 2}
