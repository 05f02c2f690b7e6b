"""Where a study's files live, and how they reach every node without a shared filesystem.

A study is its prepared folder (tokenized features + the teacher's logits, see
:mod:`raykd.teacher_cache`) and, when raykd fine-tunes one, the teacher's folder. Three places:

- ``data.cache_dir`` set (a mount every node sees): built and read there, nothing travels.
- a local ``search.storage_path``: built and read under ``<storage_path>/cache`` (on a cluster a
  local storage path is a shared mount, as Ray itself requires).
- a cloud ``search.storage_path`` (``s3://``, ``gs://``): the driver builds in its node-local
  cache and publishes once to ``<storage_path>/cache/``; every node fetches what its trials read
  once into its own node-local cache. Concurrent trials on a node share that copy safely: one
  process downloads under a file lock, into a temporary name renamed into place, and the others
  wait and reuse it.

The node-local cache is ``$RAYKD_NODE_CACHE`` (set it in the environment of the node's
``ray start``), else ``~/.cache/raykd``. Trials receive the study's locations as URIs and call
:func:`local_prepared` / :func:`local_model`, which return local paths on any node.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from raykd import storage

NODE_CACHE_ENV = "RAYKD_NODE_CACHE"
PREPARED_ITEMS = ("train", "eval", "examples")
MANIFEST = "manifest.json"
COMPLETE = "_raykd_complete"  # written last when a model folder is published


def node_root() -> Path:
    """This node's local cache."""
    root = os.environ.get(NODE_CACHE_ENV) or str(Path.home() / ".cache" / "raykd")
    return Path(root).expanduser().resolve()


@dataclass(frozen=True)
class Place:
    """Where the driver builds a study (``local``) and, when nodes share no filesystem, where it
    is published (``remote``, the mirror of ``local``)."""

    local: Path
    remote: str | None = None

    def shared(self, local_path: str | None) -> str | None:
        """How trials on any node name a study file the driver has at ``local_path``: its URI
        when it travels, else the path itself (also for hub names and user folders)."""
        if not (self.remote and local_path):
            return local_path
        try:
            rel = Path(local_path).resolve().relative_to(self.local)
        except ValueError:
            return local_path
        return storage.join(self.remote, rel.as_posix())


def place(paths: storage.ExperimentPaths) -> Place:
    """The experiment's cache (data.cache_dir, else <storage_path>/cache): used where it is when it
    is a folder here, else built in the node-local cache and published to it."""
    if paths.cache_dir or not paths.remote:
        return Place(Path(paths.cache))
    return Place(node_root(), paths.cache)


# ---------------------------------------------------------------------------------------------
# Fetching (any node)


def _lock(target: Path) -> FileLock:
    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target) + ".lock")


def _fetch_item(remote: str, target: Path) -> bool:
    """Download one file or folder to ``target`` unless it is there. The caller holds the lock;
    a crashed download leaves only a temporary name, never a partial ``target``."""
    if target.exists():
        return False
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    storage.download(remote, tmp)
    os.replace(tmp, target)
    return True


def _local_for(remote: str, kind: str) -> Path:
    return node_root() / kind / remote.rstrip("/").rsplit("/", 1)[-1]


def local_prepared(location: str, teacher_file: str | None = None, items: tuple[str, ...] = PREPARED_ITEMS) -> Path:
    """A prepared folder on this node: ``location`` itself when it is local; else this node's
    copy of the published folder, with ``items`` and ``teacher_file`` fetched once per node."""
    if not storage.is_remote(location):
        return Path(location)
    local = _local_for(location, "prepared")
    wanted = [*items, MANIFEST, *([teacher_file] if teacher_file else [])]
    if all((local / n).exists() for n in wanted):
        return local
    local.mkdir(parents=True, exist_ok=True)
    with _lock(local):
        for name in wanted:
            _fetch_item(storage.join(location, name), local / name)
    return local


def local_model(name: str | None) -> str | None:
    """A model on this node: hub names, ``pkg:`` names and local folders as they are; a
    published model folder (a raykd-made teacher) fetched once per node."""
    if not name or not storage.is_remote(name):
        return name
    local = _local_for(name, "teachers")
    if not local.exists():
        with _lock(local):
            _fetch_item(name, local)
    return str(local)


# ---------------------------------------------------------------------------------------------
# Publishing and reuse (the driver)


def _remote_manifest(remote: str) -> dict[str, Any] | None:
    text = storage.read_text(storage.join(remote, MANIFEST))
    return json.loads(text) if text else None


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(root / MANIFEST)


def pull_prepared(remote: str, local: Path) -> bool:
    """Before the driver prepares a study: take what is already published (features, and the
    logits of every teacher computed by an earlier search or another driver) into ``local``, so
    nothing is rebuilt. Returns whether anything was published."""
    manifest = _remote_manifest(remote)
    if not manifest or not manifest.get("complete"):
        return False
    teachers = manifest.get("teachers", {})
    local.mkdir(parents=True, exist_ok=True)
    with _lock(local):
        for name in [*PREPARED_ITEMS, *(e["file"] for e in teachers.values())]:
            _fetch_item(storage.join(remote, name), local / name)
        mine = json.loads((local / MANIFEST).read_text()) if (local / MANIFEST).exists() else {}
        _write_manifest(local, {**manifest, **mine, "teachers": {**teachers, **mine.get("teachers", {})}})
    return True


def publish_prepared(local: Path, remote: str) -> list[str]:
    """Upload what the published copy lacks (the features once, each teacher's logits once),
    then the manifest, which is what makes them visible. Returns what was uploaded."""
    mine = json.loads((local / MANIFEST).read_text())
    theirs = _remote_manifest(remote) or {}
    uploaded = []
    if not theirs.get("complete"):
        uploaded += list(PREPARED_ITEMS)
    new_teachers = {k: e for k, e in mine.get("teachers", {}).items() if k not in theirs.get("teachers", {})}
    uploaded += [e["file"] for e in new_teachers.values()]
    if not uploaded:
        return []
    for name in uploaded:
        storage.upload(local / name, storage.join(remote, name))
    merged = {**mine, "teachers": {**theirs.get("teachers", {}), **mine.get("teachers", {})}}
    storage.write_text(storage.join(remote, MANIFEST), json.dumps(merged, indent=2, sort_keys=True))
    return uploaded


def pull_model(remote: str, local: Path) -> bool:
    """A model folder the driver does not have but an earlier search published."""
    if local.exists() or not storage.exists(storage.join(remote, COMPLETE)):
        return False
    with _lock(local):
        _fetch_item(remote, local)
    return True


def publish_model(local: Path, remote: str) -> bool:
    """Upload a model folder once; the completion marker goes last."""
    if storage.exists(storage.join(remote, COMPLETE)):
        return False
    storage.upload(local, remote)
    storage.write_text(storage.join(remote, COMPLETE), "")
    return True
