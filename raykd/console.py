"""What a command shows on the terminal, and the log file that keeps everything it printed.

By default the terminal shows this process's own output (raykd's lines, Tune's progress table, the
summary, warnings and errors) and, of what Ray forwards from its other processes, only raykd's own
``[raykd...]`` lines (without Ray's ``(RayTrainWorker pid=...)`` prefix): Ray Train's per-report
chatter, model loading reports, progress bars and C++ notices from workers and controllers go to
the log file only. Libraries' progress bars and info logs in this process are turned off.
``--verbose`` shows everything as Ray and the libraries print it. Either way, every line the
process writes to stdout/stderr, forwarded ones included, is appended to the command's log file
under the experiment folder (``<experiment>/logs/<command>.log``; ``prepare``, which has no
experiment folder: ``<storage_path>/logs/<search.name>-prepare.log``).

Installed once per CLI command, before Ray or the libraries are imported: Python loggers bind to
the stream that is ``sys.stderr`` when they are created. Output written by C/C++ code straight to
the file descriptors bypasses this module.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

# Ray's prefix on a line forwarded from another process: "(RayTrainWorker pid=123, ip=10.0.0.2) ",
# possibly coloured. Lines from the raylet or the autoscaler carry no pid and are always shown.
_FORWARDED = re.compile(r"^(?:\x1b\[[0-9;]*m)?\((?:[^()\s]+ )?pid=\d+[^)]*\)(?:\x1b\[[0-9;]*m)? ?")
RAYKD_TAG = "[raykd"

# Set before the libraries are imported (they read them at import), and inherited by the processes
# of a Ray instance this process starts. A user's own setting wins.
_QUIET_ENV = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' map/save bars: sub-second on raykd's steps
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables", ...
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # raykd's tracking callback writes every round to MLflow (about 0.5 s on a sqlite store), which
    # Tune's default 0.5 s threshold reports as a "performance bottleneck" once per round.
    "TUNE_WARN_THRESHOLD_S": "5",
}


def shown(line: str) -> str | None:
    """The line as the quiet terminal shows it, or None when it goes to the log file only."""
    m = _FORWARDED.match(line)
    if not m:
        return line
    rest = line[m.end():]
    return rest if rest.startswith(RAYKD_TAG) else None


class _Tee(io.TextIOBase):
    """A text stream that appends everything to the log and passes the shown lines to the terminal."""

    def __init__(self, terminal: TextIO, log: _Log, lock: threading.Lock, verbose: bool):
        self._terminal, self._log, self._lock, self._verbose = terminal, log, lock, verbose
        self._pending = ""

    def write(self, text: str) -> int:
        with self._lock:
            self._log.write(text)
            if self._verbose:
                self._terminal.write(text)
                return len(text)
            # Whole lines only: a forwarded line is recognised by its start.
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                out = shown(line)
                if out is not None:
                    self._terminal.write(out + "\n")
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._log.flush()
            self._terminal.flush()

    def close_pending(self) -> None:
        if self._pending:
            self.write("\n")

    def isatty(self) -> bool:
        return self._terminal.isatty()

    def fileno(self) -> int:
        return self._terminal.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._terminal, "encoding", "utf-8")

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str):
        # Anything else a library asks of sys.stdout (e.g. ``buffer``) is the terminal's.
        return getattr(self._terminal, name)


class _Log:
    """The log file, opened by :func:`begin`: what is written before (e.g. a refused
    configuration's error) stays in memory, so a command that never starts leaves no file."""

    def __init__(self, path: Path):
        self.path = path
        self._file: TextIO | None = None
        self._early: list[str] = []
        self._closed = False

    def open(self) -> None:
        if self._file is not None or self._closed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 -- as long as the command
        self._file.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} raykd {' '.join(sys.argv[1:])}\n")
        self._file.write("".join(self._early))
        self._early = []

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
        elif not self._closed:
            self._early.append(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        # Ray's threads may still write through the streams they hold: drop that quietly.
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None


class Console:
    """The installed streams and their log; :meth:`restore` puts the original streams back."""

    def __init__(self, path: Path, verbose: bool):
        self.log = _Log(path)
        # Reentrant: a signal handler (Tune's SIGINT) may log while this thread is inside a write.
        lock = threading.RLock()
        self._saved = sys.stdout, sys.stderr
        sys.stdout = _Tee(sys.stdout, self.log, lock, verbose)
        sys.stderr = _Tee(sys.stderr, self.log, lock, verbose)

    @staticmethod
    def flush_pending() -> None:
        """Show a last line that has no newline yet, and flush the terminal and the log."""
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, _Tee):
                stream.close_pending()
                stream.flush()

    def restore(self) -> None:
        self.flush_pending()
        sys.stdout, sys.stderr = self._saved
        self.log.close()


_installed: Console | None = None


def install(path: Path, verbose: bool = False) -> Console:
    """Route this process's output through the log file at ``path`` (created by :func:`begin`);
    quiet unless ``verbose``."""
    global _installed
    _installed = Console(path, verbose)
    if not verbose:
        quiet_libraries()  # after the streams are installed: Optuna's handler binds to sys.stderr
    return _installed


def finish() -> None:
    """The command returns: show a last line that has no newline and flush the log. The streams stay
    installed: Ray's exit handlers still print forwarded lines after this."""
    if _installed is not None:
        _installed.flush_pending()


def begin() -> Path | None:
    """The command starts its work (Ray starts): from now on its output goes to the log file too.
    Returns the file's path, or None when no console is installed (raykd used as a library)."""
    if _installed is None:
        return None
    _installed.log.open()
    return _installed.log.path


def quiet_libraries() -> None:
    """Turn off the libraries' progress bars and info logs that raykd's console replaces."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import optuna

    # "A new study created in RDB ...": the search prints its own set-up.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def duration(seconds: float) -> str:
    """``"3m01s"``; rounded before it is split, so never ``"1m60s"``."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def progress_line(label: str, done: int, total: int, elapsed: float, unit: str = "features") -> str:
    """``"<label>: 640/10570 features, 55/s, elapsed 12s, ETA 3m01s"`` for a long single pass."""
    rate = done / max(elapsed, 1e-9)
    eta = duration((total - done) / max(rate, 1e-9))
    return f"{label}: {done}/{total} {unit}, {rate:.0f}/s, elapsed {elapsed:.0f}s, ETA {eta}"
