"""The one training loop (``train_loop_per_worker``), the TorchTrainer that runs it, and the
study preparation a run needs first (teacher, features, cached teacher logits). ``cli.py train``,
``cli.py finetune`` and every search trial go through :func:`build_trainer`.

Each evaluation round reports ``eval_f1`` (``metrics.METRIC``), ``eval_exact_match``, the train
losses, learning rate, samples/s and ``round`` (ASHA's time unit, which survives resumes) through
``ray.train.report`` with a checkpoint in ``save_pretrained`` format plus the optimizer state.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer
from transformers import get_linear_schedule_with_warmup

from raykd import data as data_mod
from raykd import inference, losses, models, storage, study_store, teacher_cache
from raykd.config import DISTILL, FINETUNE, RaykdConfig, run_name
from raykd.console import duration
from raykd.errors import TrialFailed, UserError
from raykd.metrics import METRIC, MODE

STATE_FILE = "raykd_train_state.pt"
META_FILE = "raykd_metrics.json"


# ---------------------------------------------------------------------------------------------
# Paths and study preparation (driver side)


def storage_root(cfg: RaykdConfig) -> str:
    path = cfg.search.storage_path
    return path if storage.is_remote(path) else str(Path(path).expanduser().resolve())


def study_place(cfg: RaykdConfig) -> study_store.Place:
    """Where this config's studies are built and, with a cloud storage_path, published."""
    return study_store.place(cfg.data.cache_dir, storage_root(cfg))


def cache_root(cfg: RaykdConfig) -> Path:
    """Where the driver builds studies (the node-local cache when they are published)."""
    return study_place(cfg).local


@dataclass
class Study:
    """What every run of a study shares: computed once, handed to all trials. ``prepared``,
    ``teacher`` and ``tokenizer`` are what any node can open: a local path, a model name, or a
    storage URI that :meth:`on_this_node` fetches into the node-local cache."""

    prepared: str
    teacher_file: str | None
    teacher: str | None
    tokenizer: str

    def loop_config(self, cfg: RaykdConfig, mode: str, eval_rounds: int | None = None) -> dict[str, Any]:
        """What the workers receive. ``eval_rounds``: evaluate at that many equal fractions of
        the run's training (a search's trials) instead of every ``optim.eval_every_steps``."""
        return {"cfg": cfg.to_dict(), "mode": mode, "eval_rounds": eval_rounds, **self.__dict__}

    def on_this_node(self, items: tuple[str, ...] = study_store.PREPARED_ITEMS) -> Study:
        """The same study with local paths, fetched once per node when it was published."""
        return Study(
            str(study_store.local_prepared(self.prepared, self.teacher_file, items)), self.teacher_file,
            study_store.local_model(self.teacher), study_store.local_model(self.tokenizer),
        )


def ensure_teacher(cfg: RaykdConfig, place: study_store.Place) -> str | None:
    """The teacher to use: ``models.teacher`` as given, or, when it is unset and
    ``teacher_finetune.base`` is, a teacher fine-tuned from that base by raykd and cached (a local
    folder on the driver; published with the study when nodes share no filesystem)."""
    if cfg.models.teacher:
        return cfg.models.teacher
    ft = cfg.models.teacher_finetune
    if not ft.base:
        return None
    key = teacher_cache._digest(
        {
            "base": teacher_cache.model_identity(ft.base),
            "data": teacher_cache.features_fingerprint(cfg.data, ft.base, place.local),
            "ft": ft.__dict__,
            "seed": cfg.optim.seed,
        }
    )
    target = place.local / "teachers" / key
    remote = place.shared(str(target))
    if place.remote and study_store.pull_model(remote, target):
        print(f"[raykd] teacher fetched from {remote}", flush=True)
    if (target / "config.json").exists():
        if place.remote and study_store.publish_model(target, remote):
            print(f"[raykd] teacher published to {remote}", flush=True)
        return str(target)
    print(f"[raykd] no teacher yet: fine-tuning {ft.base} on the training data -> {target}", flush=True)
    ft_cfg = RaykdConfig.from_dict(
        {
            **cfg.to_dict(),
            "models": {"teacher": None, "student": ft.base},
            "optim": {**cfg.optim.__dict__, "learning_rate": ft.learning_rate,
                      "num_epochs": ft.num_epochs, "batch_size": ft.batch_size, "eval_every_steps": None},
            "scaling": {**cfg.scaling.__dict__, "resources_per_worker": dict(cfg.scaling.resources_per_worker)},
        }
    )
    result = fit(ft_cfg, FINETUNE, name=f"teacher-{key}")
    best = best_checkpoint(result)
    # Copied under a temporary name and renamed: a teacher folder is whole or absent.
    tmp = data_mod.temp_name(target)
    shutil.rmtree(tmp, ignore_errors=True)
    with best.as_directory() as d:
        shutil.copytree(d, tmp, ignore=shutil.ignore_patterns(STATE_FILE))
    try:
        tmp.replace(target)
    except OSError:
        if not (target / "config.json").exists():  # not another process's complete copy
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if place.remote:
        study_store.publish_model(target, remote)
    print(f"[raykd] teacher ready: {remote} ({METRIC}={best_metrics(result).get(METRIC, float('nan')):.2f})", flush=True)
    return str(target)


def prepare_study(cfg: RaykdConfig, mode: str = DISTILL, need_logits: bool | None = None) -> tuple[Study, dict[str, Any]]:
    """Teacher, features and (cached mode) teacher logits; returns the Study and what was done.
    ``need_logits``: prepare the teacher's logits (default: when this config distils from them;
    a search passes True when any point of its space does). With a cloud storage_path, what was
    built or reused is published there (once) and the Study names it by URI."""
    place = study_place(cfg)
    teacher = ensure_teacher(cfg, place) if mode == DISTILL else None
    if mode == DISTILL and teacher is None:
        raise ValueError("distillation needs models.teacher or models.teacher_finetune.base")
    tokenizer = cfg.models.student
    if mode == DISTILL:
        student_tok = cfg.models.student if not cfg.models.init_from_teacher_layers else (
            cfg.models.student or teacher)
        models.check_tokenizers(models.load_tokenizer(teacher), models.load_tokenizer(student_tok))
        tokenizer = student_tok
    remote = None
    if place.remote:
        # Whatever an earlier search published is fetched, not rebuilt.
        root = teacher_cache.prepared_root(cfg.data, tokenizer, place.local)
        remote = place.shared(str(root))
        study_store.pull_prepared(remote, root)
    prepared, built = teacher_cache.prepare_features(cfg.data, tokenizer, place.local)
    info = {"features_built": built, "teacher_logits_computed": False, "prepared": str(prepared.root)}
    if remote:
        study_store.publish_prepared(prepared.root, remote)
        info["published"] = remote
    if need_logits is None:
        need_logits = cfg.distill.alpha_ce > 0
    if mode == DISTILL and cfg.distill.teacher_mode == "cached" and need_logits:
        compute = _remote_compute(place.shared(str(prepared.root)), place.shared(teacher))
        prepared, computed = teacher_cache.prepare_teacher_logits(prepared, teacher, compute=compute)
        info["teacher_logits_computed"] = computed
        if remote:
            study_store.publish_prepared(prepared.root, remote)
    study = Study(place.shared(str(prepared.root)), prepared.teacher_file, place.shared(teacher),
                  place.shared(tokenizer))
    return study, info


def _teacher_logits_task(teacher: str, prepared: str) -> np.ndarray:
    """On a GPU node: fetch the teacher and the training features there, run the teacher."""
    local = Study(prepared, None, teacher, teacher).on_this_node(items=("train",))
    return teacher_cache.compute_teacher_logits(local.teacher, local.prepared, 256, "cuda")


def _remote_compute(prepared: str, teacher: str):
    """Teacher logits as a Ray task on a GPU when the cluster has one; else in this process.
    The task gets the study's shared names (URIs when it is published), not the driver's paths."""
    if not ray.is_initialized() or ray.cluster_resources().get("GPU", 0) < 1:
        return None

    def compute(teacher_name: str, root: str) -> np.ndarray:
        task = ray.remote(num_gpus=1)(_teacher_logits_task)
        return ray.get(task.remote(teacher, prepared))

    return compute


# ---------------------------------------------------------------------------------------------
# The loop (worker side)


class _Features(torch.utils.data.Dataset):
    """Training features plus, in cached mode, the teacher's logits of the same rows."""

    def __init__(self, features, names, teacher_logits: np.ndarray | None):
        cols = list(names) + ["start_positions", "end_positions", "span_mask"]
        self.ds = features.with_format("torch", columns=cols)
        self.logits = teacher_logits

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.ds[i]
        if self.logits is not None:
            row = torch.from_numpy(np.asarray(self.logits[i], dtype=np.float32))
            item["teacher_start"], item["teacher_end"] = row[0], row[1]
        return item


def schedule(cfg: RaykdConfig, n_features: int, world: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, steps between evaluations) of one worker."""
    opt = cfg.optim
    batches = math.ceil(math.ceil(n_features / world) / opt.batch_size)
    steps_per_epoch = max(1, batches // opt.grad_accum_steps)
    total_steps = max(1, math.ceil(opt.num_epochs * steps_per_epoch))
    return steps_per_epoch, total_steps, opt.eval_every_steps or steps_per_epoch


def expected_rounds(cfg: RaykdConfig, n_features: int) -> int:
    """Evaluation rounds a run reports when nothing stops it and no round count is imposed."""
    _, total, every = schedule(cfg, n_features, cfg.scaling.num_workers)
    return math.ceil(total / every)


def eval_points(total_steps: int, every: int, rounds: int | None = None) -> dict[int, int]:
    """{optimizer step: round number} of a run's evaluations. With ``rounds`` (a search), round k
    of R falls after k/R of this run's own steps, so runs with different batch sizes or epochs
    reach round k at the same share of their schedule; the last round is always R, at the last
    step (when a run has fewer steps than rounds, coinciding rounds are evaluated once, under the
    larger number). Without it: every ``every`` steps, and at the last step."""
    if rounds:
        points: dict[int, int] = {}
        for k in range(1, rounds + 1):
            points[max(1, math.ceil(k * total_steps / rounds - 1e-9))] = k
        return points
    steps = list(range(every, total_steps + 1, every))
    if not steps or steps[-1] != total_steps:
        steps.append(total_steps)
    return {s: i + 1 for i, s in enumerate(steps)}


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


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    cfg = RaykdConfig.from_dict(loop["cfg"])
    mode = loop["mode"]
    opt, dist = cfg.optim, cfg.distill
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _seed(opt.seed)
    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    device = ray.train.torch.get_device()
    amp_dtype = _precision(opt.precision, device)
    distilling = mode == DISTILL
    cached = distilling and dist.teacher_mode == "cached" and dist.alpha_ce > 0
    online = distilling and not cached and (dist.alpha_ce > 0 or dist.alpha_cos > 0)

    study = Study(loop["prepared"], loop.get("teacher_file"), loop.get("teacher"), loop["tokenizer"]).on_this_node()
    prepared = teacher_cache.Prepared(Path(study.prepared), study.teacher_file)
    tokenizer = models.load_tokenizer(study.tokenizer)
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint:
        ckpt_dir = tempfile.mkdtemp(prefix="raykd-resume-")
        checkpoint.to_directory(ckpt_dir)
        student = models.load_qa_model(ckpt_dir)
        state = torch.load(Path(ckpt_dir) / STATE_FILE, weights_only=False)
    else:
        student = models.build_student(cfg.models.student, cfg.models.init_from_teacher_layers,
                                       cfg.models.init_from or study.teacher)
    names = models.accepted_inputs(student)
    model = ray.train.torch.prepare_model(student)
    teacher = None
    if online:
        # Online mode only: in cached mode no trial ever constructs the teacher.
        teacher = models.load_teacher(study.teacher).to(device)
        teacher_names = models.accepted_inputs(teacher)

    # All three inputs: an online BERT teacher needs token_type_ids even when the student does not.
    train_ds = _Features(prepared.train(), ("input_ids", "attention_mask", "token_type_ids"),
                         prepared.teacher_logits() if cached else None)
    g = torch.Generator()
    g.manual_seed(opt.seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=opt.batch_size, shuffle=True, generator=g)
    loader = ray.train.torch.prepare_data_loader(loader)
    steps_per_epoch, total_steps, eval_every = schedule(cfg, len(train_ds), world)
    evals = eval_points(total_steps, eval_every, loop.get("eval_rounds"))
    # A search trial's rounds are shown by the search's driver (its worker's line goes to the log
    # only); a single run's by its worker.
    label = f"[trial {ctx.get_experiment_name()}]" if loop.get("eval_rounds") else "[raykd]"
    planned = max(evals.values())

    decay = [p for n, p in model.named_parameters() if not any(x in n for x in ("bias", "LayerNorm", "layer_norm"))]
    no_decay = [p for n, p in model.named_parameters() if any(x in n for x in ("bias", "LayerNorm", "layer_norm"))]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opt.learning_rate,
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(opt.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step, rnd = 0, 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, rnd = state["step"], state["round"]

    eval_feats = prepared.eval() if rank == 0 else None
    examples = prepared.examples() if rank == 0 else None
    history: list[dict[str, Any]] = list(state.get("history", [])) if state else []
    sums = {"loss": 0.0, "kd": 0.0, "ce": 0.0, "cos": 0.0}
    n_micro, n_samples, t0 = 0, 0, time.perf_counter()
    run_t0, run_step0 = t0, step  # for the ETA of a long run (a resumed one counts from here)
    model.train()
    micro = 0
    epoch = step // steps_per_epoch
    skip = (step % steps_per_epoch) * opt.grad_accum_steps  # micro-batches already seen this epoch
    while step < total_steps:
        if world > 1:
            loader.sampler.set_epoch(epoch)
        g.manual_seed(opt.seed + epoch)
        for b, batch in enumerate(loader):
            if b < skip:
                continue
            if b >= steps_per_epoch * opt.grad_accum_steps:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = models.forward(model, batch, names, hidden=dist.alpha_cos > 0)
                t_start = t_end = t_hidden = None
                if cached:
                    t_start, t_end = batch["teacher_start"], batch["teacher_end"]
                elif teacher is not None:
                    with torch.no_grad():
                        t_out = models.forward(teacher, batch, teacher_names, hidden=dist.alpha_cos > 0)
                    t_start, t_end = t_out.start_logits, t_out.end_logits
                    t_hidden = t_out.hidden_states[-1] if dist.alpha_cos > 0 else None
            parts = losses.distillation_loss(
                out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"],
                batch["span_mask"],
                teacher_start=t_start, teacher_end=t_end, temperature=dist.temperature,
                alpha_ce=dist.alpha_ce if distilling else 0.0,
                alpha_squad=dist.alpha_squad if distilling else 1.0,
                alpha_cos=dist.alpha_cos if distilling else 0.0,
                student_hidden=out.hidden_states[-1] if dist.alpha_cos > 0 else None,
                teacher_hidden=t_hidden, attention_mask=batch["attention_mask"],
            )
            values = {k: float(parts[k].detach()) for k in sums}
            if not math.isfinite(values["loss"]):
                # A diverged student cannot recover and its eval F1 would be meaningless: fail the
                # trial with why, rather than train on NaNs or let it score 0 (Optuna would learn
                # "bad hyperparameters" instead of "broken run").
                raise TrialFailed(
                    f"non-finite loss ({values['loss']}) at step {step + 1} of {total_steps}: "
                    f"learning_rate {opt.learning_rate:g}, temperature {dist.temperature:g}, "
                    f"alpha_ce {dist.alpha_ce:g}, alpha_squad {dist.alpha_squad:g}, precision {opt.precision}")
            scaler.scale(parts["loss"] / opt.grad_accum_steps).backward()
            for k in sums:
                sums[k] += values[k]
            n_micro += 1
            n_samples += len(batch["input_ids"])
            micro += 1
            if micro % opt.grad_accum_steps:
                continue
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step in evals:
                rnd = evals[step]
                elapsed = time.perf_counter() - t0
                train_metrics = {f"train_{k}": v / max(n_micro, 1) for k, v in sums.items()}
                train_metrics["samples_per_sec"] = n_samples * world / max(elapsed, 1e-9)
                # What this run trains on (a searched doc_stride or max_length changes it).
                train_metrics["train_features"] = len(train_ds)
                _report(model, tokenizer, optimizer, scheduler, cfg, rank, step, rnd, step >= total_steps,
                        steps_per_epoch, train_metrics, eval_feats, examples, device, amp_dtype, history,
                        f"{label} round {rnd}/{planned}", _progress(step, total_steps, run_step0, run_t0))
                sums = dict.fromkeys(sums, 0.0)
                n_micro, n_samples, t0 = 0, 0, time.perf_counter()
                model.train()
            if step >= total_steps:
                break
        skip = 0
        epoch += 1


def _progress(step: int, total_steps: int, step0: int, t0: float) -> str:
    """", 1m12s elapsed, ETA 3m40s": the run's pace so far (evaluations included), to its last step."""
    spent = time.perf_counter() - t0
    left = (total_steps - step) * spent / max(step - step0, 1)
    return f", {duration(spent)} elapsed, ETA {duration(left)}"


def _report(model, tokenizer, optimizer, scheduler, cfg, rank, step, rnd, final, steps_per_epoch,
            train_metrics, eval_feats, examples, device, amp_dtype, history, label, progress="") -> None:
    metrics: dict[str, Any] = {
        # Where this run's rank 0 ran (which node of a cluster), for the record.
        "node_id": ray.get_runtime_context().get_node_id(),
        "round": rnd,
        # True on the run's last round: a trial whose last result is not final was stopped early.
        "final": final,
        "step": step,
        "epoch": step / steps_per_epoch,
        "learning_rate": scheduler.get_last_lr()[0],
        **train_metrics,
    }
    if rank != 0:
        # Every worker reports (it is a barrier); only rank 0's metrics and checkpoint are kept.
        ray.train.report({**metrics, METRIC: 0.0, "eval_exact_match": 0.0}, checkpoint=None)
        return
    scores, _ = inference.evaluate(
        model, eval_feats, examples, cfg.data.n_best, cfg.data.max_answer_length,
        cfg.optim.eval_batch_size, device, amp_dtype,
    )
    metrics[METRIC] = scores["f1"]
    metrics["eval_exact_match"] = scores["exact_match"]
    # Not print(): Ray Train patches print in its workers to write the line twice (to stdout and
    # through its logger).
    sys.stdout.write(
        f"{label} step {step} epoch {metrics['epoch']:.2f}: "
        f"{METRIC}={scores['f1']:.2f} EM={scores['exact_match']:.2f} loss={train_metrics['train_loss']:.4f}"
        f"{progress}\n"
    )
    sys.stdout.flush()
    # Every checkpoint carries the run's metric history, so the driver can log all rounds from
    # the latest checkpoint alone (Train V2 results hold only the last report).
    history.append(metrics)
    # Data safety: the checkpoint is written whole into a private temporary folder (every file
    # closed, the metrics file last) before ray.train.report, which copies it into storage under
    # Train's own name and registers it only once copied; a copy cut short is never a checkpoint
    # Train resumes from. Train deletes checkpoints beyond keep_checkpoints as each one registers
    # (tests/test_train_integration.py: at most keep + the latest + the one being copied).
    with tempfile.TemporaryDirectory(prefix="raykd-ckpt-") as d:
        models.save_pretrained(model, tokenizer, d)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "step": step, "round": rnd, "history": history}, Path(d) / STATE_FILE)
        (Path(d) / META_FILE).write_text(json.dumps({**metrics, "history": history}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


# ---------------------------------------------------------------------------------------------
# The trainer (driver side)


def build_trainer(
    cfg: RaykdConfig, loop_config: dict[str, Any], name: str, storage_path: str | None = None,
    callbacks: list | None = None, keep_by: str = METRIC,
) -> TorchTrainer:
    """``keep_by``: the reported metric that ranks checkpoints (``round`` keeps the latest)."""
    sc = cfg.scaling
    resources = worker_resources(cfg)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path or storage_root(cfg),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.search.keep_checkpoints,
                checkpoint_score_attribute=keep_by,
                checkpoint_score_order=MODE if keep_by == METRIC else "max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            callbacks=callbacks or [],
        ),
    )


def worker_resources(cfg: RaykdConfig) -> dict[str, float]:
    """What one training worker asks Ray for."""
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **sc.resources_per_worker}
    if sc.use_gpu:
        resources["GPU"] = 1
    return resources


def _cluster_capacity() -> tuple[dict[str, float], list[dict[str, float]], bool] | None:
    """(the most of each resource the cluster can ever have, what each node or node type has,
    whether it autoscales), or None when that cannot be known. An autoscaler that publishes its
    node types (what Ray Train itself reads to refuse a worker group that can never start) is
    judged at its largest; an autoscaler that does not (the v1 monitor) may add anything, so
    None; a fixed cluster has what it has now."""
    now = ray.cluster_resources()
    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    # Private APIs: without them, judge by what the cluster has now.
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
        config = state.get_cluster_config()
        groups = [dict(g.resources) for g in config.node_group_configs if g.max_count != 0] if config else []
    except Exception:  # noqa: BLE001
        most, groups = {}, []
    if not most:
        try:
            from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
            from ray.autoscaler._private.util import format_readonly_node_type
            from ray.experimental.internal_kv import _internal_kv_get

            # A fixed cluster runs a read-only autoscaler too; its node types are named after
            # the nodes. A real one (ray up) names them after the config's node types.
            report = json.loads(_internal_kv_get(DEBUG_AUTOSCALING_STATUS) or b"{}").get("autoscaler_report") or {}
            mapping = report.get("node_type_mapping") or {}
            if any(kind != format_readonly_node_type(node) for node, kind in mapping.items()):
                return None
        except Exception:  # noqa: BLE001, S110
            pass
    keys = set(now) | set(most)
    return {k: max(float(now.get(k, 0)), float(most.get(k, 0))) for k in keys}, nodes + groups, bool(most)


def check_resources(cfg: RaykdConfig, driver_cpu: float = 0.0) -> None:
    """Refuse a run whose workers the cluster can never hold, instead of waiting for them
    forever: GPUs on a cluster without any, more CPUs (or custom resources) per trial than the
    cluster has in all, or a worker bigger than every node. ``driver_cpu``: what a search's trial
    driver takes on top of its workers."""
    sc = cfg.scaling
    per_worker = worker_resources(cfg)
    known = _cluster_capacity()
    if known is None:
        print("[raykd] the cluster autoscales without publishing its largest size: resources are not checked "
              "up front", flush=True)
        return
    capacity, nodes, autoscales = known
    where = f"{cfg.source}: " if cfg.source else ""
    have = ", ".join(f"{k} {v:g}" for k, v in sorted(capacity.items()) if k in ("CPU", "GPU") or k in per_worker)
    cluster = f"the Ray cluster{' (autoscaling, at its largest)' if autoscales else ''} has {have or 'nothing'}"
    if sc.use_gpu and capacity.get("GPU", 0) < 1:
        raise UserError(f"{where}scaling.use_gpu: true, but {cluster}: no GPU; set scaling.use_gpu: false or "
                        "run on a cluster with GPUs (--address)")
    for key, amount in per_worker.items():
        need = amount * sc.num_workers + (driver_cpu if key == "CPU" else 0.0)
        if need > capacity.get(key, 0.0) + 1e-9:
            fix = ("lower scaling.num_workers or scaling.cpus_per_worker" if key == "CPU" else
                   "lower scaling.num_workers" if key == "GPU" else f"drop scaling.resources_per_worker.{key}")
            raise UserError(f"{where}scaling: a trial needs {key} {need:g} ({sc.num_workers} worker(s) x {amount:g}"
                            f"{' + the trial driver' if key == 'CPU' and driver_cpu else ''}), but {cluster}; {fix}")
    if nodes and not any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in per_worker.items()) for n in nodes):
        raise UserError(f"{where}scaling: one worker needs {per_worker}, more than any node of the Ray cluster "
                        "has; lower scaling.cpus_per_worker or scaling.resources_per_worker")


def init_ray(address: str | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS), else start an embedded single-node Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # The dashboard stays on: ASHA-stopped trials release their placement groups through its
    # state API (without it the next trial waits forever).
    ray.init(address=address, log_to_driver=True,
             configure_logging=True, logging_level="WARNING")


def fit(cfg: RaykdConfig, mode: str, name: str | None = None, study: Study | None = None) -> ray.train.Result:
    """One run (``cli.py train`` / ``finetune``) through a real TorchTrainer."""
    if study is None:
        study, _ = prepare_study(cfg, mode)
    name = name or run_name(cfg, mode)
    trainer = build_trainer(cfg, study.loop_config(cfg, mode), name)
    return trainer.fit()


def best_checkpoint(result: ray.train.Result) -> ray.train.Checkpoint:
    """The best kept checkpoint by METRIC (not the last one)."""
    ranked = result.best_checkpoints or []
    if ranked:
        return max(ranked, key=lambda cm: cm[1].get(METRIC, float("-inf")))[0]
    if result.checkpoint is None:
        raise RuntimeError("the run reported no checkpoint")
    return result.checkpoint


def history(result: ray.train.Result) -> list[dict[str, Any]]:
    """Every round's metrics of a finished run, read from its latest checkpoint."""
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as d:
        meta = json.loads((Path(d) / META_FILE).read_text())
    return meta.get("history", [meta])


def best_metrics(result: ray.train.Result) -> dict[str, Any]:
    ranked = result.best_checkpoints or []
    if ranked:
        return max(ranked, key=lambda cm: cm[1].get(METRIC, float("-inf")))[1]
    return dict(result.metrics or {})
