"""The student architectures a search can build, and what each costs to serve.

A trial's architecture is chosen by :data:`KEYS` (which checkpoint, or which teacher layers from
which source). The search enumerates every combination its space allows, measures each once on
the driver before any trial starts (``raykd.latency``: ONNX Runtime latency at the study's
``max_length``, parameters, ONNX size; cached on disk per architecture), and hands every trial the
costs of its own architecture, which it reports with every round. No Ray, no MLflow.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from raykd import spaces
from raykd.config import RaykdConfig, canonical, with_values
from raykd.errors import UserError

# The config keys that decide a student's architecture.
KEYS = ("models.student", "models.init_from_teacher_layers", "models.init_from")
# Keys that would change a measured latency without changing the architecture key: searching
# them together with costs is refused (one measurement per architecture would be wrong).
SHAPE_KEYS = ("data.max_length",)
# Keys that would change which architecture a layer-built student has (its layers' source).
SOURCE_KEYS = ("models.teacher",)


def key_of(values: Mapping[str, Any]) -> str:
    """An architecture's key: its :data:`KEYS` values as canonical JSON (a missing one counts as
    None); :class:`KeyOf` computes it from a trial's config."""
    return json.dumps({k: values.get(k) for k in KEYS}, sort_keys=True, default=str)


def of_config(cfg: RaykdConfig) -> dict[str, Any]:
    return {"models.student": cfg.models.student, "models.init_from_teacher_layers": cfg.models.init_from_teacher_layers,
            "models.init_from": cfg.models.init_from}


def searched(params: list[spaces.Param]) -> list[str]:
    """The architecture keys the space varies (as the space writes them)."""
    return [p.key for p in params if canonical(p.key) in KEYS and p.kind != "constant"]


def all_of(params: list[spaces.Param], base: RaykdConfig) -> list[dict[str, Any]]:
    """Every architecture a trial can have: each combination of the searched keys' choices on top
    of the base config (which the space's constants are already part of)."""
    keys = searched(params)
    for k in keys:
        p = next(q for q in params if q.key == k)
        if p.kind != "choice":
            raise spaces.SpaceError(f"{base.source or 'config'}: space.{k}: an architecture key is searched as a "
                                    "choice (a list of values)")
    combos = itertools.product(*(spaces.values_of(params, base, k) for k in keys))
    out, seen = [], set()
    for combo in combos:
        values = {**of_config(base), **{canonical(k): v for k, v in zip(keys, combo)}}
        if key_of(values) not in seen:
            seen.add(key_of(values))
            out.append(values)
    return out


def check_effective(params: list[spaces.Param], base: RaykdConfig) -> None:
    """A searched architecture key that no trial reads is refused (any search, costs or not): the
    trials would differ only in name. A student built from teacher layers takes its architecture
    and weights from the layer source, so ``models.student`` then names only the tokenizer; a
    student loaded whole never reads ``models.init_from``."""
    src = base.source or "config"
    keys = {canonical(k) for k in searched(params)}
    layer_lists = spaces.values_of(params, base, "models.init_from_teacher_layers")
    if "models.student" in keys and all(layer_lists):
        raise spaces.SpaceError(
            f"{src}: space.models.student: every trial builds its student from teacher layers "
            f"(models.init_from_teacher_layers), so the student checkpoint is never loaded and this search "
            "would change only the tokenizer; set models.init_from_teacher_layers: null to load the students whole")
    if "models.init_from" in keys and not any(layer_lists):
        raise spaces.SpaceError(
            f"{src}: space.models.init_from: no trial copies teacher layers (models.init_from_teacher_layers is "
            "null), so the layer source is never read; set models.init_from_teacher_layers, or drop this key")


def check_space(params: list[spaces.Param], source: str | None) -> None:
    """With serving costs in the search, a searched shape key would make one architecture's
    single measurement wrong for some of its trials: refused."""
    for p in params:
        if canonical(p.key) in SHAPE_KEYS and p.kind != "constant":
            raise spaces.SpaceError(f"{source or 'config'}: space.{p.key}: cannot be searched together with serving "
                                    "costs (latency is measured once per architecture at one max_length); fix it")
        if canonical(p.key) in SOURCE_KEYS and p.kind != "constant":
            raise spaces.SpaceError(f"{source or 'config'}: space.{p.key}: cannot be searched together with serving "
                                    "costs (a student built from the teacher's layers would change architecture "
                                    "with it, unmeasured); search students of one teacher")


def check_budget(costs: dict[str, dict[str, float]], budget: float | None, source: str | None) -> None:
    """With a latency budget no architecture meets, every trial would be wasted: refused."""
    if budget is None or not costs:
        return
    fastest = min(c["latency_ms"] for c in costs.values())
    if fastest > budget:
        raise CostError(f"{source or 'config'}: search.max_latency_ms {budget:g}: no architecture of the space answers "
                        f"within it (the fastest takes {fastest:.1f} ms here); raise the budget or add smaller students")


def within_budget(cfg: RaykdConfig, params: list[spaces.Param], costs: dict[str, dict[str, float]],
                  budget: float) -> tuple[dict[str, Any], list[str]]:
    """A budget without objectives: the space without the architecture choices that can never win
    (every architecture built with them is over the budget; Optuna, told the score alone, would
    keep drawing the larger students for their higher scores). Returns the new ``space`` and one
    line per choice left out."""
    archs = all_of(params, cfg)
    fits = {key_of(a): costs[key_of(a)]["latency_ms"] <= budget for a in archs}
    space, dropped = dict(cfg.space), []
    for k in searched(params):
        spec = space[k]
        kept = []
        for v in spec["values"]:
            same = [a for a in archs if _same(a[canonical(k)], v)]
            if any(fits[key_of(a)] for a in same):
                kept.append(v)
            else:
                fastest = min(costs[key_of(a)]["latency_ms"] for a in same)
                dropped.append(f"space.{k}: {json.dumps(v)} left out: {fastest:.1f} ms > "
                               f"search.max_latency_ms {budget:g}")
        space[k] = {**spec, "values": kept}
    for point in cfg.search.points_to_evaluate:
        values = {**of_config(cfg), **{canonical(k): v for k, v in point.items() if canonical(k) in KEYS}}
        if not fits.get(key_of(values), True):
            raise CostError(f"{cfg.source or 'config'}: search.points_to_evaluate entry {point}: its student "
                            f"({describe(values)}) takes {costs[key_of(values)]['latency_ms']:.1f} ms here, over "
                            f"search.max_latency_ms {budget:g}; it can never be the best: drop it")
    return space, dropped


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


class CostError(UserError):
    """An architecture whose cost cannot be measured; the message names it."""


def measure(cfg: RaykdConfig, architectures: list[dict[str, Any]], teacher: str, cache_dir: str | Path,
            say: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """{architecture key: {latency_ms, params, size_mb}} for each architecture, measured on this
    machine (or taken from the cache in ``cache_dir``) with ``cfg.latency`` at ``data.max_length``."""
    from raykd import tasks
    from raykd.serving import latency

    cache = latency.LatencyCache(Path(cache_dir) / "latency")
    task = tasks.get(cfg.task)
    out = {}
    for values in architectures:
        # Checked whole (once per architecture, before any trial): a combination the config refuses
        # is said here in one line, not found when its trial starts.
        arch_cfg = with_values(cfg, values)
        m = arch_cfg.models
        try:
            config = latency.student_config(m.student, m.init_from_teacher_layers, m.init_from or teacher)
            task_head = task.head(arch_cfg)
            for name, value in task_head.config:
                setattr(config, name, value)
            head = concrete_class(task_head.auto_class, config)
            key, measured, fresh = latency.measure_architecture(config, head, cfg.data.max_length, cfg.latency, cache)
        except (OSError, ValueError, latency.LatencyError) as exc:
            raise CostError(f"architecture {describe(values)}: cannot measure its latency: {exc}") from None
        out[key_of(values)] = measured.metrics()
        say(f"[raykd] {describe(values)} ({key.label}): {measured.latency_ms:.1f} ms, "
            f"{measured.params / 1e6:.1f} M parameters, {measured.size_mb:.1f} MB "
            f"({'measured' if fresh else 'cached'})")
    return out


def concrete_class(auto_class: str, config: Any) -> str:
    """The transformers class an auto class builds for ``config`` (``BertForQuestionAnswering``):
    the auto class's own public choice, built on the meta device (no weights allocated)."""
    import torch
    import transformers

    with torch.device("meta"):
        return type(getattr(transformers, auto_class).from_config(config)).__name__


def describe(values: Mapping[str, Any]) -> str:
    """``student distilbert-base-uncased`` or ``layers [0, 2, 4] of <source>``."""
    layers = values.get("models.init_from_teacher_layers")
    if layers:
        return f"layers {list(layers)}" + (f" of {values['models.init_from']}" if values.get("models.init_from") else
                                           " of the teacher")
    return f"student {values.get('models.student')}"


class KeyOf:
    """A trial's architecture key from its config (the sampled values on top of ``base``, the
    base config's architecture values). Picklable: the per-architecture scheduler holding it is
    saved with the search."""

    def __init__(self, base: Mapping[str, Any]):
        self.base = dict(base)

    def __call__(self, config: Mapping[str, Any]) -> str:
        return key_of({**self.base, **{canonical(k): v for k, v in config.items() if canonical(k) in KEYS}})
