"""The one training loop, as each Ray Train worker runs it (``cli.py train``, ``cli.py finetune``,
every search trial and the teacher raykd fine-tunes): a :class:`Recipe` with ``setup()``,
``train()`` and ``report()``, whose counters live on one :class:`LoopState`, and a loss step apart
from the loop. Task-free: the task (:mod:`raykd.tasks`) gives the model head, the distilled logits,
the mask, the hard loss and the scores; fine-tuning arrives as a config with alpha_ce = 0.

Each evaluation round reports the task's scores (the objective, e.g. ``eval_f1`` or
``eval_accuracy``, first), the train losses, learning rate, samples/s and ``round`` (ASHA's time
unit, which survives resumes) through ``ray.train.report`` with a checkpoint in
``save_pretrained`` format plus the training state (:mod:`raykd.checkpoints`): optimizer,
scheduler, counters, where the data is (epoch and micro-batches of it trained on), every worker's
RNG states and the GradScaler's, so that a resumed run continues exactly as if never stopped (same
data order, same dropout masks).
"""

from __future__ import annotations

import itertools
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

from raykd import objective, tasks
from raykd.config import OptimConfig
from raykd.console import duration
from raykd.errors import TrialFailed
from raykd.modeling import losses, models
from raykd.study import cache as teacher_cache
from raykd.study.runspec import RunSpec
from raykd.training.checkpoints import META_FILE, STATE_FILE
from raykd.training.schedule import eval_points, schedule

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


class EpochSampler(torch.utils.data.DistributedSampler):
    """One worker's rows of the training set in an epoch's order (torch's DistributedSampler: a
    permutation seeded by ``seed + epoch``, padded so every worker gets as many rows, worker r taking
    every world-th), from row ``start`` of that order: a resumed run skips the rows it already
    trained on in that epoch without loading them. A DistributedSampler, so that nothing replaces it
    with one of its own seed."""

    def __init__(self, n_rows: int, world: int, rank: int, seed: int):
        super().__init__(range(n_rows), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def train_loader(dataset: torch.utils.data.Dataset, opt: OptimConfig, world: int, rank: int
                 ) -> torch.utils.data.DataLoader:
    """The training data of worker ``rank`` of ``world``: batches of ``optim.batch_size`` in the
    order ``optim.seed`` gives (see :class:`EpochSampler`; the loop sets its epoch and position)."""
    # Starting an iterator draws a seed from the loader's generator, or from the global RNG that
    # dropout uses when it has none: its own keeps dropout's stream the same across a resume.
    generator = torch.Generator()
    generator.manual_seed(opt.seed)
    return torch.utils.data.DataLoader(dataset, batch_size=opt.batch_size, generator=generator,
                                       sampler=EpochSampler(len(dataset), world, rank, opt.seed))


def rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch CPU, CUDA when there is one)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        # The current device's only: workers of a node see all its GPUs, and a resume may place
        # a worker on another one.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class LoopState:
    """The loop's counters: where the run is (saved in every checkpoint, restored on resume), its
    metric history, and the losses and samples summed since the last report."""

    step: int = 0
    round: int = 0
    # Where the data is: the epoch, and the micro-batches of it trained on so far.
    epoch: int = 0
    micro: int = 0
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

    def restore(self, saved: dict[str, Any], steps_per_epoch: int = 1, accum: int = 1) -> None:
        self.step, self.round = saved["step"], saved["round"]
        self.history = list(saved.get("history", []))
        self.run_step0 = self.step
        if "epoch" in saved:
            self.epoch, self.micro = saved["epoch"], saved["micro"]
        else:
            # A checkpoint written before the data position was saved: every epoch trains on
            # steps_per_epoch whole optimizer steps, so the step says where the data is.
            self.epoch, self.micro = self.step // steps_per_epoch, self.step % steps_per_epoch * accum

    def saved(self) -> dict[str, Any]:
        """The counters a checkpoint carries."""
        return {"step": self.step, "round": self.round, "history": self.history, "epoch": self.epoch,
                "micro": self.micro}



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

    def setup(self, checkpoint: ray.train.Checkpoint | None = None) -> None:
        """``checkpoint``: the run's latest (Train's ``get_checkpoint()``), to resume from."""
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
        # Not ray.train.torch.prepare_data_loader: its sampler's seed is always 0 (optim.seed would
        # not reach the data order), and the loop moves batches to the device itself.
        self.loader = train_loader(self.train_ds, opt, self.world, self.rank)
        self.sampler: EpochSampler = self.loader.sampler
        self.steps_per_epoch, self.total_steps, every = schedule(cfg, len(self.train_ds), self.world)
        self.evals = eval_points(self.total_steps, every, self.spec.eval_rounds)
        self.planned = max(self.evals.values())
        # A search trial's rounds are shown by the search's driver (its worker's line goes to the
        # log only); a single run's by its worker.
        self.label = f"[trial {ctx.get_experiment_name()}]" if self.spec.in_search else "[raykd]"

        named = list(self.model.named_parameters())
        plain = ("bias", "LayerNorm", "layer_norm")
        self.optimizer = adamw(
            [{"params": [p for n, p in named if not any(x in n for x in plain)], "weight_decay": opt.weight_decay},
             {"params": [p for n, p in named if any(x in n for x in plain)], "weight_decay": 0.0}],
            lr=opt.learning_rate,
        )
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(opt.warmup_ratio * self.total_steps),
                                                         self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.eval_features = prepared.eval() if self.rank == 0 else None
        self.examples = prepared.examples() if self.rank == 0 else None
        if saved:
            self.restore(saved)

    def restore(self, saved: dict[str, Any]) -> None:
        """A checkpoint's training state, the RNG states last: nothing else may draw from them
        before training goes on. A state file without the data position, RNG or scaler states (an
        older raykd) still loads; the run then goes on with fresh RNG streams."""
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state.restore(saved, self.steps_per_epoch, self.cfg.optim.grad_accum_steps)
        if saved.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved["scaler"])
        rngs = saved.get("rng")
        if rngs and len(rngs) == self.world:
            set_rng_state(rngs[self.rank])
        elif rngs and self.rank == 0:
            sys.stdout.write(f"{self.label} the checkpoint holds the RNG states of {len(rngs)} worker(s), not "
                             f"{self.world}: dropout and data draws will differ from an uninterrupted run\n")

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
        # An epoch trains on whole optimizer steps: a tail shorter than one is left out.
        per_epoch = self.steps_per_epoch * accum
        self.model.train()
        st.start()
        while st.step < self.total_steps:
            if st.micro >= per_epoch:
                st.epoch, st.micro = st.epoch + 1, 0
            self.sampler.set_position(st.epoch, st.micro * opt.batch_size)
            before = st.micro
            for batch in self.loader:
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
                st.micro += 1
                if st.micro % accum == 0:
                    self._optimizer_step()
                    if st.step in self.evals:
                        self.report(self.evals[st.step], final=st.step >= self.total_steps)
                        st.next_window()
                        self.model.train()
                    if st.step >= self.total_steps:
                        return
                if st.micro >= per_epoch:
                    break
            if st.micro < per_epoch:
                # schedule() counted these batches: a loader that yields fewer would loop forever.
                raise RuntimeError(f"the training data ran out after {st.micro - before} batches at micro-batch "
                                   f"{st.micro} of epoch {st.epoch}, which has {per_epoch}")

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
            # (None in Train's local mode, which runs without Ray: asking would start one.)
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "round": rnd,
            # True on the run's last round: a trial whose last result is not final was stopped early.
            "final": final,
            "step": st.step,
            "epoch": st.step / self.steps_per_epoch,
            "learning_rate": self.scheduler.get_last_lr()[0],
            **st.take_train_metrics(self.world),
            # What this run trains on (a searched doc_stride or max_length changes it).
            "train_features": len(self.train_ds),
            # Its architecture's measured serving costs, in a Pareto search.
            **self.spec.costs,
        }
        # Every worker's RNG states, for rank 0's checkpoint, gathered while the workers are in
        # step: the others would otherwise wait for rank 0's evaluation inside the collective,
        # whose timeout (Train's process group, 30 min) a long evaluation can pass.
        rngs = self._gather(rng_state())
        if self.rank == 0:
            t0 = time.perf_counter()
            scores = self.task.evaluate(self.model, self.eval_features, self.examples, self.cfg.data,
                                        self.cfg.optim.eval_batch_size, self.device, self.amp_dtype)
            st.seconds["eval"] += time.perf_counter() - t0
            rngs[0] = rng_state()  # as training goes on from here, after the evaluation
        if self.rank != 0:
            # Every worker reports (it is a barrier); only rank 0's metrics and checkpoint are kept.
            ray.train.report({**metrics, **dict.fromkeys(self.task.score_keys(), 0.0)}, checkpoint=None)
            return
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
        self.save_checkpoint(metrics, rngs)

    def _gather(self, value: Any) -> list[Any]:
        """``value`` of every worker, in rank order (a collective: every worker calls it)."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def save_checkpoint(self, metrics: dict[str, Any], rngs: list[dict[str, Any]]) -> None:
        """Data safety: the checkpoint is written whole into a private temporary folder (every file
        closed, the metrics file last) before ray.train.report, which copies it into storage under
        Train's own name and registers it only once copied; a copy cut short is never a checkpoint
        Train resumes from. Train deletes checkpoints beyond keep_checkpoints as each one registers
        (tests/test_train_integration.py: at most keep + the latest + the one being copied)."""
        st = self.state
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="raykd-ckpt-") as d:
            self.write_checkpoint(d, metrics, rngs)
            metric = objective.metric(self.cfg)
            so_far = json.dumps([[h["round"], h[metric]] for h in st.history if metric in h])
            ray.train.report({**metrics, objective.ROUND_SCORES: so_far},
                             checkpoint=ray.train.Checkpoint.from_directory(d))
        st.seconds["checkpoint"] += time.perf_counter() - t0

    def write_checkpoint(self, folder: str, metrics: dict[str, Any], rngs: list[dict[str, Any]]) -> None:
        """The model, the training state (:meth:`restore` reads it) and the metrics file, last."""
        models.save_pretrained(self.model, self.tokenizer, folder)
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 **self.state.saved(), "rng": rngs}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        torch.save(state, Path(folder) / STATE_FILE)
        (Path(folder) / META_FILE).write_text(json.dumps({**metrics, "history": self.state.history}))


# Where PyTorch has a fused AdamW kernel (CPU and CUDA since PyTorch 2.4; ``AdamW``'s ``fused``
# option lists these dtypes): the devices raykd trains on.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")
FUSED_ADAMW_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters) when every parameter is on a device and of a
    dtype that has the kernel, else PyTorch's default AdamW (on the CPU a loop over the tensors):
    the same algorithm, the fused one several times faster a step (a 17M-parameter student on 2 CPU
    cores: benchmarks/RESULTS.md). It rounds differently, and over a run that shifts scores: the
    quickstart's best trial scores 55.27 F1 with it and 53.52 without. Decided here, not by
    catching an error: PyTorch checks a fused optimizer's parameters only at its first step. The Hugging Face Trainer's default optimizer
    is the fused one too (``adamw_torch_fused`` on PyTorch >= 2.8). A resumed run goes on with the
    implementation its checkpoint was saved with (the optimizer's parameter groups record it)."""
    params = [p for group in groups for p in group["params"]]
    fused = all(p.device.type in FUSED_ADAMW_DEVICES and p.dtype in FUSED_ADAMW_DTYPES for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


def train_loop_per_worker(config: dict[str, RunSpec]) -> None:
    """Ray Train's entry point. Train wants a dict (it records it as JSON); the run travels in it
    as one typed :class:`~raykd.runspec.RunSpec`."""
    recipe = Recipe(config["spec"])
    recipe.setup(ray.train.get_checkpoint())
    recipe.train()
