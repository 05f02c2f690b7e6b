"""What a student architecture costs to serve, measured once per architecture and kept on disk.

Latency depends on the architecture (model type, depth, widths, vocabulary, head), on the input
shape (batch, ``max_length``), on the precision and on where it runs (device, hardware, threads,
runtime version), not on the trained weights. So the cache key is exactly those
(:class:`ArchKey`), and a measurement is made on a freshly initialised model built from the
student's config: every trial of one architecture, trained or not yet, shares one number, and the
search can measure all of its architectures on the driver before any trial starts.

The cache is one JSON file per key under a local folder, written atomically; a file lock per key
makes concurrent callers measure once. No Ray, no MLflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from raykd.config import LatencyConfig, check_latency
from raykd.errors import UserError

log = logging.getLogger(__name__)

# The same quantity under each model family's config name (BERT/MiniLM, DistilBERT, BART-like).
_FIELDS = {
    "layers": ("num_hidden_layers", "n_layers", "num_layers"),
    "hidden": ("hidden_size", "dim", "d_model"),
    "heads": ("num_attention_heads", "n_heads"),
    "intermediate": ("intermediate_size", "hidden_dim", "ffn_dim"),
    "vocab": ("vocab_size",),
}
# Sizes that change the parameter count and the file size more than the latency; part of the key
# all the same, so that two architectures that differ only there do not share one measurement.
_SIZES = {
    "positions": ("max_position_embeddings",),
    "type_vocab": ("type_vocab_size",),
    "embedding": ("embedding_size",),
    "labels": ("num_labels",),
}
PRECISIONS = ("fp32", "int8")
CACHE_VERSION = 2  # bump when what a measurement means changes: old files are then not reused


class LatencyError(UserError):
    """A config that cannot be keyed or measured as asked."""


def _get(config: Any, names: Sequence[str]) -> Any:
    for name in names:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if value is not None:
            return value
    return None


def _runtime() -> str:
    try:
        return f"onnxruntime {importlib.metadata.version('onnxruntime')}"
    except importlib.metadata.PackageNotFoundError:
        return "onnxruntime (not installed)"


@dataclass(frozen=True)
class ArchKey:
    """Everything a latency depends on, and nothing it does not (no weights, no hyperparameters)."""

    model_type: str
    head: str  # the model class, e.g. BertForQuestionAnswering: the task head's size is part of it
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    max_length: int
    batch_size: int
    precision: str
    device: str
    target: str  # the hardware, e.g. "cpu:Intel(R) Xeon(R) ...": numbers from two machines do not mix
    threads: int | None
    runtime: str
    sizes: str = "{}"  # _SIZES' values as JSON (absent ones left out)
    version: int = CACHE_VERSION

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Short and readable: ``bert L3 H384 A12 I1536 @384 fp32 cpu``."""
        return (f"{self.model_type} L{self.layers} H{self.hidden} A{self.heads} I{self.intermediate} "
                f"@{self.max_length} {self.precision} {self.device}")


def arch_key(config: Any, max_length: int, lc: LatencyConfig | None = None, task: str | None = None,
             precision: str = "fp32") -> ArchKey:
    """The key of a student's architecture from its config (a transformers config or the dict of
    its config.json). ``task``: the model class that will be served (default: the config's first
    ``architectures`` entry)."""
    from raykd.serving.onnx_export import hardware

    lc = lc or LatencyConfig()
    if precision not in PRECISIONS:
        raise LatencyError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    values = {k: _get(config, names) for k, names in _FIELDS.items()}
    model_type = _get(config, ("model_type",))
    missing = [k for k, v in values.items() if not isinstance(v, int)] + ([] if model_type else ["model_type"])
    if missing:
        raise LatencyError(f"cannot key the architecture of this {model_type or 'model'} config: no "
                           + ", ".join(f"{k} ({'/'.join(_FIELDS.get(k, (k,)))})" for k in missing))
    head = task or (_get(config, ("architectures",)) or [None])[0]
    if not head:
        raise LatencyError(f"{model_type} config: no model class (architectures) to serve; pass task=")
    sizes = {k: _get(config, names) for k, names in _SIZES.items()}
    if sizes["labels"] is None and isinstance(config, Mapping):
        # A config.json keeps labels as id2label, and leaves out the default (2) entirely.
        sizes["labels"] = len(config["id2label"]) if config.get("id2label") else 2
    return ArchKey(model_type=str(model_type), head=str(head), max_length=int(max_length),
                   batch_size=lc.batch_size, precision=precision, device=lc.device, target=hardware(lc.device),
                   threads=lc.threads, runtime=_runtime(),
                   sizes=json.dumps({k: v for k, v in sizes.items() if v is not None}, sort_keys=True), **values)


@dataclass
class Measurement:
    """One architecture's cost: ONNX Runtime latency (median and p90, ms), parameters, ONNX size."""

    latency_ms: float
    latency_p90_ms: float
    params: int
    onnx_bytes: int
    runs: int
    warmup_runs: int
    measured_at: float  # unix time

    @property
    def size_mb(self) -> float:
        return self.onnx_bytes / 2**20

    def metrics(self) -> dict[str, float]:
        """The numbers a trial record carries (names as raykd.pareto's objectives)."""
        return {"latency_ms": self.latency_ms, "params": float(self.params), "size_mb": self.size_mb}


class LatencyCache:
    """Measurements on disk: ``<folder>/<digest>.json`` = {"key": ..., "measurement": ...}. A local
    folder (the study cache's); each file is written whole or not at all."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    def path(self, key: ArchKey) -> Path:
        return self.folder / f"{key.digest}.json"

    def get(self, key: ArchKey) -> Measurement | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            doc = json.loads(p.read_text())
            if doc["key"] != asdict(key):
                raise ValueError("its key is another architecture's")
            return Measurement(**{f.name: doc["measurement"][f.name] for f in fields(Measurement)})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A file this code did not write whole (atomic writes) or an older format: measure again.
            log.warning("latency cache %s unreadable (%s); measuring again", p, exc)
            return None

    def put(self, key: ArchKey, m: Measurement) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{key.digest}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"key": asdict(key), "label": key.label, "measurement": asdict(m)}, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))  # atomic on one filesystem: readers see old or new, never half
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def get_or_measure(self, key: ArchKey, measure: Callable[[], Measurement]) -> tuple[Measurement, bool]:
        """(the measurement, whether it was measured now). Two processes asking for one key at once:
        the second waits for the first's file instead of measuring too (timings taken while another
        measurement runs on the same cores would be wrong anyway)."""
        from filelock import FileLock

        hit = self.get(key)
        if hit is not None:
            return hit, False
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.folder / f".{key.digest}.lock")):
            hit = self.get(key)
            if hit is not None:
                return hit, False
            m = measure()
            self.put(key, m)
            return m, True


# ---------------------------------------------------------------------------------------------
# Measuring an architecture


def student_config(student: str, init_layers: Sequence[int] | None = None, init_source: str | None = None):
    """The config of the student a search would build (see ``models.build_student``), without
    loading any weights: ``init_source``'s config with ``len(init_layers)`` layers, or the
    ``student`` checkpoint's own config."""
    from transformers import AutoConfig

    from raykd.training import models

    source = init_source if init_layers else student
    if init_layers and not init_source:
        raise LatencyError("init_from_teacher_layers needs the model the layers come from")
    config = AutoConfig.from_pretrained(models.resolve(source))
    if init_layers:
        key = next((k for k in _FIELDS["layers"] if hasattr(config, k)), None)
        if key is None:
            raise LatencyError(f"cannot set the layer count of a {config.model_type} model")
        if not all(0 <= i < getattr(config, key) for i in init_layers):
            raise LatencyError(f"init_from_teacher_layers {list(init_layers)}: {source} has layers "
                               f"0..{getattr(config, key) - 1}")
        setattr(config, key, len(init_layers))
    return config


def measure_config(config: Any, head: str, max_length: int, lc: LatencyConfig, precision: str = "fp32",
                   seed: int = 0) -> Measurement:
    """Build ``head`` (a transformers model class name) from ``config`` with fresh weights, export
    it to ONNX in a temporary folder and time it (see :func:`raykd.onnx_export.latency`)."""
    import torch
    import transformers

    from raykd.serving import onnx_export
    from raykd.training import models

    check_latency(lc)
    cls = getattr(transformers, head, None)
    if cls is None:
        raise LatencyError(f"model class {head!r}: not in transformers")
    torch.manual_seed(seed)
    model = cls._from_config(config).eval()
    names = models.accepted_inputs(model)
    vocab = int(_get(config, _FIELDS["vocab"]))

    def batch(rows: int) -> dict[str, torch.Tensor]:
        # Token ids do not change an encoder's latency; the shape does (raykd's features are padded
        # to max_length, so a served feature is always that long).
        ids = torch.randint(0, vocab, (rows, max_length), generator=torch.Generator().manual_seed(seed))
        full = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        return {n: full[n] for n in names}

    with tempfile.TemporaryDirectory(prefix="raykd-latency-") as tmp:
        path = Path(tmp) / onnx_export.ONNX_FILE
        onnx_export.export(model, batch(2), path)
        if precision == "int8":
            onnx_export.quantize_int8(path, Path(tmp) / onnx_export.INT8_FILE)
            path = Path(tmp) / onnx_export.INT8_FILE
        sess = onnx_export.session(path, lc)
        lat = onnx_export.latency(sess, batch(lc.batch_size), lc)
        size = onnx_export.file_bytes(path)
        del sess
    return Measurement(latency_ms=lat.median_ms, latency_p90_ms=lat.p90_ms, params=onnx_export.param_count(model),
                       onnx_bytes=size, runs=lc.runs, warmup_runs=lc.warmup_runs, measured_at=time.time())


def measure_architecture(config: Any, head: str, max_length: int, lc: LatencyConfig | None = None,
                         cache: LatencyCache | None = None, precision: str = "fp32") -> tuple[ArchKey, Measurement, bool]:
    """(key, measurement, measured now?) of one architecture, from ``cache`` when it holds it."""
    lc = lc or LatencyConfig()
    key = arch_key(config, max_length, lc, task=head, precision=precision)

    def measure() -> Measurement:
        return measure_config(config, head, max_length, lc, precision)

    if cache is None:
        return key, measure(), True
    m, fresh = cache.get_or_measure(key, measure)
    return key, m, fresh
