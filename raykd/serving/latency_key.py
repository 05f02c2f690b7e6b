"""What a measured latency depends on, and nothing else: the student's architecture (model type,
depth, widths, vocabulary, head), the input shape and precision, and where it runs (device,
hardware, threads, runtime version) as one key (:class:`ArchKey`). Shared by the latency cache
(:mod:`raykd.serving.latency`) and the export report (:mod:`raykd.serving.onnx_export`), which
import it and not each other. No torch at import, no ONNX, no Ray, no MLflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raykd.config import LatencyConfig
from raykd.errors import UserError

# The same quantity under each model family's config name (BERT/MiniLM, DistilBERT, BART-like).
FIELDS = {
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


def get_field(config: Any, names: Sequence[str]) -> Any:
    for name in names:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if value is not None:
            return value
    return None


def runtime() -> str:
    try:
        return f"onnxruntime {importlib.metadata.version('onnxruntime')}"
    except importlib.metadata.PackageNotFoundError:
        return "onnxruntime (not installed)"


def hardware(device: str) -> str:
    """The hardware a latency was measured on (latencies from different machines do not mix)."""
    if device == "cuda":
        try:
            import torch

            if torch.cuda.is_available():
                return f"cuda:{torch.cuda.get_device_name(0)}"
        except ImportError:
            pass
        return "cuda"
    name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"cpu:{name or platform.processor() or platform.machine()}"


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
    lc = lc or LatencyConfig()
    if precision not in PRECISIONS:
        raise LatencyError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    values = {k: get_field(config, names) for k, names in FIELDS.items()}
    model_type = get_field(config, ("model_type",))
    missing = [k for k, v in values.items() if not isinstance(v, int)] + ([] if model_type else ["model_type"])
    if missing:
        raise LatencyError(f"cannot key the architecture of this {model_type or 'model'} config: no "
                           + ", ".join(f"{k} ({'/'.join(FIELDS.get(k, (k,)))})" for k in missing))
    head = task or (get_field(config, ("architectures",)) or [None])[0]
    if not head:
        raise LatencyError(f"{model_type} config: no model class (architectures) to serve; pass task=")
    sizes = {k: get_field(config, names) for k, names in _SIZES.items()}
    if sizes["labels"] is None and isinstance(config, Mapping):
        # A config.json keeps labels as id2label, and leaves out the default (2) entirely.
        sizes["labels"] = len(config["id2label"]) if config.get("id2label") else 2
    return ArchKey(model_type=str(model_type), head=str(head), max_length=int(max_length),
                   batch_size=lc.batch_size, precision=precision, device=lc.device, target=hardware(lc.device),
                   threads=lc.threads, runtime=runtime(),
                   sizes=json.dumps({k: v for k, v in sizes.items() if v is not None}, sort_keys=True), **values)
