"""What a student architecture costs to serve, measured once per architecture and kept on disk.

Latency depends on the architecture, the input shape, the precision and where it runs, not on the
trained weights. So the cache key is exactly those (:class:`~raykd.serving.latency_key.ArchKey`), and a measurement is made on a freshly initialised model built from the
student's config: every trial of one architecture, trained or not yet, shares one number, and the
search can measure all of its architectures on the driver before any trial starts.

The cache is one JSON file per key under a local folder, written atomically; a file lock per key
makes concurrent callers measure once. No Ray, no MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from raykd.config import LatencyConfig, check_latency
from raykd.serving.latency_key import FIELDS, ArchKey, LatencyError, arch_key, get_field

log = logging.getLogger(__name__)


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

    from raykd.modeling import models

    source = init_source if init_layers else student
    if init_layers and not init_source:
        raise LatencyError("init_from_teacher_layers needs the model the layers come from")
    config = AutoConfig.from_pretrained(models.resolve(source))
    if init_layers:
        key = next((k for k in FIELDS["layers"] if hasattr(config, k)), None)
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

    from raykd.modeling import models
    from raykd.serving import onnx_export

    check_latency(lc)
    cls = getattr(transformers, head, None)
    if cls is None:
        raise LatencyError(f"model class {head!r}: not in transformers")
    torch.manual_seed(seed)
    model = cls._from_config(config).eval()
    names = models.accepted_inputs(model)
    vocab = int(get_field(config, FIELDS["vocab"]))

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
