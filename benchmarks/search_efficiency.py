"""What does early stopping save? The same space searched with ASHA and without early stopping
(FIFO): same seed, same number of trials, same everything but ``search.scheduler``. Reports for
each the best score, the trial-epochs and the wall time spent, the trial-epochs ASHA needed to come
within 0.5 (``--tolerance``) of FIFO's best, and the search's fixed cost per trial: the wall time of
a trial not spent in training steps or evaluation (process and model start-up, checkpointing,
teardown) and its share of the search's wall time (see ``_runner`` for how each part is measured).

Default: the quickstart (search_spaces/quickstart.yaml, generated data) at search seeds 0 and 1,
tracking on as the quickstart runs (to a store of its own). ``--real-text`` adds the same
comparison on real SQuAD text with quality.py's space, teacher and student. The quickstart's
teacher (and, with --real-text, quality.py's) is prepared first, outside the timed searches.

    python benchmarks/search_efficiency.py                # quickstart, 2 seeds x (ASHA, FIFO): ~30 min
    python benchmarks/search_efficiency.py --smoke        # tiny: minutes
    python benchmarks/search_efficiency.py --real-text    # + real SQuAD text (its time: benchmarks/RESULTS.md)
    python benchmarks/search_efficiency.py --fixed-cost RAY_SESSION/logs EXPERIMENT [OUT]

``--fixed-cost`` reads a finished search's Ray session logs (``/tmp/ray/session_*/logs``, the
session that ran it) and writes ``search_efficiency-fixed-cost.{json,md}``: each trial's seconds on
every step from its trial actor's start to the next trial's (process starts, imports, Train's
controller and worker group, set-up, training, evaluation, checkpoints, shutdown), and every actor
process the search started.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results
import _runner
import quality

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
SCHEDULERS = ("asha", "fifo")
SMOKE_QUICKSTART = {"data.synthetic_train_size": 80, "data.synthetic_eval_size": 30,
                    "models.teacher_finetune.num_epochs": 1, "search.num_samples": 3, "search.rounds": 4}


@dataclass
class Settings(_results.Places):
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    num_samples: int | None = None  # None: the space's own (quickstart: 6)
    tolerance: float = 0.5
    real_text: bool = False
    real_trials: int = 6
    real_rounds: int = 4
    tracking: bool = True

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> Settings:
        p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--seeds", type=int, nargs="+", help="search.seed values, each run with ASHA and FIFO (default 0 1)")
        p.add_argument("--num-samples", type=int, help="trials per search (default: the space's)")
        p.add_argument("--tolerance", type=float, help="how close to FIFO's best counts as reached (default 0.5)")
        p.add_argument("--real-text", action="store_true", help="also compare on real SQuAD text (quality.py's space)")
        p.add_argument("--real-trials", type=int, help="trials per real-text search (default 6)")
        p.add_argument("--real-rounds", type=int, help="evaluation rounds per real-text trial (default 4)")
        p.add_argument("--no-tracking", dest="tracking", action="store_false", default=None,
                       help="searches without MLflow (the quickstart has it on)")
        _results.add_place_flags(p, smoke="tiny quickstart, 3 trials, one seed: minutes",
                                 force="rerun searches that already have a result")
        a = p.parse_args(argv)
        s = cls()
        if a.smoke:
            s = dataclasses.replace(s, smoke=True, seeds=[0], real_trials=2, real_rounds=2,
                                    storage=ROOT / "raykd_results" / "bench-smoke",
                                    out=ROOT / "raykd_results" / "bench-smoke" / "results")
        # Only what was given: None is "not given" (store_true flags default to False and are
        # dropped when False; --no-tracking's False and --tolerance 0 are values).
        flags = {"real_text", "force"}
        given = {k: v for k, v in vars(a).items()
                 if k != "smoke" and v is not None and not (k in flags and v is False)}
        return dataclasses.replace(s, **given)


@dataclass
class Space:
    """One space to compare on: its config file, the overrides every search of it takes, the
    batch size its trials train with (for the timing), and how to prepare its study."""

    name: str
    config: Path
    overrides: dict[str, Any]
    batch_size: int
    prepare: Any  # () -> None


def quickstart_space(s: Settings) -> Space:
    overrides = {"search.storage_path": str(s.storage), **(SMOKE_QUICKSTART if s.smoke else {})}
    if s.num_samples:
        overrides["search.num_samples"] = s.num_samples
    work = s.storage / ("bench-eff-smoke" if s.smoke else "bench-eff")

    def prepare():
        _runner.run_cli(["prepare", "--config", str(QUICKSTART), *_runner.sets(overrides)], work / "logs" / "prepare.log")

    batch = yaml.safe_load(QUICKSTART.read_text())["optim"]["batch_size"]
    return Space("quickstart", QUICKSTART, overrides, batch, prepare)


def real_space(s: Settings) -> Space:
    argv = ["--storage", str(s.storage), "--out", str(s.out), "--search-trials", str(s.real_trials), "--search-rounds", str(s.real_rounds)]
    # quality.py's base config and teacher arm; a search config of its own.
    q = quality.Quality(quality.Settings.parse((["--smoke"] if s.smoke else []) + argv), search_yaml="search-efficiency.yaml")
    overrides: dict[str, Any] = {}

    def prepare():
        # quality.py's teacher arm: reused when quality.py made it already (and saved for it if not).
        overrides["models.teacher"] = q.teacher()["teacher"]

    return Space("real-squad", q.search_yaml, overrides, q.s.batch_size, prepare)


def run_search(s: Settings, space: Space, seed: int, scheduler: str, store: _results.ArmStore) -> dict[str, Any]:
    name = f"bench-{space.name}-{scheduler}-s{seed}" + ("-smoke" if s.smoke else "")
    overrides = dict(space.overrides)
    overrides.update({"search.name": name, "search.scheduler": scheduler, "search.seed": seed})
    args = ["search", "--config", str(space.config), *_runner.sets(overrides)]
    if s.tracking:
        args += ["--tracking-uri", f"sqlite:///{s.storage.resolve()}/bench-mlflow.db"]
    else:
        args += ["--no-tracking"]
    arm = f"{space.name}-{scheduler}-s{seed}"
    key = {"argv": args, "config": space.config.read_text()}
    done = None if s.force else store.load(arm, key)
    if done and (Path(done["experiment"]) / "summary.json").exists():
        print(f"[bench] {arm}: done earlier ({store.path(arm)}), skipped", flush=True)
        return done
    # Never resumed: a resumed search's wall time would not be the search's.
    r = _runner.run_cli(args + ["--overwrite"], s.storage / "bench-eff-logs" / f"{arm}.log")
    return store.save(arm, key, {"experiment": str(s.storage / name), "wall_s": r.wall_s, "commands": [r.argv]})


def compare(s: Settings, space: Space, seed: int, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fifo = _runner.read_search(Path(runs["fifo"]["experiment"]), runs["fifo"]["wall_s"], space.batch_size,
                               tolerance=s.tolerance)
    ref = fifo["best"][fifo["metric"]]
    asha = _runner.read_search(Path(runs["asha"]["experiment"]), runs["asha"]["wall_s"], space.batch_size,
                               reference=ref, tolerance=s.tolerance)
    reach = asha["reach"]["trial_epochs"]
    return {"seed": seed, "asha": asha, "fifo": fifo, "fifo_best": ref, "asha_best": asha["best"][asha["metric"]],
            "epochs_ratio": asha["trial_epochs"] / fifo["trial_epochs"],
            "asha_epochs_to_reach": reach,
            "asha_reach_share": None if reach is None else reach / fifo["trial_epochs"],
            "fifo_epochs_to_reach": fifo["reach"]["trial_epochs"],
            "wall_ratio": asha["wall_s"] / fifo["wall_s"]}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def _range(lo: float, hi: float, fmt: str = "{:.1f}") -> str:
    return fmt.format(lo) if abs(hi - lo) < 0.05 else f"{fmt.format(lo)}–{fmt.format(hi)}"


def report(s: Settings, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = []
    for space, comps in results.items():
        metric = comps[0]["fifo"]["metric"]
        rows, cmp_rows, target_rows = [], [], []
        for c in comps:
            for sched in SCHEDULERS:
                r = c[sched]
                b = r["best"]
                rows.append([c["seed"], sched, b[metric], f"{b['trial_id']} (round {b['score_round']})",
                             f"{r['stopped_early']}/{r['n_trials']}", f"{r['trial_epochs']:.2f}",
                             f"{r['wall_s'] / 60:.1f}", f"{r['outside_trials_s']:.0f}", f"{r['train_s']:.0f}",
                             f"{r['eval_ckpt_s']:.0f}", f"{r.get('setup_s', 0):.0f}", f"{r.get('checkpoint_s', 0):.0f}",
                             _range(r["fixed_per_trial_low_s"], r["fixed_per_trial_high_s"]),
                             _range(100 * r["fixed_share_low"], 100 * r["fixed_share_high"], "{:.0f}") + " %"])
            cmp_rows.append([c["seed"], c["fifo_best"], c["asha_best"], f"{c['asha_best'] - c['fifo_best']:+.2f}",
                             _pct(c["epochs_ratio"]),
                             "not reached" if c["asha_epochs_to_reach"] is None else
                             f"{c['asha_epochs_to_reach']:.2f} ({_pct(c['asha_reach_share'])})",
                             "–" if c["fifo_epochs_to_reach"] is None else
                             f"{c['fifo_epochs_to_reach']:.2f} ({_pct(c['fifo_epochs_to_reach'] / c['fifo']['trial_epochs'])})",
                             f"{c['wall_ratio']:.2f}"])
            share = c["asha_reach_share"]
            # When FIFO reached its own best as early (its first trial is the winner), the target
            # holds whatever the scheduler: say so.
            trivial = share is not None and c["fifo_epochs_to_reach"] is not None \
                and c["fifo_epochs_to_reach"] <= c["asha_epochs_to_reach"] + 1e-9
            target_rows.append([c["seed"], f"ASHA within {s.tolerance:g} of FIFO's best using <= 40 % of FIFO's trial-epochs",
                                "not reached" if share is None else _pct(share),
                                ("yes, trivially: FIFO got there as early (the first trial is the winner)" if trivial
                                 else "yes") if share is not None and share <= 0.4 else "**NO**"])
            if space == "quickstart":
                # The target reads two ways; both are reported: all trials' fixed cost as a share of
                # the wall time, and each trial's fixed cost as a share of its own time.
                for sched in SCHEDULERS:
                    r = c[sched]
                    # Two readings: all trials' fixed cost against the search's wall time, and each
                    # trial's fixed cost against that trial's own time (start to the next trial's
                    # start), averaged. (One trial's cost against the whole search's wall time would
                    # pass for any fixed cost under 15 % x the number of trials.)
                    own = [t["timing"] for t in r["trials"] if t["timing"]]
                    lo_t = statistics.mean(t["fixed_low_s"] / (t["in_trial_s"] + t["gap_after_s"]) for t in own)
                    hi_t = statistics.mean(t["fixed_high_s"] / (t["in_trial_s"] + t["gap_after_s"]) for t in own)
                    for what, lo, hi in (("all trials' fixed cost / the search's wall time", r["fixed_share_low"],
                                          r["fixed_share_high"]),
                                         ("a trial's fixed cost / its own time (mean over trials)", lo_t, hi_t)):
                        met = "yes" if hi <= 0.15 else "**NO**" if lo > 0.15 else "undetermined (bracket spans 15 %)"
                        target_rows.append([c["seed"], f"{what} <= 15 % ({sched})",
                                            _range(100 * lo, 100 * hi, "{:.1f}") + " %", met])
        first = comps[0]["fifo"]
        out.append(
            f"## {space}\n\n"
            f"{first['n_trials']} trials per search, {first['rounds']} rounds per trial, trial score: its "
            f"{first['trial_score']} round; ASHA's first rung: round {comps[0]['asha']['grace_period']}. Same seed, "
            "sampler and trials for both schedulers; only `search.scheduler` differs.\n\n"
            + _results.md_table(["seed", "scheduler", f"best {metric}", "best trial", "stopped early", "trial-epochs",
                                 "wall (min)", "outside trials (s)", "training steps (s)",
                                 "evaluation (s)" if first["timing_exact"] else "eval + checkpoint (s)",
                                 "of fixed: worker setup (s)", "of fixed: checkpoints (s)",
                                 "fixed cost per trial (s)", "fixed cost share of wall"], rows)
            + "\n\n" + _results.md_table(
                ["seed", "FIFO best", "ASHA best", "ASHA - FIFO", "ASHA trial-epochs / FIFO's",
                 f"ASHA trial-epochs to within {s.tolerance:g} of FIFO's best (share of FIFO's)",
                 f"FIFO trial-epochs to within {s.tolerance:g} of its best", "wall ASHA / FIFO"], cmp_rows)
            + "\n\n### Targets\n\n" + _results.md_table(["seed", "target", "measured", "met"], target_rows))
    out.append(
        "## How the times are measured\n\n"
        "- wall: the `cli.py search` command, start to exit (Ray start, study load, summary and MLflow included); "
        "outside trials: wall minus the span from the first trial's start to the last trial's end.\n"
        "- training steps, evaluation, worker setup (data, models, teacher logits to the first step) and "
        "checkpoints (all but the last round's): raykd's own per-round timings `time_train_s`, `time_eval_s`, "
        "`time_setup_s`, `time_checkpoint_s` at the trial's last result.\n"
        "- fixed cost of a trial: Tune's `time_total_s` at its last result + the gap until the next trial starts "
        "(teardown, next actor; the last trial gets the median gap) - training steps - evaluation: process and "
        "model start-up, checkpointing, teardown. Fixed cost share = all trials' fixed cost / wall.\n"
        "- trial-epochs: each trial's `epoch` at its last result, summed (training after the last report of a "
        "trial ASHA stopped is not counted).\n\n"
        "Limits:\n\n" + "\n".join(f"- {f}" for f in _runner.LIMITS))
    out.append("## Commands of each search\n\n" + "\n".join(
        f"- `{' '.join(cmd)}`" for comps in results.values() for c in comps for sched in SCHEDULERS
        for cmd in c[f"{sched}_commands"]))
    return out


# ---------------------------------------------------------------------------------------------
# Where a trial's fixed cost goes, read from the Ray session's own logs (one trial at a time)

_TS = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
# Train V2 controller log lines that mark the steps of starting and stopping a run.
CONTROLLER_MARKS = {
    "requested": "Requesting resources",
    "pg_cleaner": "PlacementGroupCleaner launched",
    "group_start": "Attempting to start training worker group",
    "workers_created": "worker actors created",
    "context_ready": "Train context initialized",
    "launched": "Train function launched",
    "shutting_down": "Shutting down",
    "shut_down": "Worker group shutdown successful",
}


TRIAL_ACTOR = "Tune trial actor (ImplicitFunc: raykd's trial driver)"


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc).timestamp()


def _core_log(path: Path) -> dict[str, Any]:
    """A Ray worker process's core log: its start and end, and the actor it was created for."""
    out: dict[str, Any] = {"start": None, "end": None, "creating": None, "actor_id": None}
    for line in path.read_text(errors="replace").splitlines():
        m = _TS.match(line)
        if not m:
            continue
        t = _stamp(m.group(1))
        out["start"] = out["start"] if out["start"] is not None else t
        out["end"] = t
        if "Creating actor actor_id=" in line and out["creating"] is None:
            out["creating"], out["actor_id"] = t, line.rsplit("actor_id=", 1)[1].split()[0]
    return out


def read_ray_session(logs: Path) -> dict[str, Any]:
    """Every actor process of a Ray session (``<session>/logs``): its class, pid, process start,
    when its actor was registered and created (the GCS's log) and when the process ended; and the
    Train V2 controllers' marks by run name."""
    gcs: dict[str, dict[str, float]] = {}
    for line in (logs / "gcs_server.out").read_text(errors="replace").splitlines():
        m = _TS.match(line)
        if m and "actor_id=" in line:
            actor = line.rsplit("actor_id=", 1)[1].split()[0]
            key = "registered" if "Registering actor" in line else "created" if "Finished creating actor" in line else None
            if key:
                gcs.setdefault(actor, {}).setdefault(key, _stamp(m.group(1)))
    actors = []
    for out in sorted(logs.glob("worker-*.out")):
        text = out.read_text(errors="replace") + (out.with_suffix(".err").read_text(errors="replace")
                                                  if out.with_suffix(".err").exists() else "")
        names = re.findall(r":actor_name:(\w+)", text)
        if not names:
            continue
        worker_id, pid = out.stem.split("-")[1], out.stem.split("-")[-1]
        core = logs / f"python-core-worker-{worker_id}_{pid}.log"
        info = _core_log(core) if core.exists() else {}
        g = gcs.get(info.get("actor_id") or "", {})
        # Tune's function trainable runs as ImplicitFunc, renamed after the trainable once it runs.
        cls = TRIAL_ACTOR if "ImplicitFunc" in names else names[-1]
        actors.append({"class": cls, "pid": int(pid), "worker_id": worker_id, **info, **g})
    controllers = {}
    for f in sorted((logs / "train").glob("ray-train-sys-controller-*.log")):
        marks: dict[str, float] = {}
        run = None
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            run = rec.get("run_name", run)
            for key, text in CONTROLLER_MARKS.items():
                if text in rec["message"]:
                    marks.setdefault(key, rec["timestamp_ns"] / 1e9)
        controllers[f.stem.rsplit("-", 1)[1]] = {"run": run, **marks}
    workers = {}
    for f in sorted((logs / "train").glob("ray-train-sys-worker-*.log")):
        marks = {}
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            t = rec["timestamp_ns"] / 1e9
            if "Launching training function" in rec["message"]:
                marks.setdefault("launching", t)
            elif "Checkpoint successfully created" in rec["message"]:
                marks["last_checkpoint"] = t
            marks.setdefault("run", rec.get("run_name"))
        workers[marks.get("run")] = marks
    return {"actors": actors, "controllers": controllers, "workers": workers}


def trial_breakdown(session: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per trial (one at a time, in start order), seconds spent on each step from its actor's
    registration to the next trial's: the trial actor (process start and unpickling the trainable),
    the driver building its TorchTrainer, the Train controller (process start, unpickling the
    train function, placement group), the worker group (worker processes, process group), the
    train function's set-up (raykd's time_setup_s), training + evaluation + checkpoints (from the
    trial's results), the end of training to the group's shutdown, and the teardown and gap to
    the next trial actor. ``rows``: Tune's result rows by trial id (:func:`_runner.tune_rows`)."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for a in session["actors"]:
        by_class.setdefault(a["class"], []).append(a)
    drivers = sorted((a for a in by_class.get(TRIAL_ACTOR, []) if a.get("registered")), key=lambda a: a["registered"])
    controllers = {a["worker_id"]: a for a in by_class.get("TrainController", [])}
    out = []
    for i, d in enumerate(drivers):
        nxt = drivers[i + 1]["registered"] if i + 1 < len(drivers) else None
        ctl = next((c for c in controllers.values() if c.get("registered") and d["registered"] <= c["registered"]
                    and (nxt is None or c["registered"] < nxt)), None)
        if ctl is None:
            continue
        marks = session["controllers"].get(ctl["worker_id"], {})
        run = marks.get("run")
        rs = rows.get(run, [])
        if not rs or not all(k in marks for k in ("requested", "launched")):
            continue
        last = rs[-1]
        worker = session["workers"].get(run, {})
        launching = worker.get("launching", marks["launched"])
        # The worker's last checkpoint registered (ms resolution); Tune's timestamp has 1 s.
        last_report = worker.get("last_checkpoint", float(last["timestamp"]))
        steps = {
            "trial actor: process spawned (Python, import ray)": d["start"] - d["registered"],
            "trial actor: Ray worker start-up": d["creating"] - d["start"],
            "trial actor: unpickling the trainable (imports raykd.search.trial)": d["created"] - d["creating"],
            "trial driver: config, TorchTrainer, controller submitted": ctl["registered"] - d["created"],
            "Train controller: process spawned + Ray worker start-up": ctl["creating"] - ctl["registered"],
            "Train controller: unpickling the train function (imports raykd.training.trainer)":
                marks["requested"] - ctl["creating"],
            "Train controller: __init__ (autoscaling coordinator, placement group cleaner)":
                ctl["created"] - marks["requested"],
            "controller: placement group, callbacks": marks["group_start"] - ctl["created"],
            "worker process started and created": marks["workers_created"] - marks["group_start"],
            "process group + train context": marks["context_ready"] - marks["workers_created"],
            "train function launched on the worker (imports raykd.training.loop)": launching - marks["context_ready"],
            "worker set-up: data, models, teacher logits (raykd's time_setup_s)": float(last.get("time_setup_s", 0.0)),
            "training steps": float(last.get("time_train_s", 0.0)),
            "evaluation": float(last.get("time_eval_s", 0.0)),
            "checkpoints (all but the last round's)": float(last.get("time_checkpoint_s", 0.0)),
            # None for a trial ASHA stopped: Tune ends it without Train's orderly shutdown.
            "last report to worker group shut down": (marks["shut_down"] - last_report) if "shut_down" in marks
            else None,
            "teardown and gap to the next trial actor": (nxt - marks.get("shut_down", last_report)) if nxt else None,
        }
        # What the worker's own timings leave out of its span: the last round's checkpoint and reports.
        steps["the last checkpoint and reporting"] = (
            last_report - launching - steps["worker set-up: data, models, teacher logits (raykd's time_setup_s)"]
            - steps["training steps"] - steps["evaluation"] - steps["checkpoints (all but the last round's)"])
        end = nxt or marks.get("shut_down", last_report)
        out.append({"trial": run, "stopped": "shut_down" not in marks, "steps": steps, "span_s": end - d["registered"]})
    return out


def side_actors(session: dict[str, Any]) -> list[list[Any]]:
    """Each actor class: how many processes were started, and the median seconds from registration
    to created (process start + constructor) and of each process's life."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for a in session["actors"]:
        by_class.setdefault(a["class"], []).append(a)
    rows = []
    for cls, xs in sorted(by_class.items()):
        ready = [a["created"] - a["registered"] for a in xs if a.get("created") and a.get("registered")]
        life = [a["end"] - a["start"] for a in xs if a.get("end") and a.get("start")]
        rows.append([cls, len(xs), f"{statistics.median(ready):.2f}" if ready else "–",
                     f"{statistics.median(life):.1f}" if life else "–"])
    return rows


def fixed_cost_report(logs: Path, experiment: Path, out: Path) -> tuple[Path, Path]:
    session = read_ray_session(logs)
    trials = trial_breakdown(session, _runner.tune_rows(experiment))
    if not trials:
        raise SystemExit(f"no trial of {experiment} found in the Ray session logs {logs}")
    names = list(trials[0]["steps"])
    table = []
    for name in names:
        vals = [t["steps"][name] for t in trials if t["steps"][name] is not None]
        table.append([name, *[("–" if t["steps"][name] is None else f"{t['steps'][name]:.1f}") for t in trials],
                      f"{statistics.median(vals):.1f}" if vals else "–"])
    table.append(["trial span (actor registered to the next trial's)", *[f"{t['span_s']:.1f}" for t in trials], ""])
    sections = [
        f"Ray session `{logs}`, search `{experiment}`: per trial, seconds on each step from its trial actor's "
        "registration to the next trial's (GCS actor registration and creation, Train V2 controller log marks, "
        "raykd's own per-round timings).\n\n"
        + _results.md_table(["step", *[t["trial"] + (" (stopped by ASHA)" if t["stopped"] else "") for t in trials],
                             "median"], table),
        "## Actor processes of the search\n\n"
        + _results.md_table(["actor class", "processes", "registered to created (s, median)",
                             "process life (s, median)"], side_actors(session)),
    ]
    return _results.write(out, "search_efficiency-fixed-cost", "Where a trial's fixed cost goes",
                          {"logs": str(logs), "experiment": str(experiment), "trials": trials,
                           "actors": session["actors"]}, sections)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--fixed-cost"]:
        # --fixed-cost RAY_SESSION_LOGS EXPERIMENT [OUT]: the breakdown of a finished search.
        out = Path(argv[3]) if len(argv) > 3 else ROOT / "benchmarks" / "results"
        paths = fixed_cost_report(Path(argv[1]), Path(argv[2]), out)
        print(Path(paths[1]).read_text())
        return 0
    s = Settings.parse(argv)
    store = _results.ArmStore(s.out / "search_efficiency" / "arms")
    spaces = [quickstart_space(s)] + ([real_space(s)] if s.real_text else [])
    results: dict[str, list[dict[str, Any]]] = {}
    for space in spaces:
        print(f"[bench] preparing {space.name} (outside the timed searches)", flush=True)
        space.prepare()
        comps = []
        for seed in s.seeds:
            runs = {sched: run_search(s, space, seed, sched, store) for sched in SCHEDULERS}
            comp = compare(s, space, seed, runs)
            comps.append({**comp, **{f"{k}_commands": v["commands"] for k, v in runs.items()}})
        results[space.name] = comps
    stem = "search_efficiency"
    title = "Search efficiency: ASHA against FIFO" + (" (smoke run)" if s.smoke else "")
    paths = _results.write(s.out, stem, title, {"settings": dataclasses.asdict(s), "spaces": results}, report(s, results))
    print(Path(paths[1]).read_text())
    print(f"[bench] results: {paths[0]} {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
