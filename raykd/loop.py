"""The one training loop, as each Ray Train worker runs it (``cli.py train``, ``cli.py finetune``,
every search trial and the teacher raykd fine-tunes): a :class:`Recipe` with ``setup()``,
``train()`` and ``report()``, whose counters live on one :class:`LoopState`, and a loss step apart
from the loop. Task-free: the task (:mod:`raykd.tasks`) gives the model head, the distilled logits,
the mask, the hard loss and the scores; fine-tuning arrives as a config with alpha_ce = 0.

Each evaluation round reports the task's scores (the objective, e.g. ``eval_f1`` or
``eval_accuracy``, first), the train losses, learning rate, samples/s and ``round`` (ASHA's time
unit, which survives resumes) through ``ray.train.report`` with a checkpoint in
``save_pretrained`` format plus the training state (:mod:`raykd.checkpoints`).
"""

from __future__ import annotations

import json
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from transformers import get_linear_schedule_with_warmup

from raykd import losses, models, objective, tasks, teacher_cache
from raykd.checkpoints import META_FILE, STATE_FILE
from raykd.console import duration
from raykd.errors import TrialFailed
from raykd.runspec import RunSpec
from raykd.schedule import eval_points, schedule

TIMED = ("setup", "train", "eval", "checkpoint")

# Every feature carries all three: an online BERT teacher needs token_type_ids even when the
# student (DistilBERT) does not.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LOSS_TERMS = ("loss", "kd", "ce", "cos")


class _Features(torch.utils.data.Dataset):
    """Training features plus, in cached mode, the teacher's logits of the same rows."""

    def __init__(self, features, columns: tuple[str, ...], teacher_logits: np.ndarray | None):
        self.ds = features.with_format("torch", columns=list(columns))
        self.logits = teacher_logits

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.ds[i]
        if self.logits is not None:
            item["teacher_logits"] = torch.from_numpy(np.asarray(self.logits[i], dtype=np.float32))
        return item


@dataclass
class LoopState:
    """The loop's counters: where the run is (saved in every checkpoint, restored on resume), its
    metric history, and the losses and samples summed since the last report."""

    step: int = 0
    round: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_TERMS, 0.0))
    n_micro: int = 0
    n_samples: int = 0
    window_t0: float = field(default_factory=time.perf_counter)
    # For the ETA of a long run (a resumed one counts from where it resumed).
    run_t0: float = field(default_factory=time.perf_counter)
    run_step0: int = 0
    # Seconds this worker process spent, by kind, since it started (a resumed run counts from
    # where it resumed); reported every round as time_<kind>_s so that a benchmark can tell a
    # trial's training and evaluation from its fixed cost. Checkpointing is counted up to the
    # previous round: the current round's checkpoint is the report that carries these numbers.
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMED, 0.0))
    created: float = field(default_factory=time.perf_counter)

    def add(self, values: dict[str, float], n_samples: int) -> None:
        for k in self.sums:
            self.sums[k] += values[k]
        self.n_micro += 1
        self.n_samples += n_samples

    def start(self) -> None:
        self.window_t0 = self.run_t0 = time.perf_counter()
        self.seconds["setup"] += self.run_t0 - self.created

    def take_train_metrics(self, world: int) -> dict[str, float]:
        """Mean losses and samples/s since the last report (training time only: the window
        restarts once the report is done, see :meth:`next_window`)."""
        elapsed = time.perf_counter() - self.window_t0
        self.seconds["train"] += elapsed
        out = {f"train_{k}": v / max(self.n_micro, 1) for k, v in self.sums.items()}
        out["samples_per_sec"] = self.n_samples * world / max(elapsed, 1e-9)
        return out

    def timings(self) -> dict[str, float]:
        return {f"time_{k}_s": v for k, v in self.seconds.items()}

    def next_window(self) -> None:
        self.sums = dict.fromkeys(self.sums, 0.0)
        self.n_micro, self.n_samples, self.window_t0 = 0, 0, time.perf_counter()

    def progress(self, total_steps: int) -> str:
        """", 1m12s elapsed, ETA 3m40s": the run's pace so far (evaluations included)."""
        spent = time.perf_counter() - self.run_t0
        left = (total_steps - self.step) * spent / max(self.step - self.run_step0, 1)
        return f", {duration(spent)} elapsed, ETA {duration(left)}"

    def restore(self, saved: dict[str, Any]) -> None:
        self.step, self.round = saved["step"], saved["round"]
        self.history = list(saved.get("history", []))
        self.run_step0 = self.step



def _precision(name: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or name == "fp32":
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Recipe:
    """One run on one worker: :meth:`setup` builds the student (or restores it from the run's
    checkpoint), the teacher when it runs online, the data and the optimizer; :meth:`train` runs
    the schedule and :meth:`report` evaluates and checkpoints at each round."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.cfg = spec.cfg
        self.task = tasks.get(self.cfg.task)
        self.state = LoopState()

    # --- setup --------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg, opt, dist, task = self.cfg, self.cfg.optim, self.cfg.distill, self.task
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        _seed(opt.seed)
        if cfg.scaling.torch_threads:
            torch.set_num_threads(cfg.scaling.torch_threads)
        self.device = ray.train.torch.get_device()
        self.amp_dtype = _precision(opt.precision, self.device)
        # Fine-tuning arrives with alpha_ce = alpha_cos = 0: no teacher of either kind.
        self.cached = dist.teacher_mode == "cached" and dist.alpha_ce > 0
        online = not self.cached and (dist.alpha_ce > 0 or dist.alpha_cos > 0)
        self.hidden = dist.alpha_cos > 0

        study = self.spec.study.on_this_node()
        prepared = teacher_cache.Prepared(Path(study.prepared), study.teacher_file)
        self.tokenizer = models.load_tokenizer(study.tokenizer)
        head = task.head(cfg)
        checkpoint = ray.train.get_checkpoint()
        saved = None
        if checkpoint:
            ckpt_dir = tempfile.mkdtemp(prefix="raykd-resume-")
            checkpoint.to_directory(ckpt_dir)
            student = models.load_model(ckpt_dir, head)
            saved = torch.load(Path(ckpt_dir) / STATE_FILE, weights_only=False)
        else:
            student = models.build_student(cfg.models.student, cfg.models.init_from_teacher_layers,
                                           cfg.models.init_from or study.teacher, head)
        self.names = models.accepted_inputs(student)
        self.model = ray.train.torch.prepare_model(student)
        self.teacher = None
        if online:
            # Online mode only: in cached mode no trial ever constructs the teacher.
            self.teacher = models.load_teacher(study.teacher, head).to(self.device)
            self.teacher_names = models.accepted_inputs(self.teacher)

        self.train_ds = _Features(prepared.train(), INPUTS + task.train_columns,
                                  prepared.teacher_logits() if self.cached else None)
        self.generator = torch.Generator()
        self.generator.manual_seed(opt.seed)
        loader = torch.utils.data.DataLoader(self.train_ds, batch_size=opt.batch_size, shuffle=True,
                                             generator=self.generator)
        self.loader = ray.train.torch.prepare_data_loader(loader)
        self.steps_per_epoch, self.total_steps, every = schedule(cfg, len(self.train_ds), self.world)
        self.evals = eval_points(self.total_steps, every, self.spec.eval_rounds)
        self.planned = max(self.evals.values())
        # A search trial's rounds are shown by the search's driver (its worker's line goes to the
        # log only); a single run's by its worker.
        self.label = f"[trial {ctx.get_experiment_name()}]" if self.spec.in_search else "[raykd]"

        named = list(self.model.named_parameters())
        plain = ("bias", "LayerNorm", "layer_norm")
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if not any(x in n for x in plain)], "weight_decay": opt.weight_decay},
             {"params": [p for n, p in named if any(x in n for x in plain)], "weight_decay": 0.0}],
            lr=opt.learning_rate,
        )
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(opt.warmup_ratio * self.total_steps),
                                                         self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if saved:
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.state.restore(saved)
        self.eval_features = prepared.eval() if self.rank == 0 else None
        self.examples = prepared.examples() if self.rank == 0 else None

    # --- the loss step ------------------------------------------------------------------------

    def loss_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The student's forward and the loss terms of one micro-batch (see raykd.losses)."""
        dist, task = self.cfg.distill, self.task
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            out = models.forward(self.model, batch, self.names, hidden=self.hidden)
            teacher_logits = teacher_hidden = None
            if self.cached:
                teacher_logits = batch["teacher_logits"]
            elif self.teacher is not None:
                with torch.no_grad():
                    t_out = models.forward(self.teacher, batch, self.teacher_names, hidden=self.hidden)
                teacher_logits = task.logits(t_out)
                teacher_hidden = t_out.hidden_states[-1] if self.hidden else None
        logits = task.logits(out)
        return losses.distillation_loss(
            logits, task.hard_loss(logits, batch), mask=task.mask(batch), teacher_logits=teacher_logits,
            temperature=dist.temperature, alpha_ce=dist.alpha_ce, alpha_hard=dist.alpha_hard,
            alpha_cos=dist.alpha_cos, student_hidden=out.hidden_states[-1] if self.hidden else None,
            teacher_hidden=teacher_hidden, attention_mask=batch["attention_mask"],
        )

    # --- the loop -----------------------------------------------------------------------------

    def train(self) -> None:
        opt, st = self.cfg.optim, self.state
        accum = opt.grad_accum_steps
        self.model.train()
        st.start()
        micro = 0
        epoch = st.step // self.steps_per_epoch
        skip = (st.step % self.steps_per_epoch) * accum  # micro-batches already seen this epoch
        while st.step < self.total_steps:
            if self.world > 1:
                self.loader.sampler.set_epoch(epoch)
            self.generator.manual_seed(opt.seed + epoch)
            for b, batch in enumerate(self.loader):
                if b < skip:
                    continue
                if b >= self.steps_per_epoch * accum:
                    break
                batch = self.task.trim({k: v.to(self.device) for k, v in batch.items()})
                parts = self.loss_step(batch)
                values = {k: float(parts[k].detach()) for k in LOSS_TERMS}
                if not math.isfinite(values["loss"]):
                    # A diverged student cannot recover and its score would be meaningless: fail
                    # the trial with why, rather than train on NaNs or let it score 0 (Optuna would
                    # learn "bad hyperparameters" instead of "broken run").
                    d = self.cfg.distill
                    raise TrialFailed(
                        f"non-finite loss ({values['loss']}) at step {st.step + 1} of {self.total_steps}: "
                        f"learning_rate {opt.learning_rate:g}, temperature {d.temperature:g}, "
                        f"alpha_ce {d.alpha_ce:g}, alpha_hard {d.alpha_hard:g}, precision {opt.precision}")
                self.scaler.scale(parts["loss"] / accum).backward()
                st.add(values, len(batch["input_ids"]))
                micro += 1
                if micro % accum:
                    continue
                self._optimizer_step()
                if st.step in self.evals:
                    self.report(self.evals[st.step], final=st.step >= self.total_steps)
                    st.next_window()
                    self.model.train()
                if st.step >= self.total_steps:
                    break
            skip = 0
            epoch += 1

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1

    # --- reporting ----------------------------------------------------------------------------

    def report(self, rnd: int, final: bool) -> None:
        st = self.state
        st.round = rnd
        metrics: dict[str, Any] = {
            # Where this run's rank 0 ran (which node of a cluster), for the record.
            "node_id": ray.get_runtime_context().get_node_id(),
            "round": rnd,
            # True on the run's last round: a trial whose last result is not final was stopped early.
            "final": final,
            "step": st.step,
            "epoch": st.step / self.steps_per_epoch,
            "learning_rate": self.scheduler.get_last_lr()[0],
            **st.take_train_metrics(self.world),
            # What this run trains on (a searched doc_stride or max_length changes it).
            "train_features": len(self.train_ds),
        }
        if self.rank != 0:
            # Every worker reports (it is a barrier); only rank 0's metrics and checkpoint are kept.
            ray.train.report({**metrics, **dict.fromkeys(self.task.score_keys(), 0.0)}, checkpoint=None)
            return
        t0 = time.perf_counter()
        scores = self.task.evaluate(self.model, self.eval_features, self.examples, self.cfg.data,
                                    self.cfg.optim.eval_batch_size, self.device, self.amp_dtype)
        st.seconds["eval"] += time.perf_counter() - t0
        metrics.update(scores)
        metrics.update(st.timings())
        shown = " ".join(f"{label}={scores[key]:.2f}" for key, label in objective.scores(self.cfg))
        # Not print(): Ray Train patches print in its workers to write the line twice (to stdout and
        # through its logger).
        sys.stdout.write(f"{self.label} round {rnd}/{self.planned} step {st.step} epoch {metrics['epoch']:.2f}: "
                         f"{shown} loss={metrics['train_loss']:.4f}{st.progress(self.total_steps)}\n")
        sys.stdout.flush()
        # Every checkpoint carries the run's metric history, so the driver can log all rounds from
        # the latest checkpoint alone (Train V2 results hold only the last report).
        st.history.append(metrics)
        self.save_checkpoint(metrics)

    def save_checkpoint(self, metrics: dict[str, Any]) -> None:
        """Data safety: the checkpoint is written whole into a private temporary folder (every file
        closed, the metrics file last) before ray.train.report, which copies it into storage under
        Train's own name and registers it only once copied; a copy cut short is never a checkpoint
        Train resumes from. Train deletes checkpoints beyond keep_checkpoints as each one registers
        (tests/test_train_integration.py: at most keep + the latest + the one being copied)."""
        st = self.state
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="raykd-ckpt-") as d:
            models.save_pretrained(self.model, self.tokenizer, d)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "step": st.step, "round": st.round, "history": st.history}, Path(d) / STATE_FILE)
            (Path(d) / META_FILE).write_text(json.dumps({**metrics, "history": st.history}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        st.seconds["checkpoint"] += time.perf_counter() - t0


def train_loop_per_worker(config: dict[str, RunSpec]) -> None:
    """Ray Train's entry point. Train wants a dict (it records it as JSON); the run travels in it
    as one typed :class:`~raykd.runspec.RunSpec`."""
    recipe = Recipe(config["spec"])
    recipe.setup()
    recipe.train()
