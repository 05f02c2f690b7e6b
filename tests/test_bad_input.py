"""A catalogue of bad input, each tried through the real CLI: exit status 2, at most two short lines
on stderr naming the culprit, no traceback, and nothing left behind (no experiment folder, no
MLflow store or run, no cache) in the working directory, which also holds the storage path.
``--debug`` adds the traceback.

Most cases call ``cli.main`` in this process (its exit status, and stderr through capsys); a few
run ``python cli.py`` in a subprocess (see ``_in_subprocess``): the ones that set environment
variables libraries read at import, that are timed, and a handful that prove the script end to
end. Almost every case is refused before Ray starts; the ones that need the cluster's resources (a
GPU, CPUs) are refused once the driver is connected (marked integration): one through the script,
which starts a local Ray, the others in this process against the session's Ray (2 CPUs, no GPU),
which stands for a cluster the driver joined.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Case:
    id: str
    expect: list[str]                                   # substrings of the stderr message
    set: dict = field(default_factory=dict)             # dotted keys changed in the good config
    text: str | bytes | None = None                     # the config file's content, instead of the good config
    args: list[str] = field(default_factory=list)       # extra CLI arguments
    command: str = "search"
    env: dict = field(default_factory=dict)
    before: str | None = None                           # a setup step (see _before)
    ray: bool = False                                   # refused once connected to a Ray
    seconds: float | None = None                        # refused within this many seconds
    script: bool = False                                # run `python cli.py` in a subprocess


def _squad(paragraphs) -> str:
    return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]})


QA = {"id": "q1", "question": "Where?", "answers": [{"text": "Oslo", "answer_start": 9}]}
DROP = object()  # a _setdotted value: remove the key from the good config
CLOSED = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
CLOSED_RAY = f"127.0.0.1:{_free_port()}"

CATALOGUE = [
    # The config file itself.
    Case("yaml-syntax", ["bad.yaml", "not valid YAML", "line 3, column 1", "line 2, column 15"], text="data:\n  max_length: [96\n", script=True),
    Case("yaml-tab-indent", ["bad.yaml", "not valid YAML", "line"], text="data:\n\tmax_length: 96\n"),
    Case("empty-config", ["bad.yaml", "empty"], text=""),
    Case("comments-only-config", ["bad.yaml", "empty"], text="# nothing here\n"),
    Case("list-config", ["bad.yaml", "mapping"], text="- data\n- models\n"),
    Case("binary-config", ["bad.yaml", "UTF-8"], text=b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01", script=True),
    Case("config-missing", ["nowhere.yaml", "no such config file"], args=["--config", "nowhere.yaml"]),
    Case("duplicate-key", ["bad.yaml", "temperature", "twice"],
         text="distill:\n  temperature: 2\n  temperature: 3\n"),
    # Keys and types.
    Case("typo-key", ["distill.temprature", "did you mean distill.temperature"], set={"distill.temprature": 2}, script=True),
    Case("key-in-wrong-section", ["optim.temperature", "did you mean distill.temperature"],
         set={"optim.temperature": 2}),
    Case("unknown-section", ["optimizer", "did you mean optim"], set={"optimizer.lr": 1}),
    Case("unknown-set-key", ["--set optim.lr", "did you mean optim.learning_rate"], args=["--set", "optim.lr=1e-4"]),
    Case("set-without-value", ["--set", "key=value"], args=["--set", "optim.learning_rate"]),
    Case("wrong-type-int", ["optim.batch_size", "integer"], set={"optim.batch_size": "sixteen"}),
    Case("wrong-type-bool", ["scaling.use_gpu", "true/false"], set={"scaling.use_gpu": "maybe"}),
    Case("wrong-choice", ["distill.teacher_mode", "one of"], set={"distill.teacher_mode": "sometimes"}),
    Case("infinite-lr", ["optim.learning_rate", "finite"], set={"optim.learning_rate": float("inf")}),
    # Impossible values.
    Case("temperature-zero", ["distill.temperature", "> 0"], set={"distill.temperature": 0}),
    Case("temperature-negative", ["distill.temperature", "> 0"], set={"distill.temperature": -1.5}),
    Case("alpha-negative", ["distill.alpha_ce", "[0, 1]"], set={"distill.alpha_ce": -0.1}),
    Case("alphas-all-zero", ["distill", "all 0"], set={"distill.alpha_ce": 0, "distill.alpha_squad": 0}),
    Case("lr-zero", ["optim.learning_rate", "> 0"], set={"optim.learning_rate": 0}),
    Case("batch-size-zero", ["optim.batch_size", "> 0"], set={"optim.batch_size": 0}),
    Case("stride-not-below-length", ["data.doc_stride", "max_length=96"], set={"data.doc_stride": 96}),
    Case("workers-zero", ["scaling.num_workers", "> 0"], set={"scaling.num_workers": 0}),
    Case("num-samples-zero", ["search.num_samples", "> 0"], args=["--num-samples", "0"]),
    Case("grace-past-rounds", ["search.grace_period", "5", "3 rounds"],
         set={"search.rounds": 3, "search.grace_period": 5}),
    Case("experiment-name-path", ["search.name", "plain folder name"], set={"search.name": "../elsewhere"}),
    # The search space.
    Case("space-typo", ["space.distill.temprature", "did you mean distill.temperature"],
         set={"space": {"distill.temprature": {"type": "uniform", "low": 1, "high": 4}}}),
    Case("space-alphas-can-all-be-zero", ["space.distill.alpha_ce", "every alpha"],
         set={"space": {"distill.alpha_ce": {"type": "choice", "values": [0.0, 0.5]},
                        "distill.alpha_squad": {"type": "choice", "values": [0.0, 1.0]}}}),
    Case("space-student-no-trial-loads", ["space.models.student", "every trial builds its student from teacher layers"],
         set={"models.init_from_teacher_layers": [0, 1],
              "space": {"models.student": {"type": "choice", "values": ["a", "b"]}}}),
    Case("space-layers-out-of-range", ["models.init_from_teacher_layers", "[0, 7] asks for layer 7", "0..3"],
         set={"space": {"models.init_from_teacher_layers": {"type": "choice", "values": [[0, 1], [0, 7]]}}}),
    # Data files.
    Case("train-file-missing", ["data.train_file", "missing.json", "no such file"],
         set={"data.train_file": "missing.json"}),
    Case("train-file-empty", ["data.train_file", "empty"], before="data:empty"),
    Case("train-file-binary", ["data.train_file", "binary"], before="data:binary"),
    Case("train-file-not-json", ["data.train_file", "not JSON", "line 1"], before="data:notjson"),
    Case("train-file-no-data-key", ["data.train_file", "missing 'data'"], before="data:nodata"),
    Case("train-file-no-context", ["data.train_file", "data[0].paragraphs[0]", "missing 'context'"],
         before="data:nocontext", script=True),
    Case("train-file-no-answers", ["data.train_file", "qas[0]", "missing 'answers'"], before="data:noanswers"),
    Case("answer-start-mismatch", ["data.train_file", "2 of 2 questions", "answer_start"], before="data:offsets"),
    Case("squad-v2-file", ["data.train_file", "SQuAD v2.0"], before="data:v2"),
    Case("validation-file-is-folder", ["data.validation_file", "is a folder"], before="data:folder"),
    Case("hub-dataset-offline", ["data.dataset_name", "squad", "OFFLINE", "data.train_file"],
         set={"data.train_file": None, "data.validation_file": None}),
    # Models.
    Case("student-folder-missing", ["models.student", "./no-such-model", "no such folder"],
         set={"models.student": "./no-such-model"}),
    Case("teacher-without-weights", ["models.teacher", "holds no weights"], before="model:noweights"),
    Case("teacher-file-not-folder", ["models.teacher", "is a file"], before="model:file"),
    Case("hub-id-offline", ["models.teacher", "someone/some-bert", "HF_HUB_OFFLINE", "folder"],
         set={"models.teacher": "someone/some-bert"}),
    Case("hub-unreachable", ["models.teacher", "someone/some-bert", "unreachable", "folder"],
         set={"models.teacher": "someone/some-bert"},
         env={"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_ENDPOINT": CLOSED}),
    Case("max-length-above-positions", ["data.max_length", "300", "256"],
         set={"data.max_length": 300, "data.doc_stride": 64}),
    Case("layers-out-of-range", ["models.init_from_teacher_layers", "0..3"],
         set={"models.init_from_teacher_layers": [0, 7]}),
    Case("no-teacher", ["models.teacher", "needs a teacher"], set={"models.teacher": None}),
    Case("different-vocabularies", ["models.student", "vocabulary"], before="model:othervocab"),
    Case("missing-package-model", ["models.student", "not installed"],
         set={"models.student": "pkg:no_such_raykd_package/model"}),
    # The experiment folder and the tracking store.
    Case("experiment-exists", ["search.name", "already exists", "--resume", "--overwrite"], before="experiment", script=True),
    Case("train-run-exists", ["search.name", "already exists", "--overwrite"], command="train", script=True,
         before="experiment:train"),
    Case("resume-nothing", ["--resume", "no experiment"], args=["--resume"]),
    Case("resume-and-overwrite", ["--resume", "--overwrite", "choose one"], args=["--resume", "--overwrite"],
         before="experiment"),
    Case("mlflow-unreachable", ["MLflow", "unreachable", "--no-tracking"], args=["--tracking-uri", CLOSED], script=True),
    Case("mlflow-sqlite-folder-missing", ["MLflow", "does not exist"],
         args=["--tracking-uri", "sqlite:////no/such/folder/mlflow.db"]),
    # Evaluate.
    Case("evaluate-model-without-weights", ["--model", "holds no weights"], command="evaluate",
         before="model:noweights", script=True),
    Case("evaluate-data-not-json", ["--data", "not JSON"], command="evaluate", before="data:notjson"),
    Case("evaluate-stride", ["--doc-stride", "--max-length"], command="evaluate",
         args=["--max-length", "64", "--doc-stride", "64"]),
    # The task and what belongs to it (before="cls": the good config made a classification one).
    Case("unknown-task", ["task", "unknown task 'sentiment'", "classification"], set={"task": "sentiment"}),
    Case("search-metric-not-the-tasks", ["search.metric", "eval_acc", "not reported by task question_answering",
                                         "eval_f1"], set={"search.metric": "eval_acc"}),
    Case("task-ignores-doc-stride", ["data.doc_stride", "no effect for task classification"], before="cls:keepstride"),
    Case("space-key-the-task-ignores", ["space.data.doc_stride", "no effect for task classification"],
         set={"space": {"data.doc_stride": {"type": "choice", "values": [16, 32]}}}, before="cls"),
    Case("classification-file-no-label", ["data.train_file", "line 2", "missing 'label'"], before="cls:nolabel"),
    Case("classification-label-out-of-range", ["data.train_file", "label 2", "outside 0 .. 1"],
         before="cls:badlabel"),
    Case("classification-file-no-text", ["data.train_file", "no text column"], before="cls:notext"),
    Case("classification-file-not-json-lines", ["data.train_file", "not JSON lines", "line 2"], before="cls:broken"),
    Case("classification-teacher-is-a-qa-model", ["models.teacher", "BertForQuestionAnswering", "random"],
         before="cls:qateacher"),
    Case("classification-teacher-label-count", ["models.teacher", "3 labels", "data.num_labels"],
         before="cls:threelabels"),
    # Resources the cluster can never provide (local Ray: 2 CPUs here, no GPU).
    # The script, once: a CLI that starts its own Ray (its log lines forwarded) is refused in one line.
    Case("gpu-without-gpus", ["scaling.use_gpu", "no GPU", "the Ray cluster"], set={"scaling.use_gpu": True},
         ray=True, script=True),
    Case("more-cpus-than-cluster", ["scaling", "CPU", "cpus_per_worker", "the Ray cluster"], command="train",
         set={"scaling.cpus_per_worker": 64}, ray=True),
    # A fixed cluster where no trial can ever start: its workers need a resource no node has.
    Case("worker-resource-nobody-has", ["scaling", "raykd_nowhere", "drop scaling.resources_per_worker.raykd_nowhere",
                                        "the Ray cluster"],
         set={"scaling.resources_per_worker": {"raykd_nowhere": 1}}, ray=True),
    # No Ray cluster at the address: given up within seconds (Ray itself retries for minutes).
    Case("address-unreachable", ["--address " + CLOSED_RAY, "no Ray cluster answers"],
         args=["--address", CLOSED_RAY], seconds=40),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models):
    """Good inputs outside the cases' working directories: models, data and a good config."""
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    from raykd.tasks.qa import synthetic

    root = tmp_path_factory.mktemp("world")
    (root / "train.json").write_text(json.dumps(synthetic.generate(20, seed=1)))
    (root / "dev.json").write_text(json.dumps(synthetic.generate(8, seed=2)))
    # A model folder without weights (config and tokenizer only).
    bare = root / "bare"
    bare.mkdir()
    for f in tiny_models["bert"].iterdir():
        if f.suffix != ".safetensors":
            (bare / f.name).write_bytes(f.read_bytes())
    # A student with its own small vocabulary.
    other = root / "othervocab"
    other.mkdir()
    vocab = other / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nwhere\noslo\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(other)
    BertForQuestionAnswering(BertConfig(vocab_size=7, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=16, max_position_embeddings=256)).save_pretrained(other)
    files = {
        "empty": "",
        "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 4,
        "notjson": "version: 1.1\ndata: []\n",
        "nodata": json.dumps({"version": "1.1", "articles": []}),
        "nocontext": _squad([{"text": "Born in Oslo.", "qas": [QA]}]),
        "noanswers": _squad([{"context": "Born in Oslo.", "qas": [{"id": "q", "question": "Where?"}]}]),
        "offsets": _squad([{"context": "Born in Oslo. Lives in Rome.", "qas": [
            QA, {"id": "q2", "question": "Lives?", "answers": [{"text": "Rome", "answer_start": 0}]}]}]),
        "v2": _squad([{"context": "Born in Oslo.", "qas": [{**QA, "answers": [], "is_impossible": True}]}]),
    }
    for name, content in files.items():
        path = root / f"{name}.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    (root / "folder.json").mkdir()
    # Classification: sentences with labels, good and bad, and classifiers of 2 and 3 labels.
    import helpers

    lines = {
        "good": [{"sentence": "a fine film", "label": 1}, {"sentence": "so dull", "label": 0}],
        "nolabel": [{"sentence": "a fine film", "label": 1}, {"sentence": "so dull"}],
        "badlabel": [{"sentence": "a fine film", "label": 2}],
        "notext": [{"review": "a fine film", "label": 1}],
    }
    for name, rows in lines.items():
        (root / f"cls-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "cls-broken.jsonl").write_text('{"sentence": "a fine film", "label": 1}\n{"sentence": so dull}\n')
    helpers.tiny_bert_classifier(root / "cls-teacher")
    helpers.tiny_bert_classifier(root / "cls-teacher-3", num_labels=3)
    (root / "file-model").write_text("not a model")
    good = {
        "data": {"train_file": str(root / "train.json"), "validation_file": str(root / "dev.json"),
                 "max_length": 96, "doc_stride": 32},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"])},
        "optim": {"num_epochs": 1, "batch_size": 8},
        "search": {"name": "bad", "storage_path": "results", "num_samples": 2},
        "tracking": {"experiment_name": "bad"},
    }
    return {"root": root, "good": good, "bare": bare, "othervocab": other}


def _setdotted(raw: dict, key: str, value) -> None:
    if key in ("space", "task"):
        raw[key] = value
        return
    section, _, rest = key.partition(".")
    node = raw.setdefault(section, {})
    parts = rest.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is DROP:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def _before(case: Case, world, cwd: Path, raw: dict) -> None:
    """Set-up a case needs: a bad data file or model in the config, an existing experiment."""
    if not case.before:
        return
    kind, _, what = case.before.partition(":")
    root = world["root"]
    if kind == "data":
        key = "data.validation_file" if what == "folder" else "data.train_file"
        _setdotted(raw, key, str(root / f"{what}.json"))
        case.args += ["--data", str(root / f"{what}.json")] if case.command == "evaluate" else []
    elif kind == "model":
        path = {"noweights": world["bare"], "file": root / "file-model", "othervocab": world["othervocab"]}[what]
        _setdotted(raw, "models.student" if what == "othervocab" else "models.teacher", str(path))
        case.args += ["--model", str(path)] if case.command == "evaluate" else []
    elif kind == "cls":
        # A good classification config, then what the case breaks in it.
        files = {"train": "good", "nolabel": "nolabel", "badlabel": "badlabel", "notext": "notext",
                 "broken": "broken"}
        _setdotted(raw, "task", "classification")
        _setdotted(raw, "data.train_file", str(root / f"cls-{files.get(what, 'good')}.jsonl"))
        _setdotted(raw, "data.validation_file", str(root / "cls-good.jsonl"))
        if what != "keepstride":
            _setdotted(raw, "data.doc_stride", DROP)
        teacher = {"qateacher": world["good"]["models"]["teacher"], "threelabels": root / "cls-teacher-3"}
        _setdotted(raw, "models.teacher", str(teacher.get(what, root / "cls-teacher")))
    elif kind == "experiment":
        name = "bad-distill" if what == "train" else "bad"
        (cwd / "results" / name).mkdir(parents=True)
        (cwd / "results" / name / "keep.txt").write_text("an earlier run's files")


def _snapshot(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*")}


def _in_subprocess(case: Case) -> bool:
    """Whether the case runs ``python cli.py`` in a subprocess rather than ``cli.main`` here: a
    case that sets environment variables that libraries read when they are imported, or is timed;
    and the handful marked ``script``, which prove the script end to end."""
    return bool(case.env) or case.seconds is not None or case.script


def _run(case: Case, world, cwd: Path, debug: bool = False, capsys=None, monkeypatch=None):
    raw = json.loads(json.dumps(world["good"]))
    for key, value in case.set.items():
        _setdotted(raw, key, value)
    case = Case(**{**case.__dict__, "args": list(case.args)})
    _before(case, world, cwd, raw)
    config = cwd / "bad.yaml"
    if case.text is not None:
        config.write_bytes(case.text) if isinstance(case.text, bytes) else config.write_text(case.text)
    else:
        config.write_text(yaml.safe_dump(raw))
    if case.command == "evaluate":
        args = ["evaluate", "--model", str(world["good"]["models"]["student"]),
                "--data", world["good"]["data"]["validation_file"], *case.args]
    else:
        args = [case.command] + ([] if "--config" in case.args else ["--config", str(config)]) + case.args
    if debug:
        args.append("--debug")
    # Ray's files go to a folder of this case (short: Ray's socket paths have a length limit), so
    # the test sees whether Ray started at all.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk"))
    before = _snapshot(cwd)
    try:
        if _in_subprocess(case) or capsys is None:
            code, out, err, elapsed = _cli_subprocess(args, case.env, cwd, ray_tmp)
        else:
            code, out, err, elapsed = _cli_in_process(args, cwd, ray_tmp, capsys, monkeypatch)
        ray_started = any(ray_tmp.iterdir())
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return Result(code, out, err, before, _snapshot(cwd), ray_started, elapsed)


def _cli_subprocess(args: list[str], env_changes: dict, cwd: Path, ray_tmp: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RAY_TMPDIR": str(ray_tmp)})
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
        elapsed = time.monotonic() - started
    finally:
        # Whatever the CLI started (a local Ray) is in its process group: stop what is left of it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return proc.returncode, out, err, elapsed


def _cli_in_process(args: list[str], cwd: Path, ray_tmp: Path, capsys, monkeypatch):
    """``cli.main(args)`` in this process, in ``cwd``; what it changes of the process (the
    environment, sys.stdout/stderr, raykd's console) is put back."""
    import cli
    from raykd import console

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(console, "_installed", None)
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    env, streams = dict(os.environ), (sys.stdout, sys.stderr)
    ray_up = _ray_up()
    capsys.readouterr()
    started = time.monotonic()
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    finally:
        elapsed = time.monotonic() - started
        sys.stdout, sys.stderr = streams
        os.environ.clear()
        os.environ.update(env)
    out, err = capsys.readouterr()
    # A case refused before Ray starts leaves none up; one refused once connected leaves the
    # session's Ray as it found it.
    assert _ray_up() == ray_up, "a case run in-process started or stopped Ray in pytest's process"
    return code, out, err, elapsed


def _ray_up() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@dataclass
class Result:
    code: int
    out: str
    err: str
    before: dict
    after: dict
    ray_started: bool
    elapsed: float


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.integration] if c.ray else [])
                                  for c in CATALOGUE if _in_subprocess(c) or not c.ray])
def test_bad_input_is_refused_in_one_line_and_leaves_nothing(case, world, tmp_path, capsys, monkeypatch):
    r = _run(case, world, tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    _refused_in_one_line(case, r)
    # Whether a Ray started (a subprocess's writes to RAY_TMPDIR; a case run here never starts one).
    assert r.ray_started == case.ray, "refused before Ray starts" if not case.ray else "refused once Ray connected"


@pytest.mark.integration
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CATALOGUE if c.ray and not _in_subprocess(c)])
def test_what_the_cluster_can_never_provide_is_refused_once_connected(case, world, local_ray, tmp_path, capsys,
                                                                      monkeypatch):
    """The session's Ray (2 CPUs, no GPU) is up, as a cluster the driver joins would be: the CLI
    reads its resources, refuses in one line, leaves Ray up and starts none of its own."""
    # What a search imports on its way to the refusal is imported before the console takes over
    # stderr, so that no handler made at import keeps the captured stream of this test.
    import ray.train  # noqa: F401
    import ray.tune  # noqa: F401

    import raykd.prepare  # noqa: F401
    import raykd.search.tuner  # noqa: F401

    r = _run(case, world, tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    _refused_in_one_line(case, r)
    assert not r.ray_started and _ray_up()


def _refused_in_one_line(case: Case, r: Result) -> None:
    lines = [x for x in r.err.splitlines() if x.strip()]
    assert r.code == 2, f"exit {r.code}\nstdout: {r.out[-1500:]}\nstderr: {r.err[-3000:]}"
    assert "Traceback" not in r.err and "Traceback" not in r.out
    errors = [x for x in lines if x.startswith("raykd: error: ")]
    assert len(errors) == 1 and len(lines) <= 2 and len(errors[0]) <= 400, r.err
    for word in case.expect:
        assert word in errors[0], f"{word!r} not in: {errors[0]}"
    # Nothing half-written: the working directory (which holds the storage path and the default
    # MLflow store) is as it was.
    assert r.after == r.before, set(r.after) ^ set(r.before)
    assert case.seconds is None or r.elapsed < case.seconds, f"refused after {r.elapsed:.0f} s"


def test_debug_shows_the_traceback(world, tmp_path):
    case = next(c for c in CATALOGUE if c.id == "train-file-no-context")
    r = _run(case, world, tmp_path, debug=True)
    assert r.code == 2 and "Traceback" in r.err and "raykd: error: " in r.err.splitlines()[-1]
    assert r.after == r.before


def test_the_catalogue_covers_the_issue():
    assert len(CATALOGUE) >= 25
    # The script itself, end to end, for a handful of refusals of each kind; the rest in-process.
    assert {"search", "train", "evaluate"} <= {c.command for c in CATALOGUE if _in_subprocess(c)}
    assert 5 <= sum(c.script for c in CATALOGUE) < len(CATALOGUE) // 4
    kinds = {c.id for c in CATALOGUE}
    for wanted in ("yaml-syntax", "empty-config", "binary-config", "typo-key", "alphas-all-zero",
                   "max-length-above-positions", "gpu-without-gpus", "more-cpus-than-cluster", "train-file-missing",
                   "answer-start-mismatch", "student-folder-missing", "hub-id-offline", "different-vocabularies",
                   "experiment-exists", "mlflow-unreachable"):
        assert wanted in kinds
