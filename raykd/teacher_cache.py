"""The study-wide cache: tokenized features (built once per study, not once per trial) and the
frozen teacher's start/end logits over every training feature (computed once, on a GPU when the Ray
cluster has one, stored as fp16 and read by every trial instead of loading the teacher).

Layout of one prepared folder, keyed by the fingerprint of (tokenizer, max_length, doc_stride, data)::

    <cache_dir>/prepared/<features fingerprint>/
        manifest.json                 fingerprint inputs, counts, and one entry per teacher
        train/ eval/ examples/        datasets saved with save_to_disk
        teacher-<teacher fp>.npy      float16 [n_train_features, 2, max_length] (start, end)

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, load_from_disk

from raykd import data as data_mod
from raykd import models
from raykd.config import DataConfig
from raykd.console import progress_line

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


def features_fingerprint(cfg: DataConfig, tokenizer_name: str, cache_dir: Path) -> dict[str, Any]:
    train_file, valid_file = data_mod.data_files(cfg, cache_dir)
    sources = {
        "train": _sha256_file(Path(train_file)) if train_file else f"hub:{cfg.dataset_name}:train",
        "validation": _sha256_file(Path(valid_file)) if valid_file else f"hub:{cfg.dataset_name}:validation",
    }
    return {
        "format": FORMAT_VERSION,
        "tokenizer": model_identity(tokenizer_name),
        "max_length": cfg.max_length,
        "doc_stride": cfg.doc_stride,
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
        """Memory-mapped [N, 2, L] float16: each worker touches only its own shard's rows."""
        if not self.teacher_file:
            raise FileNotFoundError("this prepared folder has no teacher logits")
        return np.load(self.root / self.teacher_file, mmap_mode="r")

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.root / "manifest.json").read_text())


def _remove_dead_temporaries(path: Path) -> None:
    """Temporaries of ``path`` left by a process of this host that is gone (killed midway)."""
    prefix = data_mod.temp_name(path).name.rsplit("-", 1)[0] + "-"  # up to this process's pid
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
    tmp = data_mod.temp_name(root / "manifest.json")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(root / "manifest.json")


def prepared_root(cfg: DataConfig, tokenizer_name: str, cache_dir: Path) -> Path:
    """The folder :func:`prepare_features` builds (or reuses) for these settings."""
    return cache_dir / "prepared" / _digest(features_fingerprint(cfg, tokenizer_name, cache_dir))


def _complete(root: Path) -> bool:
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        return False
    manifest = json.loads(manifest_path.read_text())
    return bool(manifest.get("complete")) and all((root / d).is_dir() for d in ("train", "eval", "examples"))


def prepare_features(cfg: DataConfig, tokenizer_name: str, cache_dir: Path) -> tuple[Prepared, bool]:
    """Build (or reuse) the tokenized features. Returns (prepared, built_now). The folder is
    built under a temporary name and renamed into place complete."""
    inputs = features_fingerprint(cfg, tokenizer_name, cache_dir)
    fp = _digest(inputs)
    root = cache_dir / "prepared" / fp
    if _complete(root):
        return Prepared(root), False
    _remove_dead_temporaries(root)
    tmp = data_mod.temp_name(root)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _build_features(cfg, tokenizer_name, cache_dir, tmp, fp, inputs)
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


def _build_features(cfg: DataConfig, tokenizer_name: str, cache_dir: Path, root: Path, fp: str,
                    inputs: dict[str, Any]) -> None:
    tok = models.load_tokenizer(tokenizer_name)
    train = data_mod.load_split(cfg, "train", cache_dir)
    valid = data_mod.load_split(cfg, "validation", cache_dir)
    train_feats = data_mod.build_features(train.examples, tok, cfg.max_length, cfg.doc_stride, train=True)
    eval_feats = data_mod.build_features(valid.examples, tok, cfg.max_length, cfg.doc_stride, train=False)
    train_feats.save_to_disk(str(root / "train"))
    eval_feats.save_to_disk(str(root / "eval"))
    valid.examples.save_to_disk(str(root / "examples"))
    _write_manifest(
        root,
        {
            "fingerprint": fp,
            "inputs": inputs,
            "n_train_examples": len(train.examples),
            "n_train_features": len(train_feats),
            "n_eval_examples": len(valid.examples),
            "n_eval_features": len(eval_feats),
            "skipped": {"train": train.skipped, "validation": valid.skipped},
            "teachers": {},
            "complete": True,
        },
    )


@torch.no_grad()
def compute_teacher_logits(
    teacher_name: str, root: str, batch_size: int = 64, device: str | None = None, progress: bool = True
) -> np.ndarray:
    """Teacher forward over every training feature → float16 [N, 2, L]. Runs where it is called
    (a Ray task with a GPU when :func:`prepare` finds one)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher = models.load_teacher(teacher_name).to(device)
    names = models.accepted_inputs(teacher)
    ds = load_from_disk(str(Path(root) / "train")).with_format("torch", columns=list(names))
    out = np.empty((len(ds), 2, len(ds[0]["input_ids"])), dtype=np.float16)
    use_amp = device.startswith("cuda")
    n_batches = (len(ds) + batch_size - 1) // batch_size
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, len(ds), batch_size)):
        batch = {k: v.to(device) for k, v in ds[start : start + batch_size].items()}
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            res = models.forward(teacher, batch, names)
        out[start : start + len(batch["input_ids"]), 0] = res.start_logits.float().cpu().numpy()
        out[start : start + len(batch["input_ids"]), 1] = res.end_logits.float().cpu().numpy()
        if progress and (b % 20 == 0 or b == n_batches - 1):
            done = start + len(batch["input_ids"])
            print(progress_line("[raykd prepare] teacher logits", done, len(ds), time.perf_counter() - t0),
                  flush=True)
    return out


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
        return Prepared(root, entry["file"]), False
    if entry:
        log.warning("teacher logits %s are corrupt or truncated; rebuilding", entry["file"])
    logits = (compute or compute_teacher_logits)(teacher_name, str(root))
    expected = (manifest["n_train_features"], 2)
    if logits.shape[:2] != expected:
        raise RuntimeError(f"teacher logits have shape {logits.shape}, expected {expected} + (L,)")
    name = f"teacher-{tfp}.npy"
    tmp = data_mod.temp_name(root / name)
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
