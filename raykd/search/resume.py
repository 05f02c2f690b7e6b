"""What a resumed search must share with the search it continues, and the check that it does.

A resumed search restores its searcher, scheduler and Tune settings as they were pickled when it
started, while every trial (finished, resumed or new) builds its run from the config of the
command at hand. Any setting that changes what a trial computes and differs between the two would
be half applied: finished trials ran the old settings, resumed and new ones the new settings, and
the summary would rank two experiments as one. So the search records, when it starts, every such
setting (the resolved config, flat by dotted key), what it planned (rounds, first rung, measured
costs: :func:`plan_record`) and what its study is (features, teacher, teacher logits:
:func:`study_record`); ``--resume`` compares and refuses the first difference, naming the key with
its old and new value. This module is the one place that decides what a resume compares.

What may change on resume is listed in :data:`MAY_CHANGE`: settings that neither change what a
trial computes nor are restored with the experiment (where the tracking server is, what is
registered after the search, where workers are placed). Everything else is refused, settings
that a resume would apply only in part included (the number of trials, checkpoints kept, the
MLflow experiment) and ``scaling.cpus_per_worker`` (it sets the workers' torch threads). Nothing else, ``search.num_samples``
included: Tune restores its trial count with the experiment, so a new value would silently not
apply.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from raykd import storage
from raykd.config import RaykdConfig, flat_settings
from raykd.errors import UserError

if TYPE_CHECKING:
    from raykd.search.plan import Plan
    from raykd.study.runspec import Study

RECORD_FILE = "raykd_resume.json"
# The record's layout, and with it the saved search state's: a search whose record says another
# (or has none) is refused. 3: the Optuna searchers and ASHA save their own state through Tune's
# public save/restore hooks; a search saved by an earlier raykd cannot be restored from it.
FORMAT = 3

# Keys a resume may change, and why each leaves what a trial computes as it was.
MAY_CHANGE = {
    "tracking.tracking_uri": "where runs are logged, not what they hold",
    "tracking.register_best": "what happens after the search",
    "tracking.registered_model_name": "what happens after the search",
    "scaling.resources_per_worker": "how workers are placed",
    "scaling.max_failures": "how often a failed worker group restarts from its checkpoint",
}


# Settings that name files or folders: a local one counts as its absolute form (``./data`` and
# the same folder spelled in full are one file).
PATHS = {"data.train_file", "data.validation_file", "data.cache_dir", "models.teacher", "models.student",
         "models.init_from", "models.teacher_finetune.base", "search.storage_path"}


def _plain(value: Any) -> Any:
    """JSON's view of a value, so that a tuple and a list, or 2 and 2.0, compare as a reader expects."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _path(key: str, value: Any) -> Any:
    if key in PATHS and isinstance(value, str) and not storage.is_remote(value) and os.path.exists(value):
        return os.path.abspath(value)
    return value


def fingerprint(cfg: RaykdConfig, plan: dict[str, Any] | None = None,
                study: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that changes what a trial computes, by dotted key: the resolved config less
    :data:`MAY_CHANGE`, plus ``plan.*`` and ``study.*`` when given."""
    out = {k: _plain(_path(k, v)) for k, v in flat_settings(cfg.to_dict()).items() if k not in MAY_CHANGE}
    out.update({f"plan.{k}": _plain(v) for k, v in (plan or {}).items()})
    out.update({f"study.{k}": _plain(v) for k, v in (study or {}).items()})
    return out


def plan_record(the_plan: Plan) -> dict[str, Any]:
    """What a search planned, as a resume compares it."""
    return {"rounds": the_plan.rounds, "grace_period": the_plan.grace, "trial_score": the_plan.trial_score,
            "metric": the_plan.metric, "objectives": [list(o) for o in the_plan.objectives],
            "max_latency_ms": the_plan.max_latency_ms,
            # What each architecture was measured to cost: re-measured differently (another
            # latency: setting, machine), finished and resumed trials would not compare.
            "costs": the_plan.costs or None}


def study_record(study: Study) -> dict[str, Any]:
    """What a search's study is, as a resume compares it: the features (their folder is named by
    their fingerprint), the teacher and its logits (named by the teacher's fingerprint). Without
    cached logits (an online teacher) a local teacher folder is identified by its files."""
    out = {"features": storage.join(study.prepared).rsplit("/", 1)[-1], "teacher": study.teacher,
           "teacher_logits": study.teacher_file}
    if study.teacher and not study.teacher_file and not storage.is_remote(study.teacher):
        from raykd.study import cache as teacher_cache  # torch: only when a search has started

        out["teacher_files"] = teacher_cache.model_identity(study.teacher)
    return out


def _record_file(cfg: RaykdConfig) -> str:
    return storage.join(storage.ExperimentPaths.of(cfg).experiment, RECORD_FILE)


def record(cfg: RaykdConfig, plan: dict[str, Any], study: dict[str, Any]) -> None:
    """Written when a search starts (not on resume)."""
    storage.write_text(_record_file(cfg), json.dumps({"format": FORMAT, "settings": fingerprint(cfg, plan, study)},
                                              indent=1, sort_keys=True))


def check(cfg: RaykdConfig, plan: dict[str, Any] | None = None, study: dict[str, Any] | None = None) -> None:
    """Refuses a resume whose settings differ from the recorded ones. Called twice: with the
    config alone before Ray starts (a changed teacher or data file is refused before anything is
    prepared), and with the plan and the study once they are known. The first call leaves out the
    space too: a latency budget narrows it after the costs are measured."""
    where = cfg.source or "config"
    try:
        saved = json.loads(storage.read_text(_record_file(cfg)) or "null")
    except ValueError:
        saved = None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise UserError(f"{where}: --resume: {cfg.search.name} has no readable record of the settings it started "
                        "with, so a resume cannot be checked to run the same search (its trials never started, or "
                        "an older raykd started it); pass --overwrite to start it afresh, or use a new search.name")
    old, now = saved["settings"], fingerprint(cfg, plan, study)
    # Plan and study keys are compared once they are known (the second call).
    early = plan is None and study is None
    keys = [k for k in sorted(set(old) | set(now))
            if not (early and (k == "space" or k.startswith(("plan.", "study."))))]
    changed = [k for k in keys if old.get(k, "<unset>") != now.get(k, "<unset>")]
    if changed:
        first = changed[0]
        more = f" (and {len(changed) - 1} more: {', '.join(changed[1:])})" if len(changed) > 1 else ""
        raise UserError(f"{where}: --resume with {first} = {json.dumps(now.get(first))}, but the search started "
                        f"with {json.dumps(old.get(first))}{more}; a resume runs the same search: resume with the "
                        "original settings, or start a new search.name")
