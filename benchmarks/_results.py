"""The results writer both benchmark scripts share: one JSON file with everything measured and one
Markdown file with the tables, each headed by the exact command, the machine (CPU model, cores),
the date, the package versions and the git commit. Also the per-arm store that makes a long run
resumable: each arm's result is written as soon as the arm finishes, and a rerun skips it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "ray", "optuna", "mlflow")


@dataclass
class Places:
    """The settings every benchmark script shares: a tiny run, rerunning finished arms, raykd's
    storage_path and the results folder. Each script's Settings extends it."""

    smoke: bool = False
    force: bool = False
    storage: Path = ROOT / "raykd_results"
    out: Path = ROOT / "benchmarks" / "results"


def add_place_flags(p, smoke: str, force: str = "rerun arms that already have a result") -> None:
    """--smoke, --force, --storage and --out, with each script's own help for the first two."""
    p.add_argument("--smoke", action="store_true", help=smoke)
    p.add_argument("--force", action="store_true", help=force)
    p.add_argument("--storage", type=Path, help="raykd's storage_path (default ./raykd_results)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu_model(), "cores": usable, "logical_cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "gpu": "none" if not _has_gpu() else _gpu_name()}


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return commit + (" (with uncommitted changes)" if dirty else "")


def command() -> str:
    """The command line that ran this script, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_s = str(script.relative_to(ROOT))
    except ValueError:
        script_s = str(script)
    return "python " + " ".join(shlex.quote(a) for a in [script_s, *sys.argv[1:]])


def header() -> dict[str, Any]:
    return {"command": command(), "machine": machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "versions": versions(), "git_commit": git_commit()}


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write(out_dir: Path, stem: str, title: str, result: dict[str, Any], sections: list[str]) -> tuple[Path, Path]:
    """``<out_dir>/<stem>.json`` (the header plus ``result``) and ``<stem>.md`` (the header, then
    ``sections`` of Markdown). Returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    head = header()
    m = head["machine"]
    v = head["versions"]
    md = [
        f"# {title}", "",
        f"- Command: `{head['command']}`",
        (f"- Machine: {m['cpu']}, {m['cores']} cores usable ({m['logical_cpus']} logical CPUs); GPU: {m['gpu']}; "
         f"{m['platform']}; Python {m['python']}"),
        f"- Date: {head['date']}",
        "- Packages: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Git commit: {head['git_commit']}", "",
    ]
    md += [s.rstrip() + "\n" for s in sections]
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    _atomic_write(json_path, json.dumps({**head, **result}, indent=2, default=str))
    _atomic_write(md_path, "\n".join(md))
    return json_path, md_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@dataclass
class ArmStore:
    """One JSON file per finished arm under ``folder``. An arm counts as done only when it was run
    with the same command (``key``): a rerun with other settings runs it again."""

    folder: Path

    def path(self, arm: str) -> Path:
        return self.folder / f"{arm}.json"

    def load(self, arm: str, key: Any) -> dict[str, Any] | None:
        p = self.path(arm)
        if not p.exists():
            return None
        saved = json.loads(p.read_text())
        return saved if saved.get("key") == json.loads(json.dumps(key, default=str)) else None

    def save(self, arm: str, key: Any, result: dict[str, Any]) -> dict[str, Any]:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"key": key, **result}
        _atomic_write(self.path(arm), json.dumps(record, indent=2, default=str))
        return json.loads(json.dumps(record, default=str))
