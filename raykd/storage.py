"""Files under ``search.storage_path``, whatever it is: a local folder, or a URI that pyarrow's
filesystems understand (``s3://``, ``gs://``, ``file://``, ...), the same layer Ray Train and Tune
write checkpoints and experiment state through. Credentials and endpoints come from the usual
environment (an instance profile, ``AWS_*`` variables, ``AWS_ENDPOINT_URL`` for an S3-compatible
server).

Owns: resolving a location to (filesystem, path), copying files and folders up and down, small
text files (summary, run ids), turning the scheme-less paths Ray reports back into URIs, and the
write-then-rename naming every local cache file uses (:func:`temp_name`, :func:`write_once`), and
where one experiment's files go (:class:`ExperimentPaths`, read from a config's storage_path and
name). Nothing here knows about studies, trials, tasks or Ray.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

if TYPE_CHECKING:
    from raykd.config import RaykdConfig


def temp_name(path: Path) -> Path:
    """A sibling of ``path`` to write before renaming it onto ``path``: hidden, and unique to this
    host and process, so that concurrent writers (trials, nodes sharing a cache) never write the
    same temporary and a reader never sees half a file."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def write_once(path: Path, make_text: Callable[[], str]) -> Path:
    """Write the local file ``path`` unless it exists, whole (under a temporary name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = temp_name(path)
        tmp.write_text(make_text())
        tmp.replace(path)
    return path


def is_remote(location: str) -> bool:
    """A URI (``s3://``, ``gs://``, ...) rather than a path on this machine."""
    return "://" in str(location)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a local path or a URI."""
    if is_remote(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI alike."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def as_uri(path: str | None, like: str) -> str | None:
    """Ray reports checkpoint paths inside their filesystem (``bucket/key`` for S3); give such a
    path the scheme of ``like`` (the storage it lives in) so it can be opened again."""
    if not path or is_remote(path) or not is_remote(like):
        return path
    return f"{like.split('://', 1)[0]}://{path.lstrip('/')}"


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(location: str) -> str | None:
    """The file's text, or None when there is no such file."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_text(location: str, text: str) -> None:
    """Write whole: readers see the old file or the new one (a rename on local disks; object
    stores publish an object only once it is complete)."""
    fs, path = filesystem(location)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = path + ".tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(text.encode("utf-8"))
        fs.move(tmp, path)
        return
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def upload(local: Path, location: str) -> None:
    """Copy a local file or folder (recursively) to ``location``."""
    fs, path = filesystem(location)
    if local.is_dir():
        fs.create_dir(path, recursive=True)
    # Single-threaded, as Ray Train uploads: a threaded copy_files to S3 hangs once there are more
    # files than IO threads (apache/arrow#15233, fixed in pyarrow 19, which pyproject requires).
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs,
                    use_threads=False)


def download(location: str, local: Path) -> None:
    """Copy a file or folder (recursively) from ``location`` to the local path ``local``."""
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(location)
    if info.type == pafs.FileType.Directory:
        local.mkdir(parents=True, exist_ok=True)
    else:
        local.parent.mkdir(parents=True, exist_ok=True)
    # Threaded: the hang is in uploads (background writes); Ray Train downloads threaded too.
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem(),
                    use_threads=True)


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[str]:
    """A local folder holding ``location``'s files: the folder itself when it is local, else a
    temporary download removed on exit."""
    if not is_remote(location):
        yield location
        return
    tmp = Path(tempfile.mkdtemp(prefix="raykd-download-"))
    try:
        download(location, tmp / "data")
        yield str(tmp / "data")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# One experiment's places under search.storage_path

TRAIN_RUNS = "train_runs"  # Ray Train's runs of the trials, one folder per trial
SUMMARY = "summary.json"  # written once a search ends: its presence marks a finished search
OPTUNA_DB = "optuna.db"  # the Optuna study, beside the experiment when storage is local
LOGS = "logs"  # the console's log files
CACHE = "cache"  # prepared studies, under the storage root (unless data.cache_dir says otherwise)
LOCAL_LOGS = "raykd_logs"  # the logs' folder under the cwd when storage is remote (nowhere local to write)


@dataclass(frozen=True)
class ExperimentPaths:
    """Where one experiment's files go, for a local folder or a URI alike: ``root`` is
    ``search.storage_path`` (resolved when local), the experiment is ``<root>/<name>`` (``name``:
    ``search.name``, or ``<search.name>-<mode>`` for a single train/finetune run). Pure paths,
    the same on every node; nothing is created here."""

    root: str
    name: str
    # data.cache_dir: a folder every node sees, in place of <root>/cache.
    cache_dir: str | None = None

    @classmethod
    def at(cls, storage_path: str, name: str, cache_dir: str | None = None) -> ExperimentPaths:
        root = str(storage_path) if is_remote(storage_path) else str(Path(storage_path).expanduser().resolve())
        return cls(root, name, cache_dir)

    @classmethod
    def of(cls, cfg: RaykdConfig, mode: str | None = None) -> ExperimentPaths:
        """A search's places (``mode`` None), or a single run's (``mode``: distill, finetune)."""
        s = cfg.search
        return cls.at(s.storage_path, s.name if mode is None else f"{s.name}-{mode}", cfg.data.cache_dir)

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    @property
    def experiment(self) -> str:
        return join(self.root, self.name)

    @property
    def runs(self) -> str:
        return join(self.experiment, TRAIN_RUNS)

    @property
    def summary(self) -> str:
        return join(self.experiment, SUMMARY)

    @property
    def optuna_db(self) -> str | None:
        """The sqlite file of the Optuna study; None when storage is remote (the study is kept
        in memory then)."""
        return None if self.remote else join(self.experiment, OPTUNA_DB)

    @property
    def local(self) -> Path:
        """Where this machine writes the files it keeps for itself (logs): the root, or
        ``./raykd_logs`` when storage is remote (nowhere local to write there)."""
        return Path(LOCAL_LOGS).resolve() if self.remote else Path(self.root)

    @property
    def logs(self) -> Path:
        """The console's log folder: in the experiment, or ``./raykd_logs/<name>/logs`` when
        storage is remote."""
        return self.local / self.name / LOGS

    @property
    def cache(self) -> str:
        """Where prepared studies are shared: data.cache_dir, else ``<root>/cache`` (a URI when
        storage is remote; :func:`raykd.study.store.place` adds the node-local side)."""
        if self.cache_dir:
            return str(Path(self.cache_dir).expanduser().resolve())
        return join(self.root, CACHE)
