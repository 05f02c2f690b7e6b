"""The real CLI, in subprocesses and in-process (``cli.main``): help, exit status and message on bad input,
evaluate (either task), train."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


def cli(*args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", ["search", "train", "finetune", "prepare", "evaluate"])
def test_every_command_has_help(tmp_path, command):
    out = cli(command, "--help", cwd=tmp_path)
    assert out.returncode == 0 and "usage:" in out.stdout and "--" in out.stdout


def test_version_is_the_installed_distributions_through_every_entry_point(tmp_path):
    from importlib import metadata

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    script = Path(sys.executable).parent / "raykd"  # the console script pip installed beside python
    expected = f"raykd {metadata.version('raykd')}\n"
    for argv in ([sys.executable, str(ROOT / "cli.py")], [sys.executable, "-m", "raykd"], [str(script)]):
        out = subprocess.run([*argv, "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                             check=False)
        assert (out.returncode, out.stdout) == (0, expected), argv


def test_python_m_raykd_is_the_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "raykd", "search", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.startswith("usage: raykd search") and "--resume" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "raykd", "search", "--config", str(tmp_path / "none.yaml")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "none.yaml: no such config file" in bad.stderr


def test_search_help_documents_every_flag(tmp_path):
    out = cli("search", "--help", cwd=tmp_path).stdout
    for flag in ("--config", "--set", "--address", "--resume", "--tracking-uri", "--no-tracking", "--num-samples"):
        assert flag in out


def test_each_command_logs_where_its_experiment_is(tmp_path, monkeypatch):
    import cli as cli_module
    from raykd.config import RaykdConfig

    monkeypatch.chdir(tmp_path)
    cfg = RaykdConfig().replace(**{"search.storage_path": "res", "search.name": "exp"})
    res = tmp_path / "res"
    assert cli_module.log_file(cfg, "search") == res / "exp" / "logs" / "search.log"
    assert cli_module.log_file(cfg, "train") == res / "exp-distill" / "logs" / "train.log"
    assert cli_module.log_file(cfg, "finetune") == res / "exp-finetune" / "logs" / "finetune.log"
    assert cli_module.log_file(cfg, "prepare") == res / "logs" / "exp-prepare.log"  # no experiment folder
    remote = cfg.replace(**{"search.storage_path": "s3://b/x"})
    assert cli_module.log_file(remote, "search") == tmp_path / "raykd_logs" / "exp" / "logs" / "search.log"
    assert cli_module.log_file(remote, "prepare") == tmp_path / "raykd_logs" / "logs" / "exp-prepare.log"


def test_bad_config_key_exits_2_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill:\n  temprature: 3\n")
    out = cli("train", "--config", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert "distill.temprature" in out.stderr and "bad.yaml" in out.stderr and "Traceback" not in out.stderr


def test_bad_space_is_rejected_before_ray_starts(tmp_path):
    src = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    src["space"]["optim.learning_rate"] = {"type": "loguniform", "low": 0.0, "high": 1e-3}
    bad = tmp_path / "space.yaml"
    bad.write_text(yaml.safe_dump(src))
    out = cli("search", "--config", str(bad), "--no-tracking", cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert "space.optim.learning_rate" in out.stderr and "space.yaml" in out.stderr
    assert not (tmp_path / "raykd_results").exists()  # nothing started


def test_missing_inputs_exit_2(tmp_path):
    out = cli("evaluate", "--model", "./nowhere", "--data", "nothing.json", cwd=tmp_path)
    assert out.returncode == 2 and "--model ./nowhere: no such folder" in out.stderr
    out = cli("search", "--config", "missing.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "no such config file" in out.stderr


# --- cli.py evaluate in-process: the task comes from the model -----------------------------------


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    """A tiny classifier and the first 24 sentences of the repository's SST-2 sample."""
    import helpers

    root = tmp_path_factory.mktemp("evaluate")
    lines = (ROOT / "data" / "sst2_real" / "validation.jsonl").read_text().splitlines()[:24]
    (root / "dev.jsonl").write_text("\n".join(lines) + "\n")
    return {"model": helpers.tiny_bert_classifier(root / "cls", seed=3), "data": root / "dev.jsonl", "root": root}


def _accuracy_by_hand(model_dir: Path, rows: list[dict], max_length: int) -> float:
    """The classifier's argmax accuracy straight from transformers, without raykd."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = AutoTokenizer.from_pretrained(model_dir)([r["sentence"] for r in rows], truncation=True,
                                                   max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**enc).logits.argmax(-1).tolist()
    return 100.0 * sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)


def test_evaluate_scores_a_classifier_through_its_task(sst2, capsys):
    import cli

    rc = cli.main(["evaluate", "--model", str(sst2["model"]), "--data", str(sst2["data"]), "--max-length", "32",
                   "--batch-size", "5"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    scores = json.loads(out)  # stdout is the result only
    rows = [json.loads(line) for line in sst2["data"].read_text().splitlines()]
    assert scores["task"] == "classification" and scores["examples"] == 24
    assert scores["accuracy"] == pytest.approx(_accuracy_by_hand(sst2["model"], rows, 32), abs=1e-9)
    assert 0 <= scores["f1"] <= 100 and "[raykd evaluate]: 24/24 features" in err


@pytest.mark.parametrize("args, says", [
    (["--data", "squad"], "no text column"),  # a classifier's task cannot read SQuAD JSON
    (["--task", "question_answering"], "a classification model; scoring it as question_answering"),
    (["--doc-stride", "16"], "--doc-stride: has no effect for task classification"),
    (["--predictions", "p.json"], "--predictions: task classification writes no predictions file"),
])
def test_evaluate_refuses_a_task_that_does_not_fit_in_one_line(sst2, capsys, args, says):
    import cli

    squad = sst2["root"] / "dev.json"
    squad.write_text(json.dumps(__import__("raykd.tasks.qa.synthetic", fromlist=["generate"]).generate(4, seed=5)))
    args = [str(squad) if a == "squad" else a for a in args]
    data = [] if "--data" in args else ["--data", str(sst2["data"])]
    rc = cli.main(["evaluate", "--model", str(sst2["model"]), *data, "--max-length", "32", *args])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and says in err
    assert err.startswith("raykd: error: ") and err.count("\n") == 1, err


@pytest.mark.integration
def test_train_then_evaluate_through_the_cli(tmp_path, tiny_models):
    """Slow: the CLI starts its own local Ray and one Ray Train run (about 20 s of start-up)."""
    cfg = {
        "data": {"synthetic": True, "synthetic_train_size": 120, "synthetic_eval_size": 30,
                 "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"])},
        "optim": {"learning_rate": 2e-3, "num_epochs": 2, "batch_size": 16},
        "search": {"name": "cli"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = cli("train", "--config", str(path), "--set", "distill.temperature=3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert summary["rounds"] == 2 and 0 <= summary["eval_f1"] <= 100
    assert Path(summary["checkpoint"]).is_dir()
    # the run went to the default local store in the working directory
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.data.params["distill.temperature"] == "3.0"
    assert len(client.get_metric_history(run.info.run_id, "eval_f1")) == 2
    data = tmp_path / "cache-free-dev.json"
    data.write_text(json.dumps(__import__("raykd.tasks.qa.synthetic", fromlist=["generate"]).generate(20, seed=5)))
    ev = cli("evaluate", "--model", summary["checkpoint"], "--data", str(data), "--max-length", "96",
             "--doc-stride", "32", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-2000:]
    scores = json.loads(ev.stdout)
    assert scores["examples"] == 20 and 0 <= scores["f1"] <= 100
