"""A student as it would be served: exported to ONNX (dynamic batch and sequence axes), optionally
int8 dynamic quantization, checked against PyTorch on real tokenized text, and timed in ONNX Runtime.
Owns the export, the parity check, the latency measurement and ``cli.py export``'s folder and report.

Generic over the task: the ONNX inputs are the ones the model's forward takes (``input_ids``,
``attention_mask``, ``token_type_ids`` where it has them) and the outputs are the model's own output
names (``start_logits``/``end_logits`` for QA, ``logits`` for sequence classification).

torch, transformers, onnx, onnxscript and onnxruntime are imported where they are used: the
ONNX packages are an optional extra (``pip install 'raykd[onnx]'``). No Ray, no MLflow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raykd.config import LatencyConfig, RaykdConfig, check_latency
from raykd.errors import UserError
from raykd.serving.latency_key import arch_key, hardware

if TYPE_CHECKING:
    import numpy as np
    import torch

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "export_report.json"
# fp32 ONNX Runtime and PyTorch compute the same graph with differently ordered float sums; on
# the students here the logits differ by ~1e-6 (tiny models) to ~1e-5 (MiniLM). 1e-3 is far above
# that noise and far below a real export bug (a wrong mask or a missing layer moves logits by >0.1).
FP32_TOLERANCE = 1e-3
QUANTIZE = ("int8",)
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

# Real text for the parity check: two (question, context) pairs of different lengths, so padding
# and the attention mask are exercised; a classifier reads them as sentence pairs.
SAMPLE = [
    ("Where was Alice Novak born?",
     ("Alice Novak was born in Lisbon in 1971. She studied chemistry in Porto and has worked as a "
      "research chemist in Geneva since 2003, where she leads a group on battery materials.")),
    ("What does the committee decide?",
     "The committee meets twice a year and decides which projects receive funding."),
]


class ExportError(UserError):
    """A model, folder or runtime that cannot be exported or measured as asked."""


def require_onnx() -> None:
    missing = [m for m in ONNX_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}, which are not installed; "
                          "pip install 'raykd[onnx]' (or: pip install onnx onnxscript onnxruntime)")


# ---------------------------------------------------------------------------------------------
# Export


def load_model(path: str):
    """The model class its config names (``architectures[0]``, e.g. BertForQuestionAnswering),
    in eval mode, and its tokenizer."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from raykd.modeling import models

    path = models.resolve(path)
    config = AutoConfig.from_pretrained(path)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise ExportError(f"--model {path}: its config.json names no model class transformers has "
                          f"(architectures: {getattr(config, 'architectures', None)}); save it with save_pretrained")
    from transformers.utils import logging as hf_logging

    # The command prints its own summary; transformers' per-load progress bar says nothing here.
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return cls.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def sample_inputs(tokenizer, names: tuple[str, ...], max_length: int, rows: int | None = None,
                  pad: bool = True) -> dict[str, torch.Tensor]:
    """SAMPLE tokenized as the model takes it: padded to ``max_length`` (how raykd's features are
    fed), or at its natural length; ``rows`` repeats it to a batch of that size."""
    pairs = list(SAMPLE) if rows is None else [SAMPLE[i % len(SAMPLE)] for i in range(rows)]
    enc = tokenizer([q for q, _ in pairs], [c for _, c in pairs], truncation=True,
                    max_length=max_length, padding="max_length" if pad else "longest", return_tensors="pt")
    missing = [n for n in names if n not in enc]
    if "input_ids" in missing or "attention_mask" in missing:
        raise ExportError(f"the tokenizer gives {sorted(enc)}, the model takes {list(names)}")
    # A tokenizer without token types (DistilBERT's) paired with a model that takes them: zeros,
    # as the model's own default.
    return {n: enc[n] if n in enc else enc["input_ids"].new_zeros(enc["input_ids"].shape) for n in names}


def output_names(model, inputs: dict[str, torch.Tensor]) -> list[str]:
    """The names of what the model returns for ``inputs`` (without a loss, hidden states or
    attentions, which it returns only when asked)."""
    import torch

    with torch.no_grad():
        out = model(**inputs, return_dict=True)
    return [k for k in out if k not in ("loss", "hidden_states", "attentions")]


def _named_outputs(model, input_names: tuple[str, ...], names: list[str]):
    import torch

    class NamedOutputs(torch.nn.Module):
        """The model with positional inputs and a tuple of its named outputs (what ONNX holds)."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            out = self.model(**dict(zip(input_names, inputs)), return_dict=True)
            return tuple(out[k] for k in names)

    return NamedOutputs().eval()


@contextlib.contextmanager
def _quiet_exporter():
    # The exporter prints its steps, warns that torchvision ops are not registered, that two axes
    # share a name, and about torch.export internals: none of it is about this model.
    reg = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = reg.level
    reg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        reg.setLevel(level)


@dataclass
class Exported:
    path: str
    inputs: list[str]
    outputs: list[str]


def export(model, inputs: dict[str, torch.Tensor], path: str | Path) -> Exported:
    """Write ``model`` to ``path`` as ONNX with the torch.export-based exporter (torch's default
    and recommended one; it needs onnxscript). Batch and sequence axes stay dynamic: the example
    batch must hold at least 2 rows, since torch.export fixes an axis of size 1."""
    import torch

    require_onnx()
    names = tuple(inputs)
    first = next(iter(inputs.values()))
    if first.shape[0] < 2:
        raise ValueError("export needs an example batch of at least 2 rows to keep the batch axis dynamic")
    outs = output_names(model, inputs)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            _named_outputs(model, names, outs), tuple(inputs.values()), dynamo=True, verbose=False,
            input_names=list(names), output_names=outs,
            dynamic_shapes={"inputs": tuple({0: batch, 1: seq} for _ in names)},  # forward(*inputs)
        )
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        program.save(str(path))  # one file (weights inline) below ONNX's 2 GB limit
    return Exported(str(path), list(names), outs)


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    """int8 dynamic quantization (weights int8, activations quantized on the fly): the usual CPU
    recipe for BERT-like encoders; no calibration data needed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="raykd-quant-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # ONNX Runtime's advised pre-processing (graph optimisation + shape inference) first. Its
        # symbolic shape inference does not complete on torch.export's graphs; ONNX's own runs.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)


def file_bytes(path: str | Path) -> int:
    """The ONNX file's size, with its external-data file when it has one."""
    p = Path(path)
    data = p.with_name(p.name + ".data")
    return p.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def param_count(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# ---------------------------------------------------------------------------------------------
# ONNX Runtime: sessions, parity, latency


def check_device(device: str) -> str:
    """The ONNX Runtime provider for ``device``; refuses one this runtime does not have (before
    anything is exported, and again before anything is measured) rather than measuring elsewhere."""
    import onnxruntime as ort

    provider = PROVIDERS[device]
    available = ort.get_available_providers()
    if provider not in available:
        raise ExportError(f"latency device {device}: onnxruntime {ort.__version__} here has no {provider} "
                          f"(available: {', '.join(available)}); for a GPU, pip install onnxruntime-gpu "
                          "in place of onnxruntime")
    return provider


def session(path: str | Path, lc: LatencyConfig):
    """An ONNX Runtime session on ``lc.device`` (see :func:`check_device`)."""
    import onnxruntime as ort

    provider = check_device(lc.device)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: ORT warns about unused initializers the exporter folds
    if lc.threads:
        opts.intra_op_num_threads = lc.threads
    sess = ort.InferenceSession(str(path), opts, providers=[provider])
    if sess.get_providers()[0] != provider:
        raise ExportError(f"latency device {lc.device}: onnxruntime fell back to {sess.get_providers()[0]} "
                          f"(the {provider} could not start: CUDA/cuDNN libraries?)")
    return sess


def run(sess, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    import numpy as np

    names = [i.name for i in sess.get_inputs()]
    feeds = {n: np.asarray(inputs[n].numpy() if hasattr(inputs[n], "numpy") else inputs[n], dtype=np.int64)
             for n in names}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@dataclass
class Parity:
    """How far ONNX Runtime's outputs are from PyTorch's on the same inputs."""

    max_abs_diff: float
    per_output: dict[str, float]
    # Share of rows whose argmax over the last axis (the predicted class or span position) is the
    # same: what a looser, quantized model is judged by.
    argmax_agreement: float
    tolerance: float | None = None
    ok: bool | None = None


def parity(model, sess, batches: list[dict[str, torch.Tensor]], tolerance: float | None = None) -> Parity:
    import numpy as np
    import torch

    diffs: dict[str, float] = {}
    agree, total = 0, 0
    for inputs in batches:
        with torch.no_grad():
            ref = model(**inputs, return_dict=True)
        got = run(sess, inputs)
        for name, value in got.items():
            want = ref[name].float().numpy()
            diffs[name] = max(diffs.get(name, 0.0), float(np.abs(value - want).max()))
            if want.ndim >= 2:
                agree += int((value.argmax(-1) == want.argmax(-1)).sum())
                total += want.argmax(-1).size
    worst = max(diffs.values())
    return Parity(worst, diffs, agree / total if total else 1.0, tolerance,
                  None if tolerance is None else worst <= tolerance)


@dataclass
class Latency:
    """Wall time of one ``session.run`` in milliseconds: median (the figure raykd uses), p90 and
    min of ``runs`` timed runs after ``warmup_runs`` untimed ones, at this batch and length. The
    inputs come from host memory on every run, as a server receives them (on CUDA the copy to the
    GPU is part of the time)."""

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    warmup_runs: int
    batch_size: int
    seq_len: int
    device: str
    provider: str
    threads: int | None
    target: str
    onnxruntime: str


def latency(sess, inputs: dict[str, Any], lc: LatencyConfig) -> Latency:
    import numpy as np
    import onnxruntime as ort

    names = [i.name for i in sess.get_inputs()]
    feeds = {n: np.ascontiguousarray(np.asarray(inputs[n].numpy() if hasattr(inputs[n], "numpy") else inputs[n],
                                                dtype=np.int64)) for n in names}
    batch, seq = feeds[names[0]].shape
    for _ in range(lc.warmup_runs):
        sess.run(None, feeds)
    times = []
    for _ in range(lc.runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return Latency(statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))], times[0],
                   lc.runs, lc.warmup_runs, int(batch), int(seq), lc.device, sess.get_providers()[0], lc.threads,
                   hardware(lc.device), ort.__version__)


# ---------------------------------------------------------------------------------------------
# cli.py export


@dataclass
class ExportReport:
    model: str
    out_dir: str
    inputs: list[str]
    outputs: list[str]
    max_length: int
    params: int
    onnx_file: str
    onnx_bytes: int
    parity: Parity
    latency: Latency
    architecture: dict[str, Any]
    int8: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["onnx_mb"] = round(self.onnx_bytes / 2**20, 3)
        return out


def export_student(model: str, out_dir: str | Path, max_length: int = 384, quantize: str | None = None,
                   lc: LatencyConfig | None = None) -> ExportReport:
    """Export a saved student folder to ``out_dir``: ``model.onnx`` (+ ``model.int8.onnx``), its
    tokenizer and config, and ``export_report.json``; parity against PyTorch on SAMPLE (batch 2
    padded to ``max_length``, and batch 1 at its natural length: the dynamic axes) and the
    latency at ``lc.batch_size`` × ``max_length``. The fp32 parity's ``ok`` says whether it is
    within FP32_TOLERANCE; the int8 model's distance is reported, not judged."""
    from raykd.modeling import models

    lc = lc or LatencyConfig()
    check_latency(lc, "latency")
    if quantize is not None and quantize not in QUANTIZE:
        raise ExportError(f"--quantize {quantize}: supported: {', '.join(QUANTIZE)}")
    require_onnx()
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"--onnx {out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    # An earlier export's files (--overwrite) must not pass for this one's, e.g. an int8 model
    # left over from an export with --quantize.
    for name in (ONNX_FILE, ONNX_FILE + ".data", INT8_FILE, REPORT_FILE):
        (out / name).unlink(missing_ok=True)
    net, tok = load_model(model)
    names = models.accepted_inputs(net)
    example = sample_inputs(tok, names, max_length)
    natural = sample_inputs(tok, names, max_length, rows=1, pad=False)
    timed = sample_inputs(tok, names, max_length, rows=lc.batch_size)

    fp32 = export(net, example, out / ONNX_FILE)
    sess = session(fp32.path, lc)
    report = ExportReport(
        model=str(model), out_dir=str(out), inputs=fp32.inputs, outputs=fp32.outputs, max_length=max_length,
        params=param_count(net), onnx_file=ONNX_FILE, onnx_bytes=file_bytes(fp32.path),
        parity=parity(net, sess, [example, natural], FP32_TOLERANCE), latency=latency(sess, timed, lc),
        architecture=asdict(arch_key(net.config, max_length, lc, task=type(net).__name__)),
    )
    del sess
    if quantize == "int8":
        quantize_int8(fp32.path, out / INT8_FILE)
        qsess = session(out / INT8_FILE, lc)
        report.int8 = {"onnx_file": INT8_FILE, "onnx_bytes": file_bytes(out / INT8_FILE),
                       "onnx_mb": round(file_bytes(out / INT8_FILE) / 2**20, 3),
                       "parity": asdict(parity(net, qsess, [example, natural])),
                       "latency": asdict(latency(qsess, timed, lc))}
        del qsess
    tok.save_pretrained(str(out))
    net.config.save_pretrained(str(out))
    (out / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    return report


def export_for_registry(checkpoint_dir: str, out_dir: str, cfg: RaykdConfig) -> dict[str, Any]:
    """A trained student (a checkpoint folder) exported to ``out_dir`` at the config's
    ``data.max_length`` and ``latency`` settings, and what the registry logs beside it: its
    ONNX Runtime latency (ms), its distance from PyTorch and whether that is within tolerance
    (:data:`raykd.tracking.registry.ExportOnnx`)."""
    report = export_student(checkpoint_dir, out_dir, max_length=cfg.data.max_length, lc=cfg.latency)
    return {"onnx_latency_ms": report.latency.median_ms, "onnx_max_abs_diff": report.parity.max_abs_diff,
            "onnx_parity_ok": bool(report.parity.ok)}


def check_out_dir(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse, before anything is written, a folder that cannot hold the export: a file, a path
    under a file, a folder that already holds files (without ``overwrite``), or one not writable."""
    p = Path(out_dir).expanduser()
    if p.exists() and not p.is_dir():
        raise ExportError(f"--onnx {out_dir}: is a file; expected a folder to write the ONNX model to")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise ExportError(f"--onnx {out_dir}: folder is not empty; pass --overwrite to replace its export "
                          "files, or choose another folder")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ExportError(f"--onnx {out_dir}: {parent} is a file, so the folder cannot be created")
    # A real write, removed at once: permission bits say nothing to root, nor about a read-only
    # or pseudo file system.
    try:
        with tempfile.TemporaryDirectory(dir=parent, prefix=".raykd-probe-"):
            pass
    except OSError as exc:
        raise ExportError(f"--onnx {out_dir}: cannot write in {parent} ({exc.strerror or exc})") from None


def summary_lines(report: ExportReport) -> list[str]:
    lat, par = report.latency, report.parity
    lines = [
        (f"[raykd] exported {report.model} -> {Path(report.out_dir) / report.onnx_file} "
         f"({report.params / 1e6:.2f}M parameters, {report.onnx_bytes / 2**20:.1f} MB)"),
        (f"[raykd] parity vs PyTorch: max |logit diff| {par.max_abs_diff:.2e} ({'within' if par.ok else 'OVER'} "
         f"tolerance {par.tolerance:g}), argmax agreement {par.argmax_agreement:.0%}"),
        (f"[raykd] latency ({lat.provider}, batch {lat.batch_size} x {lat.seq_len} tokens, median of {lat.runs} "
         f"after {lat.warmup_runs} warm-up): {lat.median_ms:.2f} ms (p90 {lat.p90_ms:.2f} ms)"),
    ]
    if report.int8:
        q = report.int8
        lines.append(f"[raykd] int8: {q['onnx_mb']:.1f} MB, max |logit diff| vs PyTorch {q['parity']['max_abs_diff']:.2e}, "
                     f"argmax agreement {q['parity']['argmax_agreement']:.0%}, latency {q['latency']['median_ms']:.2f} ms")
    lines.append(f"[raykd] report: {Path(report.out_dir) / REPORT_FILE}")
    return lines
