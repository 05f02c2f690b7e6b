"""Study preparation, on the driver, before any run: the teacher (fine-tuned by raykd first when
only a base is given), the task's features and, for cached distillation, the teacher's logits,
all cached by fingerprint (:mod:`raykd.study.cache`) and, with a cloud storage_path, published
once (:mod:`raykd.study.store`). It sits above :mod:`raykd.training` (the teacher is fine-tuned by
an ordinary run) and below the search, which prepares one study per architecture. The teacher's logits run as a Ray task on a GPU when the cluster
has one (the cache's remote task); nothing else here touches Ray.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raykd import objective, storage, tasks
from raykd.config import DISTILL, FINETUNE, RaykdConfig, flat_settings, replace, validate
from raykd.modeling import models
from raykd.study import cache as teacher_cache
from raykd.study import store as study_store
from raykd.study.runspec import Study, as_finetune
from raykd.training.checkpoints import STATE_FILE


def study_place(cfg: RaykdConfig) -> study_store.Place:
    """Where this config's studies are built and, with a cloud storage_path, published."""
    return study_store.place(storage.ExperimentPaths.of(cfg))


def teacher_finetune_config(cfg: RaykdConfig) -> RaykdConfig:
    """The fine-tuning run that makes the teacher when only ``models.teacher_finetune.base`` is
    given: ``cfg``'s settings, the whole base model, and teacher_finetune's epochs, learning rate
    and batch size, evaluated once per epoch."""
    ft = cfg.models.teacher_finetune
    # The models section is replaced whole (the student's layer copy is not the teacher's); the
    # run is a config of its own, without the file's name.
    made = replace(cfg, {"models": {"teacher": None, "student": ft.base}, "optim.learning_rate": ft.learning_rate,
                         "optim.num_epochs": ft.num_epochs, "optim.batch_size": ft.batch_size,
                         "optim.eval_every_steps": None})
    return validate(dataclasses.replace(made, source=None))


# Settings of the teacher's fine-tuning run left out of its cache key because they cannot change
# the teacher's weights, nor which checkpoint becomes the teacher. Every other setting is in the
# key, new fields included: a teacher is never reused for a run that would train another one.
NOT_IN_TEACHER_KEY = (
    "models.student",  # the base: keyed by its files (model_identity), not by its name or path
    "data.train_file", "data.validation_file",  # keyed by their contents (features_fingerprint)
    "data.cache_dir",  # where the cache lives
    "distill.temperature", "distill.teacher_mode",  # no teacher in a fine-tune (runspec.as_finetune)
    "optim.eval_batch_size",  # evaluation only, and padding is masked: same scores at any batch size
    # Where the workers run and how fast, not what they compute; a restarted group resumes its checkpoint.
    "scaling.cpus_per_worker", "scaling.resources_per_worker", "scaling.torch_threads", "scaling.max_failures",
    # The search around the run. (search.metric and search.objectives stay: they pick the best
    # checkpoint; keep_checkpoints does not, the best is always kept.)
    "search.name", "search.storage_path", "search.num_samples", "search.max_concurrent_trials", "search.rounds",
    "search.scheduler", "search.grace_period", "search.min_share_before_stop", "search.reduction_factor",
    "search.trial_score", "search.seed", "search.n_startup_trials", "search.points_to_evaluate",
    "search.keep_checkpoints", "search.max_latency_ms", "search.sampler",
    "tracking", "latency", "space",  # logging, serving costs, the search space: not read by a run
)


def teacher_key(ft_cfg: RaykdConfig, cache_dir: Path) -> str:
    """The cache key of the teacher that ``ft_cfg`` (:func:`teacher_finetune_config`) fine-tunes:
    its base model's files, its data as the prepared features key it, and every setting of the run
    as its workers receive it (:func:`raykd.runspec.as_finetune`) but :data:`NOT_IN_TEACHER_KEY`."""
    base = ft_cfg.models.student
    settings = {key: value for key, value in flat_settings(as_finetune(ft_cfg).to_dict()).items()
                if not any(key == x or key.startswith(x + ".") for x in NOT_IN_TEACHER_KEY)}
    return teacher_cache._digest(
        {
            "base": teacher_cache.model_identity(base),
            "data": teacher_cache.features_fingerprint(tasks.get(ft_cfg.task), ft_cfg.data, base, cache_dir),
            "run": settings,
        }
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
    ft_cfg = teacher_finetune_config(cfg)
    key = teacher_key(ft_cfg, place.local)
    target = place.local / "teachers" / key
    remote = place.shared(str(target))
    if place.remote and study_store.pull_model(remote, target):
        print(f"[raykd] teacher fetched from {remote}", flush=True)
    if (target / "config.json").exists():
        if place.remote and study_store.publish_model(target, remote):
            print(f"[raykd] teacher published to {remote}", flush=True)
        return str(target)
    print(f"[raykd] no teacher yet: fine-tuning {ft.base} on the training data -> {target}", flush=True)
    from raykd.training import trainer as train  # the teacher is made by an ordinary fine-tuning run

    # A fine-tuning study has no teacher, so this does not come back here.
    ft_study, _ = prepare_study(ft_cfg, FINETUNE)
    result = train.fit(ft_cfg, FINETUNE, ft_study, name=f"teacher-{key}")
    metric = objective.metric(ft_cfg)
    best = train.best_checkpoint(result, metric)
    # Copied under a temporary name and renamed: a teacher folder is whole or absent.
    tmp = storage.temp_name(target)
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
    score = train.best_metrics(result, metric).get(metric, float("nan"))
    print(f"[raykd] teacher ready: {remote} ({metric}={score:.2f})", flush=True)
    return str(target)


def prepare_study(cfg: RaykdConfig, mode: str = DISTILL, need_logits: bool | None = None) -> tuple[Study, dict[str, Any]]:
    """Teacher, features and (cached mode) teacher logits; returns the Study and what was done.
    ``need_logits``: prepare the teacher's logits (default: when this config distils from them;
    a search passes True when any point of its space does). With a cloud storage_path, what was
    built or reused is published there (once) and the Study names it by URI."""
    task = tasks.get(cfg.task)
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
        root = teacher_cache.prepared_root(task, cfg.data, tokenizer, place.local)
        remote = place.shared(str(root))
        study_store.pull_prepared(remote, root)
    prepared, built = teacher_cache.prepare_features(task, cfg.data, tokenizer, place.local)
    info = {"features_built": built, "teacher_logits_computed": False, "prepared": str(prepared.root)}
    if remote:
        study_store.publish_prepared(prepared.root, remote)
        info["published"] = remote
    if need_logits is None:
        need_logits = cfg.distill.alpha_ce > 0
    if mode == DISTILL and cfg.distill.teacher_mode == "cached" and need_logits:
        compute = _remote_compute(place.shared(str(prepared.root)), place.shared(teacher), cfg)
        prepared, computed = teacher_cache.prepare_teacher_logits(prepared, teacher, compute=compute)
        info["teacher_logits_computed"] = computed
        if remote:
            study_store.publish_prepared(prepared.root, remote)
    elif mode == DISTILL and cfg.distill.teacher_mode == "online":
        # An online teacher is checked too, on a sample, before the trials run it.
        teacher_cache.check_online_teacher(prepared, teacher)
    study = Study(place.shared(str(prepared.root)), prepared.teacher_file, place.shared(teacher),
                  place.shared(tokenizer))
    return study, info


def _teacher_logits_task(teacher: str, prepared: str, device: str = "cuda") -> np.ndarray:
    """On the node Ray picked (a GPU node, or one that runs trial workers): fetch the teacher and
    the training features there, run the teacher."""
    local = Study(prepared, None, teacher, teacher).on_this_node(items=("train",))
    return teacher_cache.compute_teacher_logits(local.teacher, local.prepared, 256 if device == "cuda" else 64, device)


def _remote_compute(prepared: str, teacher: str, cfg: RaykdConfig | None = None):
    """How the teacher's logits are computed, said in one console line when they are. A Ray task
    with a GPU whenever the cluster can ever have one (an autoscaler at its largest included: the
    queued task is what makes it add a GPU node); on a CPU only when it never can. A CPU task
    asks for what one trial worker asks for (``scaling.cpus_per_worker`` and its
    ``resources_per_worker``) when those name custom resources: they mark the nodes trial
    workers run on, which the head may not be (and an autoscaler adds such a node for it); without
    them, in this process. The task gets the study's shared names (URIs when it is published),
    not the driver's paths."""
    if not ray.is_initialized():
        return None
    from raykd.training import trainer as train  # Ray Train: only once Ray is up

    largest = train.cluster_at_largest()
    if largest is None:
        # An autoscaler that does not say how large it grows: a GPU only when trials use one (a
        # GPU task on a cluster that never gets one would wait forever).
        gpu = cfg is not None and cfg.scaling.use_gpu
        why = "the autoscaler does not say whether it can add one, and scaling.use_gpu is false"
    else:
        gpu = largest.get("GPU", 0) >= 1
        why = "the cluster can never have one"
    custom = {k: v for k, v in (cfg.scaling.resources_per_worker if cfg else {}).items() if k != "GPU"}
    options, device = {"num_gpus": 1}, "cuda"
    if gpu:
        line = "on a GPU, as a Ray task (an autoscaling cluster starts a GPU node for it)"
    elif custom:
        options, device = {"num_cpus": cfg.scaling.cpus_per_worker, "resources": custom}, "cpu"
        line = f"on a CPU, as a Ray task on a node with the trial workers' resources {custom} (no GPU: {why})"
    else:
        line = f"on this machine's CPU (no GPU: {why})"

    def compute(teacher_name: str, root: str) -> np.ndarray:
        print(f"[raykd] teacher logits: {line}", flush=True)
        if not gpu and not custom:
            return teacher_cache.compute_teacher_logits(teacher_name, root)
        task = ray.remote(**options)(_teacher_logits_task)
        return ray.get(task.remote(teacher, prepared, device))

    return compute
