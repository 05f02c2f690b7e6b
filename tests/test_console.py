"""The console: which lines the quiet terminal shows, the log file that keeps every line, and a
real short search through the CLI whose output a user can read."""

import io
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from raykd import console

ROOT = Path(__file__).parents[1]


def test_forwarded_lines_are_shown_only_when_they_are_raykds():
    assert console.shown("plain driver line") == "plain driver line"
    assert console.shown("\x1b[36m(RayTrainWorker pid=26736)\x1b[0m [raykd] round 1/3 step 5") == "[raykd] round 1/3 step 5"
    assert console.shown("(pid=12, ip=10.0.0.2) [raykd prepare] teacher logits: batch 1/4") == \
        "[raykd prepare] teacher logits: batch 1/4"
    for noise in ("\x1b[36m(RayTrainWorker pid=26736)\x1b[0m Reporting training result 1: TrainingReport(...)",
                  "(TrainController pid=28486) Requesting resources: {'CPU': 1.0} * 1",
                  "(RayTrainWorker pid=1) [trial d2be3583] round 1/6 step 13",  # the driver prints trial rounds
                  "(PlacementGroupCleaner pid=29670) Detected that the Ray Train controller actor is dead"):
        assert console.shown(noise) is None
    # The raylet's warnings (e.g. a worker killed for memory) carry no pid: shown.
    assert console.shown("(raylet) A worker died or was killed") == "(raylet) A worker died or was killed"


def test_progress_line_gives_the_rate_and_eta():
    assert console.progress_line("[raykd evaluate]", 640, 1280, 10.0) == \
        "[raykd evaluate]: 640/1280 features, 64/s, elapsed 10s, ETA 0m10s"
    # Rounded before splitting into minutes: never "1m60s".
    assert console.progress_line("x", 1, 2, 119.6).endswith("ETA 2m00s")


def test_the_log_keeps_everything_and_is_only_written_once_the_command_starts(tmp_path, monkeypatch):
    term_out, term_err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", term_out)
    monkeypatch.setattr(sys, "stderr", term_err)
    path = tmp_path / "exp" / "logs" / "search.log"
    con = console.Console(path, verbose=False)
    try:
        print("refused before anything started?")
        assert not path.exists()
        con.log.open()
        print("(RayTrainWorker pid=7) LOAD REPORT", "table", sep="\n")
        sys.stderr.write("(RayTrainWorker pid=7) [raykd] round 1/2 ")
        sys.stderr.write("step 3\n")
    finally:
        con.restore()
    assert term_out.getvalue() == "refused before anything started?\ntable\n"
    assert term_err.getvalue() == "[raykd] round 1/2 step 3\n"
    log = path.read_text()
    for text in ("refused before anything started?", "LOAD REPORT", "[raykd] round 1/2 step 3"):
        assert text in log


def _space_yaml(tmp_path, tiny_models):
    raw = {
        "data": {"synthetic": True, "synthetic_train_size": 160, "synthetic_eval_size": 30,
                 "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"])},
        "optim": {"num_epochs": 1, "batch_size": 16, "warmup_ratio": 0.0},
        "search": {"name": "console", "storage_path": str(tmp_path / "results"), "num_samples": 2, "rounds": 4,
                   "grace_period": 2, "reduction_factor": 2, "seed": 1, "n_startup_trials": 2,
                   "points_to_evaluate": [{"optim.learning_rate": 3e-3, "distill.temperature": 2.0}]},
        "space": {"optim.learning_rate": {"type": "choice", "values": [3e-3, 1e-8]},
                  "distill.temperature": {"type": "uniform", "low": 1.0, "high": 4.0}},
    }
    path = tmp_path / "console.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.integration
def test_a_search_prints_a_readable_console(tmp_path, tiny_models):
    # Slow: the real CLI starts its own Ray and runs two trials (two, so the check for repeated
    # lines sees more than one trial's output).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    cmd = [sys.executable, str(ROOT / "cli.py"), "search", "--config", str(_space_yaml(tmp_path, tiny_models))]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    lines = text.splitlines()
    raykd = [line for line in lines if line.startswith("[raykd]")]
    dupes = [line for line, n in Counter(raykd).items() if n > 1]
    assert not dupes, dupes
    rounds = [line for line in raykd if " round " in line and line.startswith("[raykd] trial ")]
    assert rounds and all("eval_f1=" in line and "EM=" in line and "loss=" in line and "/4:" in line
                          for line in rounds), rounds
    for noise in ("LOAD REPORT", "Reporting training result", "pid=", "already reported", "Loading weights",
                  "examples/s", "Hint:", "Successfully registered model", "performance bottleneck"):
        assert noise not in text, (noise, [line for line in lines if noise in line][:3])
    table_headers = [line for line in lines if "eval_f1" in line and "temperature" in line and "|" in line]
    assert table_headers, text[-3000:]
    assert any(line.startswith("[raykd] study: teacher") for line in lines)
    assert any(line.startswith("best trial ") for line in lines) and "summary: " in text
    assert "registered model: raykd-student version 1" in text
    # Everything, Ray's forwarded worker output included, is in the log under the experiment.
    log = (tmp_path / "results" / "console" / "logs" / "search.log").read_text()
    assert "Reporting training result" in log and "[trial " in log and "best trial " in log
    (tmp_path / "console.txt").write_text(text)  # what the user saw, to look at after a run
