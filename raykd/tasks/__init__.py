"""The tasks raykd can distil, by name (``task:`` in a config). Everything task-specific is in
this package; see :mod:`raykd.tasks.base` for what a task owns.

Owns: the Task seam (``base.py``), the one batched forward pass from features to a task's logits
(``forward.py``), the registry here (by name, and :func:`of_model`: by the head a model carries),
and one folder per task (``qa/``, ``classification/``), which never import each other.

Where it sits: above raykd.config, errors, console and storage and the model plumbing of
raykd.modeling (``models``: heads, loading, a forward call; ``losses``: the hard loss), which
imports nothing of raykd but raykd.errors; below everything that asks a task (training, the study
cache, the search, serving, the CLI). Tasks never import ray, mlflow, nor raykd's search,
study, tracking or serving. Heavy libraries (torch, datasets, pyarrow) load inside functions or in
``forward.py``/``qa/inference.py``: config validation and preflight use the registry cheaply.
"""

from __future__ import annotations

from raykd import config
from raykd.tasks.base import Built, Column, DataError, Score, Task
from raykd.tasks.classification.task import Classification
from raykd.tasks.qa.task import QuestionAnswering

_TASKS: dict[str, Task] = {t.name: t for t in (QuestionAnswering(), Classification())}
for _task in _TASKS.values():
    config.register_task(_task)  # config validation reads each task's checks from its registry


def names() -> list[str]:
    return list(_TASKS)


def get(name: str) -> Task:
    """The task called ``name`` (validated when the config loads, so a KeyError here is a bug)."""
    return _TASKS[name]


def of_model(conf: dict | None) -> Task | None:
    """The task whose trained head a model's config.json names (``architectures``), or None when
    it names none of theirs (a bare encoder, a masked-LM checkpoint, no config)."""
    archs = (conf or {}).get("architectures") or []
    found = [t for t in _TASKS.values() if any(str(a).endswith(t.architecture) for a in archs)]
    return found[0] if len(found) == 1 else None


__all__ = ["Built", "Column", "DataError", "Score", "Task", "get", "names", "of_model"]
