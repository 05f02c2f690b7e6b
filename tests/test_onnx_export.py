"""ONNX export of students: parity with PyTorch within FP32_TOLERANCE, dynamic axes, int8, the
report, task-generic outputs, refusals; and ``cli.py export`` through the real CLI."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from cli import main
from raykd.config import LatencyConfig
from raykd.serving import onnx_export
from raykd.serving.onnx_export import ExportError

ROOT = Path(__file__).parents[1]
FAST = LatencyConfig(runs=5, warmup_runs=1, threads=1)


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("onnx") / "bert"
    return onnx_export.export_student(str(tiny_models["bert"]), out, max_length=64, quantize="int8", lc=FAST)


def test_fp32_parity_within_tolerance_and_the_report(bert_export):
    r = bert_export
    assert r.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert r.outputs == ["start_logits", "end_logits"]
    assert r.parity.tolerance == onnx_export.FP32_TOLERANCE == 1e-3
    assert r.parity.ok and r.parity.max_abs_diff < 1e-4  # measured ~1e-7 on this model
    assert set(r.parity.per_output) == {"start_logits", "end_logits"} and r.parity.argmax_agreement == 1.0
    assert r.latency.median_ms > 0 and r.latency.batch_size == 1 and r.latency.seq_len == 64
    assert r.latency.provider == "CPUExecutionProvider" and r.latency.runs == 5
    assert r.params > 0 and r.onnx_bytes > r.params * 4 * 0.9
    out = Path(r.out_dir)
    for name in ("model.onnx", "model.int8.onnx", "export_report.json", "config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "export_report.json").read_text())
    assert doc["parity"]["max_abs_diff"] == r.parity.max_abs_diff and doc["architecture"]["layers"] == 4
    assert doc["onnx_mb"] == pytest.approx(r.onnx_bytes / 2**20, abs=1e-3)


def test_int8_is_smaller_and_its_distance_reported_not_judged(bert_export):
    q = bert_export.int8
    assert q["onnx_bytes"] < bert_export.onnx_bytes
    assert q["parity"]["tolerance"] is None and q["parity"]["ok"] is None
    assert q["parity"]["max_abs_diff"] >= 0 and 0 <= q["parity"]["argmax_agreement"] <= 1
    assert q["latency"]["median_ms"] > 0


def test_dynamic_batch_and_sequence_axes(bert_export):
    sess = onnx_export.session(Path(bert_export.out_dir) / "model.onnx", FAST)
    feeds = {n: np.ones((3, 17), dtype=np.int64) for n in bert_export.inputs}
    start, end = sess.run(None, feeds)
    assert start.shape == end.shape == (3, 17)


def test_parity_check_fails_for_another_model(bert_export, tiny_models, tmp_path):
    # The same architecture with other weights: the check must see it (it is not a formality).
    import helpers

    other, tok = onnx_export.load_model(str(helpers.tiny_bert(tmp_path / "other", layers=4, seed=1)))
    sess = onnx_export.session(Path(bert_export.out_dir) / "model.onnx", FAST)
    p = onnx_export.parity(other, sess, [onnx_export.sample_inputs(tok, tuple(bert_export.inputs), 64)],
                           onnx_export.FP32_TOLERANCE)
    assert not p.ok and p.max_abs_diff > onnx_export.FP32_TOLERANCE


def test_distilbert_without_token_types(tiny_models, tmp_path):
    r = onnx_export.export_student(str(tiny_models["distilbert"]), tmp_path / "d", max_length=32, lc=FAST)
    assert r.inputs == ["input_ids", "attention_mask"] and r.parity.ok and r.int8 is None
    assert not (tmp_path / "d" / "model.int8.onnx").exists()


def test_sequence_classification_uses_the_models_own_output_name(tmp_path):
    import helpers
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=3)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "cls")
    helpers.tokenizer().save_pretrained(tmp_path / "cls")
    r = onnx_export.export_student(str(tmp_path / "cls"), tmp_path / "out", max_length=32, lc=FAST)
    assert r.outputs == ["logits"] and r.parity.ok and r.architecture["head"] == "BertForSequenceClassification"


def test_refusals(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        onnx_export.check_out_dir(tmp_path / "file", overwrite=False)
    with pytest.raises(ExportError, match="cannot be created"):
        onnx_export.check_out_dir(tmp_path / "file" / "sub", overwrite=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="not empty"):
        onnx_export.check_out_dir(tmp_path / "full", overwrite=False)
    onnx_export.check_out_dir(tmp_path / "full", overwrite=True)
    onnx_export.check_out_dir(tmp_path / "new" / "deeper", overwrite=False)
    assert not (tmp_path / "new").exists()  # checking writes nothing
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ExportError, match="onnxruntime-gpu"):
            onnx_export.check_device("cuda")


# ---------------------------------------------------------------------------------------------
# The real CLI


def cli(*args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_cli_export_writes_model_report_and_summary(tmp_path, tiny_models):
    # Slow for a unit test (~10 s): one real CLI process (torch, transformers, ONNX export, int8).
    out = cli("export", "--model", str(tiny_models["bert"]), "--onnx", "onnx_out", "--quantize", "int8",
              "--max-length", "64", "--runs", "5", "--warmup", "1", "--threads", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "parity vs PyTorch: max |logit diff|" in out.stdout and "within tolerance 0.001" in out.stdout
    assert "latency (CPUExecutionProvider, batch 1 x 64 tokens" in out.stdout and "int8:" in out.stdout
    report = json.loads((tmp_path / "onnx_out" / "export_report.json").read_text())
    assert report["parity"]["ok"] and report["int8"]["onnx_file"] == "model.int8.onnx"
    # The next two in-process (the same main() the console script runs): an interpreter start
    # (torch, transformers) costs seconds each.
    # Again into the same folder: refused without --overwrite, one line, no traceback.
    out_dir = str(tmp_path / "onnx_out")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["export", "--model", str(tiny_models["bert"]), "--onnx", out_dir, "--max-length", "64"])
    assert code == 2 and "not empty" in err.getvalue() and "Traceback" not in err.getvalue(), err.getvalue()
    assert err.getvalue().count("\n") == 1
    # With --overwrite and no --quantize, the earlier int8 model does not stay behind.
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["export", "--model", str(tiny_models["bert"]), "--onnx", out_dir, "--max-length", "64",
                     "--runs", "2", "--warmup", "0", "--overwrite"])
    assert code == 0, err.getvalue()[-2000:]
    assert not (tmp_path / "onnx_out" / "model.int8.onnx").exists()
    assert json.loads((tmp_path / "onnx_out" / "export_report.json").read_text())["int8"] is None


@pytest.mark.parametrize("args, says", [
    (["--model", "./no_such_model"], "no such folder"),
    (["--onnx", "{file}/sub"], "cannot be created"),
    (["--onnx", "/proc/raykd-no-such-dir"], "cannot write in /proc"),
    (["--max-length", "1000"], "positions"),
    (["--runs", "0"], "--runs: must be > 0"),
    (["--latency-device", "cuda"], "CUDAExecutionProvider"),
])
def test_cli_export_bad_input_exits_2_with_one_line(tmp_path, tiny_models, args, says):
    import onnxruntime as ort

    if "--latency-device" in args and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    (tmp_path / "afile").write_text("x")
    base = {"--model": str(tiny_models["bert"]), "--onnx": str(tmp_path / "out"), "--max-length": "64"}
    flags = dict(base)
    extra = []
    for i in range(0, len(args), 2):
        if args[i] in flags:
            flags[args[i]] = args[i + 1].format(file=tmp_path / "afile")
        else:
            extra += args[i:i + 2]
    argv = ["export", *[x for kv in flags.items() for x in kv], *extra]
    # In-process (the same main() the console script runs): one interpreter start for all cases.
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 2 and says in err.getvalue(), err.getvalue()
    assert err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue()
    assert not (tmp_path / "out").exists()  # a refused export writes nothing
