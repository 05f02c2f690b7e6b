"""The study-wide cache: tokenized features (built once per study, not once per trial) and the
frozen teacher's logits over every training feature (computed once, on a GPU when the Ray cluster
has one, stored as fp16 and read by every trial instead of loading the teacher). Task-free: the
task (:mod:`raykd.tasks`) builds the features and says which logits are distilled.

Layout of one prepared folder, keyed by the fingerprint of (task, tokenizer, the task's feature
settings such as max_length and doc_stride, data)::

    <cache_dir>/prepared/<features fingerprint>/
        manifest.json                 task, fingerprint inputs, counts, and one entry per teacher
        train/ eval/ examples/        datasets saved with save_to_disk
        teacher-<teacher fp>.npy      float16 [n_train_features, K, C]: the task's distilled logits
                                      (QA: K = 2, start and end, C = max_length positions;
                                      classification: K = 1, C = num_labels)

The temperature is applied at loss time, so nothing here depends on a searched hyperparameter.
A logits file whose size or sha256 disagrees with the manifest is rebuilt, never used.

Everything is written under a temporary name and renamed into place (a prepared folder as a
whole, a logits file, the manifest), so a reader never sees half a file and a build killed midway
leaves only a temporary, which the next build of the same fingerprint removes. Which
``cache_dir`` a study uses, and how its folder reaches other nodes, is :mod:`raykd.study_store`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, load_from_disk

from raykd import storage, tasks
from raykd.config import DataConfig
from raykd.modeling import models
from raykd.tasks import Task

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_identity(name: str) -> dict[str, Any]:
    """What identifies a model for caching: a hub name as such, a local folder by its contents."""
    path = Path(models.resolve(name))
    if not path.is_dir():
        return {"name": name}
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in {".json", ".safetensors", ".bin", ".txt"})
    return {"files": {p.name: _sha256_file(p) for p in files}}


def features_fingerprint(task: Task, cfg: DataConfig, tokenizer_name: str, cache_dir: Path) -> dict[str, Any]:
    train_file, valid_file = task.data_files(cfg, cache_dir)
    hub = cfg.dataset_name + (f"/{cfg.dataset_config}" if cfg.dataset_config else "")
    sources = {
        "train": _sha256_file(Path(train_file)) if train_file else f"hub:{hub}:train",
        "validation": _sha256_file(Path(valid_file)) if valid_file else f"hub:{hub}:validation",
    }
    return {
        "format": FORMAT_VERSION,
        "task": task.name,
        "tokenizer": model_identity(tokenizer_name),
        **task.feature_settings(cfg),
        "max_train_samples": cfg.max_train_samples,
        "max_eval_samples": cfg.max_eval_samples,
        "data": sources,
    }


@dataclass
class Prepared:
    """A prepared folder, as every trial sees it."""

    root: Path
    teacher_file: str | None = None  # relative to root; None when no teacher logits

    def train(self) -> Dataset:
        return load_from_disk(str(self.root / "train"))

    def eval(self) -> Dataset:
        return load_from_disk(str(self.root / "eval"))

    def examples(self) -> Dataset:
        return load_from_disk(str(self.root / "examples"))

    def teacher_logits(self) -> np.ndarray:
        """Memory-mapped [N, K, C] float16: each worker touches only its own shard's rows."""
        if not self.teacher_file:
            raise FileNotFoundError("this prepared folder has no teacher logits")
        return np.load(self.root / self.teacher_file, mmap_mode="r")

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.root / "manifest.json").read_text())

    def task(self) -> Task:
        """The task these features were built for."""
        return tasks.get(self.manifest()["task"])


def _remove_dead_temporaries(path: Path) -> None:
    """Temporaries of ``path`` left by a process of this host that is gone (killed midway)."""
    prefix = storage.temp_name(path).name.rsplit("-", 1)[0] + "-"  # up to this process's pid
    if not path.parent.is_dir():
        return
    for tmp in path.parent.glob(prefix + "*"):
        try:
            os.kill(int(tmp.name[len(prefix):]), 0)
        except ProcessLookupError:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = storage.temp_name(root / "manifest.json")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(root / "manifest.json")


def prepared_root(task: Task, cfg: DataConfig, tokenizer_name: str, cache_dir: Path) -> Path:
    """The folder :func:`prepare_features` builds (or reuses) for these settings."""
    return cache_dir / "prepared" / _digest(features_fingerprint(task, cfg, tokenizer_name, cache_dir))


def _complete(root: Path) -> bool:
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        return False
    manifest = json.loads(manifest_path.read_text())
    return bool(manifest.get("complete")) and all((root / d).is_dir() for d in ("train", "eval", "examples"))


def prepare_features(task: Task, cfg: DataConfig, tokenizer_name: str, cache_dir: Path) -> tuple[Prepared, bool]:
    """Build (or reuse) the task's tokenized features. Returns (prepared, built_now). The folder
    is built under a temporary name and renamed into place complete."""
    inputs = features_fingerprint(task, cfg, tokenizer_name, cache_dir)
    fp = _digest(inputs)
    root = cache_dir / "prepared" / fp
    if _complete(root):
        return Prepared(root), False
    _remove_dead_temporaries(root)
    tmp = storage.temp_name(root)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _build_features(task, cfg, tokenizer_name, cache_dir, tmp, fp, inputs)
        if root.exists() and not _complete(root):
            shutil.rmtree(root)  # incomplete: written in place by an older raykd
        try:
            tmp.rename(root)
        except OSError:
            # Another process renamed its complete build into place first: use that one.
            if not _complete(root):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Prepared(root), True


def _build_features(task: Task, cfg: DataConfig, tokenizer_name: str, cache_dir: Path, root: Path, fp: str,
                    inputs: dict[str, Any]) -> None:
    built = task.build(cfg, models.load_tokenizer(tokenizer_name), cache_dir)
    built.train.save_to_disk(str(root / "train"))
    built.eval.save_to_disk(str(root / "eval"))
    built.examples.save_to_disk(str(root / "examples"))
    _write_manifest(
        root,
        {
            "fingerprint": fp,
            "task": task.name,
            "inputs": inputs,
            **built.counts,
            "n_train_features": len(built.train),
            "n_eval_features": len(built.eval),
            "teachers": {},
            "complete": True,
        },
    )


def compute_teacher_logits(
    teacher_name: str, root: str, batch_size: int = 64, device: str | None = None, progress: bool = True,
    limit: int | None = None,
) -> np.ndarray:
    """Teacher forward over every training feature (or the first ``limit``) -> the task's
    distilled logits as float16 [N, K, C] (QA: start and end over positions; classification: one
    row of class logits). Runs where it is called (a Ray task with a GPU when the cluster has one)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    prepared = Prepared(Path(root))
    task = prepared.task()
    teacher = models.load_teacher(teacher_name, task.head(_config_of(prepared))).to(device)
    ds = prepared.train()
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    # stdout: the console shows a Ray task's lines as its own.
    return task.predict_logits(teacher, ds, batch_size, device,
                               torch.bfloat16 if device.startswith("cuda") else None, dtype=np.float16,
                               progress="[raykd prepare] teacher logits" if progress else None, stream=sys.stdout)


def check_teacher(task: Task, logits: np.ndarray, train: Dataset) -> None:
    """The task's look at the teacher's logits on (some of) the training features: a teacher of
    another label order would otherwise be distilled silently. Refusals raise; doubts are warned."""
    task.check_teacher(logits, train, lambda m: log.warning("[raykd] warning: %s", m))


def check_online_teacher(prepared: Prepared, teacher_name: str, sample: int = 512) -> None:
    """For a teacher that runs inside the trials (no cache): its logits on the first ``sample``
    training features, checked the same way, before any trial starts."""
    if not prepared.task().checks_teacher:
        return
    n = min(sample, len(prepared.train()))
    logits = compute_teacher_logits(teacher_name, str(prepared.root), progress=False, limit=n)
    check_teacher(prepared.task(), logits, prepared.train().select(range(n)))


def _config_of(prepared: Prepared):
    """A config with the data settings the features were built with (what the task's head needs,
    e.g. num_labels), read back from the manifest."""
    import dataclasses

    from raykd.config import RaykdConfig

    inputs = prepared.manifest()["inputs"]
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    return RaykdConfig.from_dict({"task": inputs["task"], "data": {k: v for k, v in inputs.items() if k in fields}})


def _valid_logits(root: Path, entry: dict[str, Any]) -> bool:
    path = root / entry["file"]
    if not path.exists() or path.stat().st_size != entry["bytes"]:
        return False
    return _sha256_file(path) == entry["sha256"]


def prepare_teacher_logits(
    prepared: Prepared,
    teacher_name: str,
    compute: Callable[[str, str], np.ndarray] | None = None,
) -> tuple[Prepared, bool]:
    """Attach (or reuse) the teacher's logits. ``compute(teacher_name, root)`` defaults to an
    in-process :func:`compute_teacher_logits`. Returns (prepared, computed_now)."""
    root = prepared.root
    manifest = prepared.manifest()
    tfp = _digest(model_identity(teacher_name))
    entry = manifest.get("teachers", {}).get(tfp)
    if entry and _valid_logits(root, entry):
        reused = Prepared(root, entry["file"])
        if reused.task().checks_teacher:
            check_teacher(reused.task(), np.asarray(reused.teacher_logits()), reused.train())
        return reused, False
    if entry:
        log.warning("teacher logits %s are corrupt or truncated; rebuilding", entry["file"])
    logits = (compute or compute_teacher_logits)(teacher_name, str(root))
    if logits.ndim != 3 or logits.shape[0] != manifest["n_train_features"]:
        raise RuntimeError(f"teacher logits have shape {logits.shape}, expected "
                           f"({manifest['n_train_features']}, heads, classes)")
    check_teacher(prepared.task(), logits, prepared.train())
    name = f"teacher-{tfp}.npy"
    tmp = storage.temp_name(root / name)
    try:
        with open(tmp, "wb") as f:
            np.save(f, logits.astype(np.float16))
        os.replace(tmp, root / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    manifest.setdefault("teachers", {})[tfp] = {
        "file": name,
        "teacher": teacher_name,
        "shape": list(logits.shape),
        "bytes": (root / name).stat().st_size,
        "sha256": _sha256_file(root / name),
    }
    _write_manifest(root, manifest)
    return Prepared(root, name), True
