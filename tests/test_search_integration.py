"""Real Ray Tune searches (one local Ray for the module) over tiny models, and resume after the
driver process is killed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from raykd import run
from raykd.config import load_config
from raykd.search.plan import max_concurrent
from raykd.storage import SUMMARY, TRAIN_RUNS
from raykd.tasks.qa.metrics import METRIC

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[1]


def _space_yaml(tmp_path, tiny_models, name, num_samples, extra=None):
    raw = {
        "data": {"synthetic": True, "synthetic_train_size": 240, "synthetic_eval_size": 40,
                 "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"])},
        "optim": {"num_epochs": 2, "batch_size": 16, "eval_every_steps": 5, "warmup_ratio": 0.0},
        "search": {"name": name, "storage_path": str(tmp_path / "results"), "num_samples": num_samples,
                   "grace_period": 1, "reduction_factor": 2, "seed": 1, "n_startup_trials": 2,
                   "points_to_evaluate": [{"optim.learning_rate": 3e-3, "distill.temperature": 2.0}]},
        "tracking": {"enabled": False},
        # A space built so that some trials are clearly bad: a learning rate that learns nothing.
        "space": {"optim.learning_rate": {"type": "choice", "values": [3e-3, 1e-8]},
                  "distill.temperature": {"type": "uniform", "low": 1.0, "high": 4.0}},
    }
    raw.update(extra or {})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_search_asha_optuna_best_and_checkpoints(local_ray, tmp_path, tiny_models):
    """Three trials: a learning rate that learns, one that learns nothing (a fixed point each, so
    ASHA has one to stop whatever the sampler draws), and one TPE sampled after them."""
    path = _space_yaml(tmp_path, tiny_models, "asha", 3)
    raw = yaml.safe_load(path.read_text())
    raw["search"]["points_to_evaluate"].append({"optim.learning_rate": 1e-8, "distill.temperature": 2.0})
    # Three rounds, compared from round 2: by then the first trial's F1 is ~9 (~6.5 after round 1),
    # while the learning rate of 1e-8 keeps its starting F1 (~6.3), so ASHA stops it there.
    raw["search"].update(rounds=3, grace_period=2)
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(str(path))
    assert max_concurrent(cfg, ray.cluster_resources()) == 1  # 2 CPUs, 1-CPU workers: never 2
    summary = run.search(cfg)
    rows = summary["trials"]
    assert len(rows) == 3 and all(r["status"] in ("COMPLETED", "STOPPED") for r in rows)
    assert any(r["stopped_early"] for r in rows), rows
    assert any(not r["stopped_early"] and r["rounds"] == summary["rounds"] for r in rows)
    # The best is the maximum eval_f1 over every reported round of every trial.
    exp = Path(summary["experiment_path"])
    all_f1 = []
    for result_file in exp.glob("*/result.json"):
        all_f1 += [json.loads(line)[METRIC] for line in result_file.read_text().splitlines() if line.strip()]
    assert summary["best"][METRIC] == pytest.approx(max(all_f1))
    # The best checkpoint is the round that scored best, and it exists.
    assert Path(summary["best"]["checkpoint_path"]).is_dir()
    best_meta = json.loads((Path(summary["best"]["checkpoint_path"]) / "raykd_metrics.json").read_text())
    assert best_meta[METRIC] == pytest.approx(summary["best"][METRIC])
    # At most keep_checkpoints (1) checkpoint per trial.
    for trial_dir in (exp / TRAIN_RUNS).iterdir():
        if trial_dir.is_dir():
            assert len([d for d in trial_dir.glob("checkpoint_*") if d.is_dir()]) <= cfg.search.keep_checkpoints
    # Optuna was told the truth: stopped trials are PRUNED, with intermediate values by round.
    states = [t["state"] for t in summary["optuna_trials"]]
    assert states.count("PRUNED") == sum(r["stopped_early"] for r in rows)
    assert states.count("COMPLETE") == sum(not r["stopped_early"] for r in rows)
    complete = next(t for t in summary["optuna_trials"] if t["state"] == "COMPLETE")
    assert sorted(complete["intermediate"]) == list(range(1, summary["rounds"] + 1))
    _optuna_told_the_summary_scores(summary)
    assert json.loads((exp / SUMMARY).read_text())["best"]["trial_id"] == summary["best"]["trial_id"]


def _optuna_told_the_summary_scores(summary):
    """One objective: Optuna's value of a COMPLETE trial, and the last intermediate value of a
    PRUNED one, equal that trial's score in summary.json."""
    by_params = {}
    for row in summary["trials"]:
        by_params[tuple(sorted((k, row[k]) for k in ("optim.learning_rate", "distill.temperature")))] = row
    for t in summary["optuna_trials"]:
        row = by_params[tuple(sorted(t["params"].items()))]
        told = t["value"] if t["state"] == "COMPLETE" else t["intermediate"][max(t["intermediate"])]
        assert told == pytest.approx(row[METRIC], abs=1e-9), (t, row)


def _trial_results(exp: Path) -> dict[str, int]:
    out = {}
    for f in exp.glob("*/result.json"):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        out[f.parent.name] = len(lines)
    return out


def test_ctrl_c_then_resume_finishes_the_study(tmp_path, tiny_models):
    # Slow: three CLI searches, each starting its own Ray (two trials interrupted, then resumed; the
    # interrupted trial's config uninterrupted), and one resume refused before Ray starts.
    """The real CLI in a subprocess (its own Ray), interrupted with SIGINT (Ctrl-C) after its
    first trial finished, during its second and last (Tune has every trial it will run, so only its
    saved state tells the running one from a finished one): it exits 130, says how to resume, prunes and registers nothing, and
    marks the open MLflow runs KILLED. --resume then completes the study: the finished trial is not
    run again, the unfinished one continues from its checkpoint in its own child run, and the
    study has exactly one child run per trial."""
    import mlflow
    from mlflow import MlflowClient

    cfg_path = _space_yaml(tmp_path, tiny_models, "resume", 2, {
        "optim": {"num_epochs": 2, "batch_size": 16, "eval_every_steps": 5, "warmup_ratio": 0.0},
        "tracking": {"enabled": True, "experiment_name": "resume"},
    })
    # The second trial trains six times longer than the first, so it is still running when the
    # test has seen its first round and sends Ctrl-C (a tiny trial's rounds take a few seconds).
    raw = yaml.safe_load(cfg_path.read_text())
    raw["space"]["optim.num_epochs"] = {"type": "choice", "values": [2, 12]}
    raw["search"]["points_to_evaluate"] = [
        {"optim.learning_rate": 3e-3, "distill.temperature": 2.0, "optim.num_epochs": 2},
        {"optim.learning_rate": 3e-3, "distill.temperature": 3.0, "optim.num_epochs": 12}]
    cfg_path.write_text(yaml.safe_dump(raw))
    exp = tmp_path / "results" / "resume"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    cmd = [sys.executable, str(ROOT / "cli.py"), "search", "--config", str(cfg_path), "--tracking-uri", uri]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        finished = None
        while time.time() < deadline and finished is None:
            time.sleep(0.25)
            for f in exp.glob("*/result.json"):
                if any(json.loads(x).get("final") for x in f.read_text().splitlines() if x.strip()):
                    finished = f.parent.name
            assert proc.poll() is None, "the search ended before it could be interrupted"
        assert finished, "no trial finished in time"
        # Wait until the next trial has saved a round's checkpoint (to resume from). Its Train run's
        # folder shows it at once; Tune's result.json may be written only later.
        while time.time() < deadline and len({c.parent.name for c in exp.glob(f"{TRAIN_RUNS}/*/checkpoint_*")
                                              if c.parent.name not in finished}) < 1:
            time.sleep(0.25)
        proc.send_signal(signal.SIGINT)  # Ctrl-C, to the driver process this test started
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out and "--resume" in out.splitlines()[-1], out[-2000:]
    assert "interrupted: 1 trial(s) unfinished" in out, out[-2000:]
    assert not (exp / SUMMARY).exists()
    client = MlflowClient(uri)
    assert not client.search_registered_models()  # nothing registered
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert {r.info.status for r in runs if r.data.tags.get("raykd.kind") == "trial"} <= {"FINISHED", "KILLED"}
    before = _trial_results(exp)
    finished_before = _results(exp)[finished][-1][METRIC]

    # A resume with a setting that changes what a trial computes is refused before Ray starts.
    changed = subprocess.run(cmd + ["--resume", "--set", "optim.batch_size=8"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    assert changed.returncode == 2, changed.stdout[-2000:] + changed.stderr[-2000:]
    line = changed.stderr.strip().splitlines()[-1]
    assert "optim.batch_size" in line and "8" in line and "16" in line, changed.stderr[-2000:]
    assert _trial_results(exp) == before

    done = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = _trial_results(exp)
    assert after[finished] == before[finished]  # not run again
    summary = json.loads((exp / SUMMARY).read_text())
    assert len(summary["trials"]) == 2 and not summary["interrupted"]
    assert all(r["status"] in ("COMPLETED", "STOPPED") for r in summary["trials"]), summary["trials"]
    # A resumed trial continued where it stopped: Tune's results after the resume never repeat a
    # round, and the summary holds each trial's whole curve, rounds 1..n (those before the resume
    # from its checkpoint's history), its score taken over all of them.
    for reports in _results(exp).values():
        rounds = [r["round"] for r in reports]
        assert rounds == sorted(set(rounds)), rounds
    for row in summary["trials"]:
        rounds = [r for r, _ in row["curve"]]
        assert rounds == list(range(1, row["rounds"] + 1)), row
        assert row[METRIC] == pytest.approx(max(f for _, f in row["curve"]))
    mlflow.set_tracking_uri(uri)
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    studies = [r for r in runs if r.data.tags.get("raykd.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("raykd.kind") == "trial"]
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    assert sorted(r.data.tags["raykd.trial_id"] for r in children) == sorted(r["trial_id"] for r in summary["trials"])
    assert {r.info.status for r in children} == {"FINISHED"}  # KILLED was the interruption's, not theirs
    assert client.search_registered_models()

    # The finished trial kept its score. (Tune names a trial's folder after its id.)
    assert next(r for r in summary["trials"] if r["trial_id"] in finished)["curve"][-1][1] == \
        pytest.approx(finished_before)
    # The interrupted trial, run again without the interruption (alone: the same config and seed),
    # ends with the same curve: the resumed one continued exactly (its RNG states, data order and
    # optimizer restored).
    (interrupted,) = [r for r in summary["trials"] if r["trial_id"] not in finished]
    assert not interrupted["stopped_early"], interrupted  # ran its schedule, as a lone trial does
    point = {k: interrupted[k] for k in ("optim.learning_rate", "distill.temperature", "optim.num_epochs")}
    straight = subprocess.run(cmd + ["--set", "search.name=straight", "--no-tracking", "--num-samples", "1",
                                     "--set", f"search.points_to_evaluate=[{json.dumps(point)}]"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    (alone,) = json.loads((tmp_path / "results" / "straight" / SUMMARY).read_text())["trials"]
    assert {k: alone[k] for k in point} == point
    assert [r for r, _ in alone["curve"]] == [r for r, _ in interrupted["curve"]] == list(range(1, alone["rounds"] + 1))
    assert [f for _, f in alone["curve"]] == pytest.approx([f for _, f in interrupted["curve"]], abs=1e-6)
    assert alone[METRIC] == pytest.approx(interrupted[METRIC], abs=1e-6)


def _results(exp: Path) -> dict[str, list[dict]]:
    return {f.parent.name: [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            for f in exp.glob("*/result.json")}


def test_every_searched_value_takes_effect_and_every_trial_runs_its_schedule(local_ray, tmp_path, tiny_models):
    """A doc_stride per trial (a study per value, prepared on demand), batch sizes 4 and 8 (each
    trial runs all its rounds: final, learning rate 0), and a base alpha_ce of 0 with alpha_ce
    searched (teacher logits are prepared anyway)."""
    path = _space_yaml(tmp_path, tiny_models, "keys", 2, {
        "data": {"synthetic": True, "synthetic_train_size": 120, "synthetic_eval_size": 30,
                 "max_length": 64, "doc_stride": 48},
        "distill": {"alpha_ce": 0.0, "alpha_squad": 1.0},
        "optim": {"num_epochs": 1, "batch_size": 16, "eval_every_steps": 5, "warmup_ratio": 0.0,
                  "learning_rate": 3e-3},
        "search": {"name": "keys", "storage_path": str(tmp_path / "results"), "num_samples": 2, "rounds": 3,
                   "scheduler": "fifo", "seed": 1, "n_startup_trials": 2,
                   "points_to_evaluate": [
                       {"data.doc_stride": 16, "optim.batch_size": 4, "distill.alpha_ce": 0.5},
                       {"data.doc_stride": 48, "optim.batch_size": 8, "distill.alpha_ce": 0.9}]},
        "space": {"data.doc_stride": {"type": "choice", "values": [16, 48]},
                  "optim.batch_size": {"type": "choice", "values": [4, 8]},
                  "distill.alpha_ce": {"type": "uniform", "low": 0.2, "high": 1.0},
                  "distill.alpha_squad": {"type": "complement", "of": "distill.alpha_ce"}},
    })
    summary = run.search(load_config(str(path)))
    assert summary["study"]["teacher_logits_computed"]  # base alpha_ce 0, yet some point distils
    results = _results(Path(summary["experiment_path"]))
    assert len(results) == 2
    by_stride = {}
    for trial_id, reports in results.items():
        config = json.loads((Path(summary["experiment_path"]) / trial_id / "params.json").read_text())
        # Every round of its own schedule, the last one final with the learning rate decayed to 0.
        assert [r["round"] for r in reports] == [1, 2, 3]
        assert reports[-1]["final"] and reports[-1]["learning_rate"] == 0.0
        by_stride[config["data.doc_stride"]] = reports[-1]
    # The stride took effect: the two trials trained on different numbers of features.
    assert by_stride[16]["train_features"] != by_stride[48]["train_features"]
    # Two batch sizes, the same number of rounds: one trains for twice the steps of the other.
    assert by_stride[16]["step"] != by_stride[48]["step"]
    rows = summary["trials"]
    assert all(r["status"] == "COMPLETED" and r["rounds"] == r["planned_rounds"] == 3 for r in rows), rows
    prepared = [p for p in (tmp_path / "results" / "cache" / "prepared").iterdir() if p.is_dir()]
    assert len(prepared) == 2  # one study per distinct stride, each with the teacher's logits
    assert all(list(p.glob("teacher-*.npy")) for p in prepared)
    for t in summary["optuna_trials"]:
        assert t["state"] == "COMPLETE"
        row = next(r for r in rows if r["data.doc_stride"] == t["params"]["data.doc_stride"])
        assert t["value"] == pytest.approx(row[METRIC], abs=1e-9)


def test_a_trial_with_a_nan_loss_fails_with_its_reason_while_the_study_goes_on(local_ray, tmp_path, tiny_models):
    """A learning rate of 1e30 blows the student up within two steps: that trial is FAILED with
    the non-finite loss as its reason (summary, Optuna, its MLflow run), the other completes and
    is the best."""
    from mlflow import MlflowClient

    path = _space_yaml(tmp_path, tiny_models, "nan", 2, {
        "data": {"synthetic": True, "synthetic_train_size": 80, "synthetic_eval_size": 20,
                 "max_length": 64, "doc_stride": 32},
        "optim": {"num_epochs": 1, "batch_size": 16, "eval_every_steps": 2, "warmup_ratio": 0.0},
        "search": {"name": "nan", "storage_path": str(tmp_path / "results"), "num_samples": 2, "rounds": 2,
                   "scheduler": "fifo", "seed": 1, "n_startup_trials": 2,
                   "points_to_evaluate": [{"optim.learning_rate": 1e30}, {"optim.learning_rate": 3e-3}]},
        "tracking": {"enabled": True, "experiment_name": "nan"},
        "space": {"optim.learning_rate": {"type": "choice", "values": [3e-3, 1e30]}},
    })
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = run.search(load_config(str(path)), tracking_uri=uri)
    rows = {r["optim.learning_rate"]: r for r in summary["trials"]}
    assert rows[1e30]["status"] == "FAILED", rows
    assert rows[1e30]["error"].startswith("non-finite loss") and "learning_rate 1e+30" in rows[1e30]["error"]
    assert "\n" not in rows[1e30]["error"]
    assert rows[3e-3]["status"] == "COMPLETED" and summary["best"]["trial_id"] == rows[3e-3]["trial_id"]
    assert not summary["interrupted"]
    assert sorted(t["state"] for t in summary["optuna_trials"]) == ["COMPLETE", "FAIL"]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("nan").experiment_id],
                              "tags.`raykd.kind` = 'trial'")
    by_trial = {r.data.tags["raykd.trial_id"]: r for r in runs}
    failed = by_trial[rows[1e30]["trial_id"]]
    assert failed.info.status == "FAILED" and failed.data.tags["raykd.error"].startswith("non-finite loss")
    assert by_trial[rows[3e-3]["trial_id"]].info.status == "FINISHED"


def test_a_killed_training_worker_resumes_from_its_checkpoint(local_ray, tmp_path, tiny_models):
    """With scaling.max_failures 1, the trial's training worker is SIGKILLed (by its pid) once its
    first round is reported: Train restarts the worker group from that round's checkpoint and the
    trial reports every round once, in order, through its final one."""
    import threading

    from ray.util.state import list_actors

    path = _space_yaml(tmp_path, tiny_models, "kill", 1, {
        "optim": {"num_epochs": 4, "batch_size": 8, "eval_every_steps": 5, "warmup_ratio": 0.0},
        "scaling": {"num_workers": 1, "max_failures": 1},
        "search": {"name": "kill", "storage_path": str(tmp_path / "results"), "num_samples": 1, "rounds": 4,
                   "scheduler": "fifo", "seed": 1, "n_startup_trials": 1},
        "space": {"optim.learning_rate": {"type": "choice", "values": [3e-3]},
                  "distill.temperature": {"type": "choice", "values": [2.0]}},
    })
    exp = tmp_path / "results" / "kill"
    killed: list[int] = []
    problems: list[BaseException] = []
    done = threading.Event()

    def kill_after_first_round():
        # Round 1's checkpoint, written by the worker straight to storage, says round 1 is reported.
        try:
            while not done.is_set():
                if list((exp / TRAIN_RUNS).glob("*/checkpoint_*")):
                    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
                    if workers:
                        os.kill(workers[0].pid, signal.SIGKILL)
                        killed.append(workers[0].pid)
                        return
                done.wait(0.2)
        except BaseException as exc:  # noqa: BLE001 -- reported by the test below
            problems.append(exc)

    killer = threading.Thread(target=kill_after_first_round, daemon=True)
    killer.start()
    try:
        summary = run.search(load_config(str(path)))
    finally:
        done.set()
        killer.join(timeout=30)
    assert not problems, problems
    assert killed, "the worker was never killed"
    (reports,) = _results(exp).values()
    rounds = [r["round"] for r in reports]
    assert rounds == [1, 2, 3, 4], rounds  # a restart from scratch would report round 1 again
    assert reports[-1]["final"] and reports[-1]["learning_rate"] == 0.0
    (row,) = summary["trials"]
    assert row["status"] == "COMPLETED" and row["rounds"] == 4
    # The killed worker is gone and a new one ran the rest of the trial.
    assert all(a.pid != killed[0] for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"),
                                                                 ("state", "=", "ALIVE")]))
