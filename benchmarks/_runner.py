"""How the benchmarks drive raykd: through its CLI (``python cli.py ...``) in subprocesses, with
config YAML files and ``--set`` overrides, so they keep working whatever raykd's internals become.
Also what they read back from a finished search: ``summary.json`` and Tune's per-trial result rows
(``result.json``), from which trial-epochs, training time and each trial's fixed cost are computed.

Timing of a trial (one trial at a time, as on 2 CPUs). raykd reports, every round, where its
worker's time went so far: ``time_setup_s`` (worker function start to the first step: data, models,
teacher logits), ``time_train_s`` (training steps), ``time_eval_s`` (evaluation) and
``time_checkpoint_s`` (checkpoints up to the previous round). Tune adds ``time_total_s``: the
trial's driver start to its last report. The gap until the next trial starts (teardown, the next
trial's actor and placement group) belongs to the trial that ended. A trial's fixed cost is its
time_total_s + that gap - training steps - evaluation: process and model start-up, checkpointing,
teardown.

Results written by a raykd without the ``time_*`` fields are read the older way: training time
from ``samples_per_sec``, evaluation + checkpoint from ``time_this_iter_s`` minus it, and the fixed
cost as a bracket (low: all of that counted as evaluation; high: all of it as fixed cost).
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

# What the figures still cannot see: Tune's ``timestamp`` is whole seconds, so a trial's start and
# end (and the gaps between trials) are known to about 1 s.
LIMITS = ["Tune's `timestamp` has 1 s resolution: each trial's start, end and the gap after it are known to about 1 s"]


class CliFailed(RuntimeError):
    def __init__(self, argv: list[str], rc: int, tail: str):
        super().__init__(f"`{shlex.join(argv)}` exited with status {rc}:\n{tail}")
        self.rc = rc


@dataclass
class CliRun:
    argv: list[str]
    rc: int
    stdout: str
    wall_s: float

    def json(self) -> dict[str, Any]:
        """The JSON object the command printed last (cli.py prints its result as indented JSON)."""
        text = self.stdout
        starts = [i for i in range(len(text)) if text.startswith("{", i) and (i == 0 or text[i - 1] == "\n")]
        for i in reversed(starts):
            try:
                obj, _ = json.JSONDecoder().raw_decode(text, i)
                return obj
            except ValueError:
                continue
        raise ValueError(f"`{shlex.join(self.argv)}` printed no JSON result")


def cli_argv(*args: str) -> list[str]:
    return ["python", "cli.py", *args]


def run_cli(args: list[str], log: Path, check: bool = True) -> CliRun:
    """Run ``python cli.py <args>`` from the repository root (this interpreter), echo its output,
    append it to ``log`` and time it."""
    argv = cli_argv(*args)
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[bench] $ {shlex.join(argv)}", flush=True)
    out: list[str] = []
    with open(log, "a") as lf:
        lf.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(argv)}\n")
        lf.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *argv[1:]], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, bufsize=1)
        lock = threading.Lock()

        def pump(stream, sink, keep):
            for line in stream:
                with lock:
                    lf.write(line)
                    lf.flush()
                    sink.write(line)
                    sink.flush()
                if keep is not None:
                    keep.append(line)

        threads = [threading.Thread(target=pump, args=(proc.stdout, sys.stdout, out), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, sys.stderr, None), daemon=True)]
        for t in threads:
            t.start()
        rc = proc.wait()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    run = CliRun(argv, rc, "".join(out), wall)
    if check and rc != 0:
        raise CliFailed(argv, rc, "".join(out[-15:]))
    return run


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sets(overrides: dict[str, Any]) -> list[str]:
    """``--set key=value`` arguments (values written as YAML, as the CLI parses them)."""
    out = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        text = text.removesuffix("\n...").strip()
        out += ["--set", f"{key}={text}"]
    return out


# ---------------------------------------------------------------------------------------------
# A finished search, read back


def tune_rows(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """Each trial's Tune results (``<experiment>/<trial dir>/result.json``), by round."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for f in sorted(experiment.glob("*/result.json")):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if "round" in r:
                    rows.setdefault(r["trial_id"], []).append(r)
    for trial_id, rs in rows.items():
        # A resumed trial may report a round twice: keep the last report of each round.
        by_round = {int(r["round"]): r for r in rs}
        rows[trial_id] = [by_round[k] for k in sorted(by_round)]
    return rows


def samples_at(step: int, n_features: int, batch_size: int, world: int = 1, accum: int = 1) -> int:
    """Training samples (all workers) seen after ``step`` optimizer steps of raykd's loop: each epoch
    is ceil(N/world) features per worker in batches of ``batch_size``, the last one partial."""
    per_worker = math.ceil(n_features / world)
    batches = math.ceil(per_worker / batch_size)
    spe = max(1, batches // accum)
    full_epoch = min(spe * accum * batch_size, per_worker) * world
    return (step // spe) * full_epoch + (step % spe) * accum * batch_size * world


def _trial_timing(rows: list[dict[str, Any]], batch_size: int, world: int, accum: int) -> dict[str, Any]:
    last, first = rows[-1], rows[0]
    out = {
        "rounds": int(last["round"]),
        "epochs": float(last["epoch"]),
        "in_trial_s": float(last["time_total_s"]),
        "start": float(first["timestamp"]) - float(first["time_total_s"]),
        "end": float(last["timestamp"]),
    }
    if "time_train_s" in last:
        # Measured by raykd's loop: exact, no bracket.
        return {**out, "train_s": float(last["time_train_s"]), "eval_ckpt_s": float(last["time_eval_s"]),
                "eval_only": True, "setup_s": float(last["time_setup_s"]),
                "checkpoint_s": float(last["time_checkpoint_s"])}
    train, evalckpt = [], []
    prev_step = 0
    for r in rows:
        bs = int(r.get("config", {}).get("optim.batch_size", batch_size))
        n = int(r["train_features"])
        samples = samples_at(int(r["step"]), n, bs, world, accum) - samples_at(prev_step, n, bs, world, accum)
        t = samples / float(r["samples_per_sec"]) if r.get("samples_per_sec") else 0.0
        train.append(t)
        if int(r["round"]) > 1 and prev_step > 0:
            evalckpt.append(max(0.0, float(r["time_this_iter_s"]) - t))
        prev_step = int(r["step"])
    first_evalckpt = statistics.median(evalckpt) if evalckpt else 0.0
    return {**out, "train_s": sum(train), "eval_ckpt_s": sum(evalckpt) + first_evalckpt, "eval_only": False,
            "eval_ckpt_round1_estimated": not evalckpt}


def read_search(experiment: Path, wall_s: float | None, batch_size: int, world: int = 1, accum: int = 1,
                reference: float | None = None, tolerance: float = 0.5) -> dict[str, Any]:
    """What a finished search spent and found: per trial its status, score, rounds, trial-epochs
    and timing; totals; the fixed-cost bracket and its share of ``wall_s`` (the search command's
    wall time); and the trial-epochs spent when the best score so far first came within
    ``tolerance`` of ``reference`` (default: this search's own best)."""
    summary = json.loads((experiment / "summary.json").read_text())
    metric = summary["metric"]
    rows = tune_rows(experiment)
    trials = []
    for t in summary["trials"]:
        rs = rows.get(t["trial_id"], [])
        timing = _trial_timing(rs, batch_size, world, accum) if rs else None
        trials.append({"trial_id": t["trial_id"], "status": t["status"], metric: t[metric],
                       "rounds": t.get("rounds"), "planned_rounds": t.get("planned_rounds"),
                       "config": {k: v for k, v in t.items() if "." in k}, "timing": timing})
    timed = sorted((t for t in trials if t["timing"]), key=lambda t: t["timing"]["start"])
    gaps = [max(0.0, b["timing"]["start"] - a["timing"]["end"]) for a, b in itertools.pairwise(timed)]
    concurrent = any(b["timing"]["start"] < a["timing"]["end"] - 1 for a, b in itertools.pairwise(timed))
    last_gap = statistics.median(gaps) if gaps else 0.0
    for t, gap in zip(timed, [*gaps, last_gap]):
        tm = t["timing"]
        tm["gap_after_s"] = 0.0 if concurrent else gap
        tm["fixed_low_s"] = tm["in_trial_s"] - tm["train_s"] - tm["eval_ckpt_s"] + tm["gap_after_s"]
        # With raykd's own timings eval_ckpt_s is evaluation alone and the fixed cost is exact.
        tm["fixed_high_s"] = tm["fixed_low_s"] if tm["eval_only"] else tm["in_trial_s"] - tm["train_s"] + tm["gap_after_s"]
    n = len(timed)
    total = {k: sum(t["timing"][k] for t in timed) for k in ("train_s", "eval_ckpt_s", "fixed_low_s", "fixed_high_s")}
    total["setup_s"] = sum(t["timing"].get("setup_s", 0.0) for t in timed)
    total["checkpoint_s"] = sum(t["timing"].get("checkpoint_s", 0.0) for t in timed)
    exact = bool(timed) and all(t["timing"]["eval_only"] for t in timed)
    span = (timed[-1]["timing"]["end"] + last_gap - timed[0]["timing"]["start"]) if timed else 0.0
    epochs = sum(t["timing"]["epochs"] for t in timed)
    best = summary.get("best") or {}
    out = {
        "experiment": str(experiment),
        "metric": metric,
        "trial_score": summary.get("trial_score"),
        "rounds": summary.get("rounds"),
        "grace_period": summary.get("grace_period"),
        "trials": trials,
        "best": {"trial_id": best.get("trial_id"), metric: best.get(metric),
                 **{k: v for k, v in best.items() if k.startswith("eval_") or "." in k},
                 "score_round": best.get("score_round"), "checkpoint_path": best.get("checkpoint_path")},
        "n_trials": n,
        "stopped_early": sum(t["status"] == "STOPPED" for t in trials),
        "trial_epochs": epochs,
        "wall_s": wall_s,
        "trials_span_s": span,
        "outside_trials_s": (wall_s - span) if wall_s is not None else None,
        **total,
        "fixed_per_trial_low_s": total["fixed_low_s"] / n if n else None,
        "fixed_per_trial_high_s": total["fixed_high_s"] / n if n else None,
        "fixed_share_low": total["fixed_low_s"] / wall_s if wall_s else None,
        "fixed_share_high": total["fixed_high_s"] / wall_s if wall_s else None,
        "concurrent_trials": concurrent,
        "timing_exact": exact,
        "last_gap_estimated": bool(timed),
    }
    ref = reference if reference is not None else best.get(metric)
    out["reach"] = epochs_to_reach(rows, timed, summary.get("trial_score", "best"), ref, tolerance, metric)
    return out


def epochs_to_reach(rows: dict[str, list[dict[str, Any]]], timed: list[dict[str, Any]], rule: str,
                    reference: float | None, tolerance: float, metric: str) -> dict[str, Any]:
    """Trial-epochs spent (over all trials, in the order the rounds were reported) when the
    search's best score so far first reached ``reference - tolerance``; None if it never did."""
    if reference is None:
        return {"reference": None, "tolerance": tolerance, "trial_epochs": None}
    events = []
    for t in timed:
        start = t["timing"]["start"]
        for r in rows.get(t["trial_id"], []):
            events.append((start + float(r["time_total_s"]), t["trial_id"], r))
    events.sort(key=lambda e: e[0])
    spent, last_epoch, latest = 0.0, {}, {}
    for _, trial_id, r in events:
        spent += float(r["epoch"]) - last_epoch.get(trial_id, 0.0)
        last_epoch[trial_id] = float(r["epoch"])
        value = float(r[metric])
        latest[trial_id] = value if rule == "last" else max(value, latest.get(trial_id, float("-inf")))
        if max(latest.values()) >= reference - tolerance - 1e-9:
            return {"reference": reference, "tolerance": tolerance, "trial_epochs": spent,
                    "trial_id": trial_id, "round": int(r["round"])}
    return {"reference": reference, "tolerance": tolerance, "trial_epochs": None}
