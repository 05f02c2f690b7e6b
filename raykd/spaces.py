"""The ``space:`` section of a search YAML → an Optuna define-by-run function (for Ray Tune's
``OptunaSearch``), with every mistake caught before Ray starts.

Keys are dotted config fields (any field of :class:`raykd.config.RaykdConfig`). Values::

    distill.temperature: {type: uniform, low: 1, high: 8}
    optim.learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-4}
    optim.batch_size:    {type: choice, values: [8, 16]}
    data.doc_stride:     {type: int, low: 32, high: 128}          # qint: add step
    distill.alpha_hard:  {type: complement, of: distill.alpha_ce} # = 1 - alpha_ce (tied)
    optim.warmup_ratio:  0.1                                       # a constant

A key may be written by an old name (``distill.alpha_squad`` for ``distill.alpha_hard``,
:data:`raykd.config.KEY_ALIASES`): it is kept as written (trial configs, the summary's columns)
and compared by its current name.
"""

from __future__ import annotations

import itertools
import json
import math
import typing
from dataclasses import dataclass
from typing import Any

from raykd import config as config_mod
from raykd import tasks  # also registers the tasks' checks that config validation runs
from raykd.config import canonical
from raykd.errors import UserError

KINDS = ("uniform", "loguniform", "int", "qint", "choice", "complement")
ALPHAS = ("distill.alpha_ce", "distill.alpha_hard", "distill.alpha_cos")


class SpaceError(UserError):
    """A bad search space; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # one of KINDS, or "constant"
    low: float | None = None
    high: float | None = None
    step: int | None = None
    values: tuple = ()
    of: str | None = None
    value: Any = None


def _err(source: str | None, key: str, msg: str) -> SpaceError:
    where = f"{source}: space.{key}" if source else f"space.{key}"
    return SpaceError(f"{where}: {msg}")


def _number(spec: dict, name: str, source, key) -> float:
    if name not in spec:
        raise _err(source, key, f"missing '{name}'")
    try:
        return config_mod._check_type(spec[name], float, name, None)
    except config_mod.ConfigError:
        raise _err(source, key, f"'{name}' must be a number, got {spec[name]!r}") from None


def _check_value(key: str, value: Any, source) -> None:
    """A value the field's type accepts and that passes the field's range checks."""
    try:
        config_mod._check_type(value, config_mod.field_type(key), key, None)
    except config_mod.ConfigError as exc:
        raise _err(source, key, str(exc).split(": ", 1)[-1]) from None
    name = canonical(key)
    if name in ALPHAS and not 0 <= float(value) <= (math.inf if name == "distill.alpha_cos" else 1):
        raise _err(source, key, f"an alpha must be in [0, 1], got {value!r}")
    if name == "distill.temperature" and float(value) <= 0:
        raise _err(source, key, f"temperature must be > 0, got {value!r}")


def parse(space: dict[str, Any], source: str | None = None) -> list[Param]:
    """Validate a raw ``space:`` mapping into Params; raises SpaceError naming file and key."""
    params: list[Param] = []
    for key, spec in space.items():
        try:
            tp = config_mod.field_type(key)
        except KeyError:
            raise _err(source, key, f"unknown config field; {config_mod.suggest(key)}") from None
        if not isinstance(spec, dict):
            _check_value(key, spec, source)
            params.append(Param(key, "constant", value=spec))
            continue
        kind = spec.get("type")
        if kind not in KINDS:
            raise _err(source, key, f"type must be one of {list(KINDS)}, got {kind!r}")
        extra = set(spec) - {"type", "low", "high", "step", "values", "of"}
        if extra:
            raise _err(source, key, f"unknown entries {sorted(extra)}")
        if kind == "choice":
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise _err(source, key, "choice needs a non-empty 'values' list")
            for v in values:
                _check_value(key, v, source)
            params.append(Param(key, kind, values=tuple(values)))
            continue
        if kind == "complement":
            of = spec.get("of")
            if canonical(key) not in ALPHAS or not isinstance(of, str) or canonical(of) not in ALPHAS:
                raise _err(source, key, "complement ties two alphas: {type: complement, of: distill.alpha_ce}")
            params.append(Param(key, kind, of=of))
            continue
        low, high = _number(spec, "low", source, key), _number(spec, "high", source, key)
        if low >= high:
            raise _err(source, key, f"low ({low:g}) must be < high ({high:g})")
        if kind == "loguniform" and low <= 0:
            raise _err(source, key, f"loguniform needs low > 0, got {low:g}")
        step = None
        if kind in ("int", "qint"):
            if int not in (typing.get_args(tp) or (tp,)):
                raise _err(source, key, f"{kind} on a non-integer field")
            step = int(spec.get("step", 1))
            if step < 1:
                raise _err(source, key, "step must be >= 1")
        for bound in (low, high):
            _check_value(key, int(bound) if kind in ("int", "qint") else bound, source)
        params.append(Param(key, kind, low=low, high=high, step=step))
    keys = {canonical(p.key) for p in params}
    for i, p in enumerate(params):
        if p.kind == "complement":
            base = next((q for q in params if canonical(q.key) == canonical(p.of)), None)
            if base is None or base.kind == "complement":
                raise _err(source, p.key, f"complement of {p.of}, which is not searched")
            params[i] = Param(p.key, p.kind, of=base.key)  # the name Optuna knows it by
    if len(keys) != len(params):
        raise SpaceError(f"{source}: duplicate keys in space")
    return params


class DefineByRun:
    """An Optuna define-by-run space: suggests the searched values and returns the constants and
    tied alphas (Ray's OptunaSearch merges that dict into the trial's config). A class, not a
    closure, because Tune pickles the searcher into its experiment checkpoint for resume."""

    def __init__(self, params: list[Param]):
        self.params = list(params)

    def __call__(self, trial) -> dict[str, Any]:
        fixed = {p.key: p.value for p in self.params if p.kind == "constant"}
        for p in self.params:
            if p.kind in ("uniform", "loguniform"):
                trial.suggest_float(p.key, p.low, p.high, log=p.kind == "loguniform")
            elif p.kind in ("int", "qint"):
                trial.suggest_int(p.key, int(p.low), int(p.high), step=p.step or 1)
            elif p.kind == "choice" and encoded(p):
                # Optuna's choices are scalars: a list (a layer list) is chosen by its JSON text,
                # and the trial's config gets the list back.
                fixed[p.key] = json.loads(trial.suggest_categorical(p.key, [json.dumps(v) for v in p.values]))
            elif p.kind == "choice":
                trial.suggest_categorical(p.key, list(p.values))
        for p in self.params:
            if p.kind == "complement":
                fixed[p.key] = 1.0 - trial.params[p.of]
        return fixed


define_by_run = DefineByRun


def encoded(p: Param) -> bool:
    """Whether Optuna sees this choice's values as JSON text (values that are not scalars)."""
    return p.kind == "choice" and any(isinstance(v, (list, dict)) for v in p.values)


def optuna_point(point: dict[str, Any], params: list[Param]) -> dict[str, Any]:
    """A point to evaluate as Optuna knows its values (encoded choices as their JSON text)."""
    by_key = {p.key: p for p in params}
    return {k: json.dumps(v) if k in by_key and encoded(by_key[k]) else v for k, v in point.items()}


def searched_keys(params: list[Param]) -> list[str]:
    return [p.key for p in params if p.kind not in ("constant", "complement")]


def check_point(point: dict[str, Any], params: list[Param], source: str | None,
                base: config_mod.RaykdConfig | None = None) -> None:
    """A ``points_to_evaluate`` entry must set exactly the searched keys, with allowed values
    (and, given the base config, make a valid config with them)."""
    wanted = set(searched_keys(params))
    if set(point) != wanted:
        raise SpaceError(f"{source}: search.points_to_evaluate entry {point} must set exactly {sorted(wanted)}")
    for p in params:
        if p.key not in point:
            continue
        v = point[p.key]
        _check_value(p.key, v, source)
        if p.kind == "choice" and v not in p.values:
            raise _err(source, p.key, f"points_to_evaluate value {v!r} is not one of {list(p.values)}")
        if p.low is not None and not p.low <= float(v) <= p.high:
            raise _err(source, p.key, f"points_to_evaluate value {v!r} is outside [{p.low:g}, {p.high:g}]")
    if base is not None:
        flat = {**point, **{q.key: 1.0 - float(point[q.of]) for q in params if q.kind == "complement"}}
        try:
            config_mod.with_values(base, flat)
        except config_mod.ConfigError as exc:
            msg = str(exc).split(": ", 1)[-1] if base.source else str(exc)
            raise SpaceError(f"{source}: search.points_to_evaluate entry {point} makes an invalid config: {msg}") from None


# ---------------------------------------------------------------------------------------------
# What a searched key does to a trial. Every key a space names either takes effect in the trial,
# or changes the study the trial trains on (features, teacher logits) and is honoured by preparing
# one study per distinct value, or is refused here, before Ray starts.

# Keys that change what the study prepares: tokenized features (tokenizer, lengths, training data)
# or the teacher and its logits.
STUDY_KEYS = (
    "data.max_length", "data.doc_stride", "data.max_train_samples", "data.train_file",
    "data.synthetic_train_size", "models.teacher", "models.student", "distill.teacher_mode",
)
_EVAL_DATA = "changes the evaluation data, so the trials' scores would not be comparable"
_PER_SEARCH = "is a setting of the whole search, not of a trial"
REJECTED = {
    "task": "is what the search is about: its data, model head and scores; search one task per search",
    "data.num_labels": "is fixed by the data's labels",
    "data.dataset_name": _EVAL_DATA,
    "data.dataset_config": _EVAL_DATA,
    "data.synthetic_if_missing": _EVAL_DATA,
    "data.validation_file": _EVAL_DATA,
    "data.synthetic": _EVAL_DATA,
    "data.synthetic_eval_size": _EVAL_DATA,
    "data.synthetic_seed": _EVAL_DATA,
    "data.max_eval_samples": _EVAL_DATA,
    "data.cache_dir": "is where the study is stored, not a hyperparameter",
    "latency": "is how every architecture's cost is measured, once, before the trials",
    "models.teacher_finetune": "makes the study's one teacher before any trial starts; fine-tune the "
                               "teachers first and search models.teacher over their folders",
    "optim.eval_every_steps": "has no effect in a search: every trial evaluates search.rounds times, at "
                              "equal fractions of its own training; set search.rounds instead",
    "scaling": "fixes each trial's resources for the whole search (it decides how many trials run at once); "
               "set it in the scaling section",
    "search": _PER_SEARCH,
    "tracking": _PER_SEARCH,
}


def key_effect(key: str) -> str:
    """``"trial"`` (honoured by the trial's own config), ``"study"`` (a study per distinct value),
    or ``"rejected"``."""
    key = canonical(key)
    if key in STUDY_KEYS:
        return "study"
    if any(key == k or key.startswith(k + ".") for k in REJECTED):
        return "rejected"
    return "trial"


def check_keys(params: list[Param], source: str | None, task: str | None = None) -> None:
    """Refuse keys that a trial cannot honour, naming the key and why: keys no trial may change,
    and (given the task's name) keys the task never reads, which would change nothing."""
    unused = tasks.get(task).unused_keys if task else {}
    for p in params:
        name = canonical(p.key)
        if key_effect(p.key) == "rejected":
            why = next(v for k, v in REJECTED.items() if name == k or name.startswith(k + "."))
            raise _err(source, p.key, f"cannot be searched: it {why}")
        if name in unused:
            raise _err(source, p.key, f"cannot be searched: it has no effect for task {task} ({unused[name]})")


def study_keys(params: list[Param]) -> list[str]:
    """The searched keys (not constants) that need a study per distinct value."""
    return [p.key for p in params if p.kind not in ("constant", "complement") and key_effect(p.key) == "study"]


def constants(params: list[Param]) -> dict[str, Any]:
    return {p.key: p.value for p in params if p.kind == "constant"}


def _corners(p: Param) -> list[Any]:
    if p.kind == "constant":
        return [p.value]
    if p.kind == "choice":
        return list(p.values)
    if p.kind in ("int", "qint"):
        step = p.step or 1
        return [int(p.low), int(p.low) + (int(p.high) - int(p.low)) // step * step]
    if p.kind in ("uniform", "loguniform"):
        return [p.low, p.high]
    return []


def values_of(params: list[Param], base: config_mod.RaykdConfig, key: str) -> list[Any]:
    """The values ``key`` can take in a trial: its choices or range ends, or the base value."""
    by_key = {canonical(p.key): p for p in params}
    p = by_key.get(canonical(key))
    if p is None:
        node: Any = base
        for part in canonical(key).split("."):
            node = getattr(node, part)
        return [node]
    if p.kind == "complement":
        return [1.0 - float(v) for v in _corners(by_key[canonical(p.of)])]
    return _corners(p)


def check_corners(base: config_mod.RaykdConfig, params: list[Param]) -> None:
    """Each searched value (every choice, both ends of a range) applied to the base config must
    make a valid config: what a trial would refuse after Ray started is refused here instead."""
    for p in params:
        if p.kind == "complement":
            continue
        for v in _corners(p):
            flat = {p.key: v}
            flat.update({q.key: 1.0 - float(v) for q in params if q.kind == "complement" and q.of == p.key})
            try:
                config_mod.with_values(base, flat)
            except config_mod.ConfigError as exc:
                msg = str(exc).split(": ", 1)[-1] if base.source else str(exc)
                raise _err(base.source, p.key, f"value {v!r} makes an invalid config: {msg}") from None
    _check_joint_corners(base, params)
    _check_alphas_not_all_zero(base, params)


def _can_be_zero(p: Param | None, base_value: float) -> bool:
    """Whether a trial can get exactly 0 for this key (a continuous range hits one value with
    probability 0)."""
    if p is None:
        return float(base_value) == 0
    if p.kind == "constant":
        return float(p.value) == 0
    if p.kind == "choice":
        return any(float(v) == 0 for v in p.values)
    return False


def _check_alphas_not_all_zero(base: config_mod.RaykdConfig, params: list[Param]) -> None:
    """Refuse a space in which a trial can draw every loss weight as exactly 0 (it would train on
    a zero loss). A complement ties two alphas to a sum of 1, so such a space never can."""
    by_key = {canonical(p.key): p for p in params}
    if any(by_key[k].kind == "complement" for k in ALPHAS if k in by_key):
        return
    if all(_can_be_zero(by_key.get(k), getattr(base.distill, k.split(".")[1])) for k in ALPHAS):
        searched = [by_key[k].key for k in ALPHAS if k in by_key] or list(ALPHAS)
        raise _err(base.source, searched[0], "a trial can draw every alpha (alpha_ce, alpha_hard, alpha_cos) as 0, "
                   "a zero loss; remove 0 from one of them")


# Searched keys whose valid values depend on each other: every combination of their ends must be
# valid, not only each end on the base config (max_length 128 with doc_stride 192 is not).
JOINT = [("data.max_length", "data.doc_stride")]


def _check_joint_corners(base: config_mod.RaykdConfig, params: list[Param]) -> None:
    by_key = {p.key: p for p in params if p.kind not in ("complement", "constant")}
    for group in JOINT:
        searched = [by_key[k] for k in group if k in by_key]
        if len(searched) < 2:
            continue
        for combo in itertools.product(*(_corners(p) for p in searched)):
            flat = {p.key: v for p, v in zip(searched, combo)}
            try:
                config_mod.with_values(base, flat)
            except config_mod.ConfigError as exc:
                msg = str(exc).split(": ", 1)[-1] if base.source else str(exc)
                raise _err(base.source, " and ".join(group),
                           f"values {flat} make an invalid config: {msg}") from None


def may_use_teacher_logits(base: config_mod.RaykdConfig, params: list[Param]) -> bool:
    """True when some point of the space distils from cached teacher logits (alpha_ce > 0 in
    cached mode): then the study prepares them, even when the base config's alpha_ce is 0."""
    alpha = any(float(v) > 0 for v in values_of(params, base, "distill.alpha_ce"))
    cached = "cached" in values_of(params, base, "distill.teacher_mode")
    return alpha and cached


def largest(params: list[Param], base: config_mod.RaykdConfig, key: str) -> float:
    return max(float(v) for v in values_of(params, base, key))
