"""raykd command line (also installed as the ``raykd`` console script). Thin: parse arguments,
call raykd functions, print results. Bad input exits with status 2 and a one-line message
(``--debug``: with its traceback)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import traceback
from pathlib import Path


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML file, e.g. search_spaces/quickstart.yaml")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting by its dotted key, e.g. --set optim.learning_rate=1e-4 (repeatable)",
    )
    p.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto' or host:port); default: RAY_ADDRESS, else a local Ray")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and the libraries' full output (always kept in <experiment>/logs/<command>.log)")


def _common_args(p: argparse.ArgumentParser, top: bool = False) -> None:
    # Accepted before or after the command; SUPPRESS keeps a subcommand from resetting the top's.
    p.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="on bad input, also print the traceback")


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing experiment folder of the same search.name")


def _tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, the one pip and MLflow see)."""
    from importlib import metadata

    try:
        return metadata.version("raykd")
    except metadata.PackageNotFoundError:
        return "(not installed: pip install -e . in the repository)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raykd",
        description="Distributed hyperparameter search for task-specific knowledge distillation "
                    "(question answering on SQuAD, text classification such as SST-2).",
    )
    parser.add_argument("--version", action="version", version=f"raykd {_version()}")
    _common_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="one distillation run (teacher -> student) on Ray Train")
    _config_args(p)
    _tracking_args(p)
    _overwrite_arg(p)
    _common_args(p)

    p = sub.add_parser("finetune", help="fine-tune models.student on the task without a teacher "
                                        "(makes a teacher; the no-distillation baseline)")
    _config_args(p)
    _tracking_args(p)
    _overwrite_arg(p)
    _common_args(p)

    p = sub.add_parser("prepare", help="tokenize the data and cache the teacher's logits once")
    _config_args(p)
    _common_args(p)

    p = sub.add_parser("evaluate", help="score a saved model on a local data file through its task: EM/F1 of a "
                                        "question-answering model, accuracy/F1 of a classifier")
    p.add_argument("--model", required=True, help="model folder (save_pretrained format) or hub name")
    p.add_argument("--data", required=True, help="the task's data file: SQuAD v1.1 JSON (question answering); "
                                                 "CSV, TSV or JSON lines with 'sentence' and 'label' (classification)")
    from raykd import tasks
    from raykd.config import DataConfig

    d = DataConfig()  # the flags' defaults are the config's
    p.add_argument("--task", default=None, choices=tasks.names(),
                   help="the task to score (default: the one whose head --model carries; question_answering "
                        "when it carries none)")
    p.add_argument("--max-length", type=int, default=None, help=f"tokens per feature (default {d.max_length})")
    p.add_argument("--doc-stride", type=int, default=None,
                   help=f"question answering: overlap of a long context's windows (default {d.doc_stride})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-best", type=int, default=None,
                   help=f"question answering: candidate starts and ends per window (default {d.n_best})")
    p.add_argument("--max-answer-length", type=int, default=None,
                   help=f"question answering: longest answer in tokens (default {d.max_answer_length})")
    p.add_argument("--predictions", metavar="FILE", default=None,
                   help="question answering: write {question_id: answer} as the official SQuAD v1.1 "
                        "evaluate-v1.1.py reads it")
    p.add_argument("--nbest", metavar="FILE", default=None,
                   help="question answering: write each question's n-best answers with scores and probabilities")
    _common_args(p)

    p = sub.add_parser("search", help="Ray Tune + Optuna + ASHA over the distillation trainer")
    _config_args(p)
    _tracking_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted experiment search.name in search.storage_path")
    _overwrite_arg(p)
    p.add_argument("--num-samples", type=int, default=None, help="override search.num_samples")
    _common_args(p)

    p = sub.add_parser("export", help="write a saved student as ONNX (optionally int8), check it against "
                                      "PyTorch and time it in ONNX Runtime")
    p.add_argument("--model", required=True, help="model folder (save_pretrained format), e.g. a trial's checkpoint")
    p.add_argument("--onnx", required=True, metavar="DIR",
                   help="folder to write model.onnx, the tokenizer and export_report.json to")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write model.int8.onnx (dynamic quantization) and measure it")
    p.add_argument("--max-length", type=int, default=384,
                   help="tokens per input for the parity check and the latency (the study's data.max_length)")
    p.add_argument("--latency-device", choices=["cpu", "cuda"], default=None,
                   help="where ONNX Runtime runs (default cpu; cuda needs onnxruntime-gpu)")
    p.add_argument("--runs", type=int, default=None, help="timed runs; the median is reported (default 50)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 10)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that already holds files")
    _common_args(p)
    return parser


def _load(args):
    from raykd import tasks  # noqa: F401  (registers the tasks' checks that load_config runs)
    from raykd.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "num_samples", None) is not None:
        overrides.append(f"search.num_samples={args.num_samples}")  # validated like any setting
    cfg = load_config(args.config, overrides)
    # Before Ray and the libraries are imported: their loggers bind to the streams it installs.
    from raykd import console

    console.install(log_file(cfg, args.command), verbose=args.verbose)
    return cfg


def log_file(cfg, command: str) -> Path:
    """The command's log: ``<experiment>/logs/<command>.log``; ``prepare``'s, which has no
    experiment folder (one would stop a later search's preflight): ``<root>/logs/<name>-prepare.log``
    (under ``./raykd_logs`` when storage is remote)."""
    from raykd import storage

    paths = storage.ExperimentPaths.of(cfg, {"train": "distill", "finetune": "finetune"}.get(command))
    if command == "prepare":
        return paths.local / storage.LOGS / f"{paths.name}-prepare.log"
    return paths.logs / f"{command}.log"


def cmd_run(args, mode: str) -> int:
    from raykd import run

    cfg = _load(args)
    summary = run.single_run(cfg, mode, address=args.address, tracking_uri=args.tracking_uri,
                             tracking=not args.no_tracking, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_prepare(args) -> int:
    from raykd import run

    cfg = _load(args)
    print(json.dumps(run.prepare(cfg, address=args.address), indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from raykd import run

    settings = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in run.EVALUATE_FLAGS}
    print(json.dumps(run.evaluate_model(args.model, args.data, args.task, settings, args.batch_size,
                                        args.predictions, args.nbest), indent=2))
    return 0


def cmd_search(args) -> int:
    from raykd import run

    cfg = _load(args)
    summary = run.search(cfg, address=args.address, resume=args.resume, tracking_uri=args.tracking_uri,
                         tracking=not args.no_tracking, overwrite=args.overwrite)
    if summary.get("interrupted"):
        again = [a for a in args.argv if a not in ("--resume", "--overwrite")]
        print("resume with: python cli.py " + " ".join(shlex.quote(a) for a in again + ["--resume"]), flush=True)
        return 130  # 128 + SIGINT, as a shell reports an interrupted command
    return 0


def cmd_export(args) -> int:
    from raykd import preflight
    from raykd.config import LatencyConfig
    from raykd.serving import onnx_export

    flags = {"device": args.latency_device, "runs": args.runs, "warmup_runs": args.warmup, "threads": args.threads}
    names = {"device": "--latency-device", "runs": "--runs", "warmup_runs": "--warmup", "threads": "--threads"}
    lc = LatencyConfig(**{k: v for k, v in flags.items() if v is not None})
    preflight.check_export(args.model, args.onnx, args.max_length, args.overwrite, lc, names)
    report = onnx_export.export_student(args.model, args.onnx, args.max_length, args.quantize, lc)
    print("\n".join(onnx_export.summary_lines(report)))
    if not report.parity.ok:
        print(f"raykd: error: the ONNX model's logits differ from PyTorch's by {report.parity.max_abs_diff:.3g}, "
              f"more than {report.parity.tolerance:g}; do not serve it", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to print the exact --resume command
    from raykd import console
    from raykd.errors import UserError

    try:
        if args.command in ("train", "finetune"):
            return cmd_run(args, "distill" if args.command == "train" else "finetune")
        return {"prepare": cmd_prepare, "evaluate": cmd_evaluate, "search": cmd_search,
                "export": cmd_export}[args.command](args)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"raykd: error: {exc}", file=sys.stderr)
        return 2
    finally:
        console.finish()  # a last line without a newline is shown, the log flushed


if __name__ == "__main__":
    sys.exit(main())
