"""The import rules (pyproject.toml's [tool.importlinter] contracts: layers without cycles, MLflow
only in raykd.tracking, ONNX only in raykd.serving, no Ray in the tasks or the losses), checked by
import-linter's own command; and what it cannot see: cli.py (a module, not a package) and
``torch.onnx`` (an attribute of torch, not an import). Also: no dead code (vulture)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_dead_code():
    """vulture at its default confidence finds nothing unused in raykd and cli.py; the names that
    only a library or the tests use are in vulture_whitelist.py, each with why."""
    vulture = Path(sys.executable).parent / "vulture"
    out = subprocess.run([str(vulture), "raykd", "cli.py", "vulture_whitelist.py"], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def _uses(path: Path) -> set[str]:
    """The modules a file imports (absolute names) and ``torch.onnx`` where it reads that attribute."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                (node.value.id, node.attr) == ("torch", "onnx"):
            found.add("torch.onnx")
    return found


def _outside(folder: str) -> list[Path]:
    return [p for p in [ROOT / "cli.py", *sorted((ROOT / "raykd").rglob("*.py"))]
            if not p.is_relative_to(ROOT / "raykd" / folder)]


def test_torch_onnx_and_the_cli_keep_to_the_rooms():
    def breaks(paths: list[Path], roots: tuple[str, ...]) -> list[str]:
        return [f"{p.relative_to(ROOT)}: {m}" for p in paths for m in sorted(_uses(p))
                if m.split(".")[0] in roots or m == "torch.onnx" and "torch.onnx" in roots]

    assert not breaks(_outside("serving"), ("onnx", "onnxruntime", "onnxscript", "torch.onnx"))
    assert not breaks(_outside("tracking"), ("mlflow",))
    # The check sees what it looks for (it would not pass by finding nothing).
    assert "torch.onnx" in _uses(ROOT / "raykd" / "serving" / "onnx_export.py")
    assert "mlflow" in _uses(ROOT / "raykd" / "tracking" / "store.py")
