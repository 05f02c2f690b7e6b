"""One number everywhere and a resume that is the same search: ASHA judges a trial's score, a final
round is never stopped, a stopped trial stays stopped across a hard kill, and a resume with other
settings is refused (no Ray started: Tune's schedulers and trial records are plain objects)."""

import dataclasses
import json
import pickle
from pathlib import Path

import pandas as pd
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from raykd.config import RaykdConfig, all_keys, with_values
from raykd.errors import UserError
from raykd.search import plan as planning
from raykd.search import resume, schedulers
from raykd.search import summary as summaries
from raykd.search.schedulers import PerArchitectureScheduler
from raykd.serving.architectures import KeyOf, key_of
from raykd.training.checkpoints import META_FILE

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE
ARCH = KeyOf({})
KEY = key_of({"models.init_from_teacher_layers": [0, 2]})


def trial(trial_id):
    return Trial("raykd_trial", config={"models.init_from_teacher_layers": [0, 2]}, trial_id=trial_id, stub=True)


def asha(tmp_path, rule, name="asha_state.pkl"):
    # Rungs at rounds 2 and 4 (reduction factor 2), as in a search of 4 rounds with grace period 2.
    tmp_path.mkdir(parents=True, exist_ok=True)  # the experiment's folder
    s = schedulers.ResumableASHA(str(tmp_path / name), str(tmp_path / "stopped"), trial_score=rule, time_attr="round",
                             max_t=5, grace_period=2, reduction_factor=2)
    s.set_search_properties("eval_f1", "max")
    return s


def per_architecture(tmp_path, rule):
    s = PerArchitectureScheduler(ARCH, lambda key: asha(tmp_path, rule), [KEY])
    s.set_search_properties("eval_f1", "max")
    return s


def play(scheduler, events):
    """Feed (trial, round, f1) results in order (adding each trial first); the decisions."""
    added, out = set(), []
    for t, r, f1 in events:
        if t.trial_id not in added:
            scheduler.on_trial_add(None, t)
            added.add(t.trial_id)
        out.append(scheduler.on_trial_result(None, t, {"round": r, "eval_f1": f1, "final": r == 4}))
    return out


@pytest.mark.parametrize("make", [asha, per_architecture])
def test_asha_compares_the_trial_score(tmp_path, make):
    """B reports 10 then 45, A reports 50 then 40. At the rung (round 2) A's score is 50 under
    ``best`` (it beats B's 45: A continues) and 40 under ``last`` (A stops)."""
    for rule, decision in (("best", CONTINUE), ("last", STOP)):
        a, b = trial("A"), trial("B")
        decisions = play(make(tmp_path / rule, rule), [(b, 1, 10.0), (b, 2, 45.0), (a, 1, 50.0), (a, 2, 40.0)])
        assert decisions[:3] == [CONTINUE] * 3
        assert decisions[3] == decision, rule


def test_a_final_round_on_a_rung_is_never_stopped(tmp_path):
    """A trial with fewer steps than rounds merges its rounds: its only report is round 4, final,
    on the rung at 4, below the trial there before it. It ran its schedule: never STOPPED; it still
    enters the rung when it completes."""
    s = asha(tmp_path, "best")
    a, b = trial("A"), trial("B")
    assert play(s, [(a, 2, 50.0), (a, 4, 60.0)]) == [CONTINUE, CONTINUE]
    s.on_trial_complete(None, a, {"round": 4, "eval_f1": 60.0, "final": True})
    assert play(s, [(b, 4, 10.0)]) == [CONTINUE]
    s.on_trial_complete(None, b, {"round": 4, "eval_f1": 10.0, "final": True})
    assert not schedulers.all_stopped(str(tmp_path / "stopped"))


def test_a_stopped_trial_stays_stopped_after_a_hard_kill(tmp_path):
    """ASHA stops A at round 2; the search is killed before Tune saves that. The restored scheduler
    (unpickled as it was when the search started) reads its rungs back, stops A at once, and the
    marker tells A's driver not to train (and the summary where A ended)."""
    s = asha(tmp_path, "last")
    at_start = pickle.dumps(s)
    a, b = trial("A"), trial("B")
    assert play(s, [(b, 2, 45.0), (a, 2, 40.0)]) == [CONTINUE, STOP]
    assert schedulers.stopped_at(str(tmp_path / "stopped"), "A") == 2
    assert schedulers.stopped_at(str(tmp_path / "stopped"), "B") is None
    restored = pickle.loads(at_start)
    assert restored.on_trial_result(None, a, {"round": 3, "eval_f1": 99.0}) == STOP
    assert schedulers.all_stopped(str(tmp_path / "stopped")) == {"A": 2}


def test_rounds_past_the_stop_enter_neither_the_summary_nor_the_checkpoints(tmp_path):
    """A's Train run holds rounds 1-3 (round 3 reported while Tune was stopping it at round 2):
    the summary ends A at round 2, STOPPED, and pruning removes round 3's checkpoint."""
    runs = tmp_path / "train_runs"
    for r, f1 in ((1, 10.0), (2, 20.0), (3, 90.0)):
        ckpt = runs / "A" / f"checkpoint_{r:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / META_FILE).write_text(json.dumps({"round": r, "eval_f1": f1}))

    class Result:
        config, error, path, metrics = None, None, str(tmp_path / "A"), None
        metrics_dataframe = pd.DataFrame([{"round": r, "eval_f1": f, "final": False,
                                           "checkpoint_path": str(runs / "A" / f"checkpoint_{r:06d}")}
                                          for r, f in ((1, 10.0), (2, 20.0), (3, 90.0))])

    the_plan = planning.Plan(4, 2, "best", "eval_f1", [("eval_f1", "F1")])
    summary = summaries.summarize([Result()], [], the_plan, {"A": "TERMINATED"}, stopped={"A": 2})
    row = summary["trials"][0]
    assert (row["status"], row["rounds"], row["eval_f1"], row["score_round"]) == ("STOPPED", 2, 20.0, 2)
    summaries.prune_checkpoints(str(runs), keep=5, by="eval_f1", stopped={"A": 2})
    assert sorted(p.name for p in (runs / "A").iterdir()) == ["checkpoint_000001", "checkpoint_000002"]


def _cfg(tmp_path, **values):
    cfg = RaykdConfig.from_dict({"search": {"name": "s", "storage_path": str(tmp_path)},
                                 "space": {"optim.learning_rate": {"type": "choice", "values": [1e-4, 3e-4]}}},
                                source="space.yaml")
    return with_values(cfg, values) if values else cfg


PLAN = {"rounds": 4, "grace_period": 2}
STUDY = {"features": "abc", "teacher": "/t", "teacher_logits": "teacher-1.npy"}


@pytest.mark.parametrize("key, value", [
    ("optim.num_epochs", 3.0), ("distill.temperature", 4.0), ("distill.alpha_ce", 0.9),
    ("models.teacher", "/other"), ("data.train_file", "/other.json"), ("optim.batch_size", 8),
    ("optim.weight_decay", 0.1), ("search.num_samples", 20), ("search.trial_score", "last"),
])
def test_a_resume_with_another_setting_is_refused_naming_it(tmp_path, key, value):
    resume.record(_cfg(tmp_path), PLAN, STUDY)
    with pytest.raises(UserError) as err:
        resume.check(_cfg(tmp_path, **{key: value}))  # before Ray: the config alone
    msg = str(err.value)
    assert "\n" not in msg and key in msg and json.dumps(value) in msg, msg
    old = resume.fingerprint(_cfg(tmp_path))[key]
    assert f"started with {json.dumps(old)}" in msg


def test_a_resume_with_another_study_or_plan_is_refused(tmp_path):
    resume.record(_cfg(tmp_path), PLAN, STUDY)
    resume.check(_cfg(tmp_path))  # early: plan and study are not known yet
    resume.check(_cfg(tmp_path), PLAN, STUDY)
    for plan, study, key in ((PLAN, {**STUDY, "teacher_logits": "teacher-2.npy"}, "study.teacher_logits"),
                             ({**PLAN, "rounds": 5}, STUDY, "plan.rounds")):
        with pytest.raises(UserError, match=key):
            resume.check(_cfg(tmp_path), plan, study)
    # The space is compared once the plan is known (a latency budget narrows it before).
    narrowed = _cfg(tmp_path, **{"tracking.tracking_uri": "http://127.0.0.1:5000"})
    narrowed = dataclasses.replace(narrowed, space={"optim.learning_rate": {"type": "choice", "values": [1e-4]}})
    resume.check(narrowed)
    with pytest.raises(UserError, match="space"):
        resume.check(narrowed, PLAN, STUDY)


def test_what_a_resume_may_change(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resume.record(_cfg(tmp_path), PLAN, STUDY)
    resume.check(_cfg(tmp_path, **{"tracking.tracking_uri": "http://127.0.0.1:5000", "scaling.max_failures": 2,
                                   "tracking.register_best": False,
                                   "scaling.resources_per_worker": {"node_a": 1}}), PLAN, STUDY)
    # A local path counts as its absolute form.
    data = tmp_path / "train.json"
    data.write_text("{}")
    resume.record(_cfg(tmp_path, **{"data.train_file": str(data)}), PLAN, STUDY)
    resume.check(_cfg(tmp_path, **{"data.train_file": "./train.json"}), PLAN, STUDY)
    # Every key that may change is a setting, and none is in the fingerprint.
    fp = resume.fingerprint(_cfg(tmp_path))
    assert set(resume.MAY_CHANGE) <= set(all_keys()) and not set(resume.MAY_CHANGE) & set(fp)


def test_a_search_without_a_record_is_not_resumed_on_a_guess(tmp_path):
    with pytest.raises(UserError, match="no readable record"):
        resume.check(_cfg(tmp_path))
    # A search an earlier raykd saved (format 2: its searcher and ASHA state in Ray's own layout)
    # is refused the same way, not restored into the new classes.
    cfg = _cfg(tmp_path)
    resume.record(cfg, PLAN, STUDY)
    path = Path(resume._record_file(cfg))
    path.write_text(path.read_text().replace(f'"format": {resume.FORMAT}', '"format": 2'))
    with pytest.raises(UserError, match="an older raykd started it"):
        resume.check(cfg, PLAN, STUDY)


def test_a_space_whose_accumulation_outlasts_an_epoch_is_refused_before_any_trial():
    """160 features in batches of 16 give one worker 10 batches an epoch: a searched
    grad_accum_steps of 11 would take one step per epoch over fewer micro-batches than asked."""
    from raykd import spaces

    cfg = RaykdConfig.from_dict({"optim": {"batch_size": 16}, "search": {"rounds": 2}}, source="s.yaml")
    ok = spaces.parse({"optim.grad_accum_steps": {"type": "choice", "values": [1, 10]}}, "s.yaml")
    planning.plan(cfg, ok, 160)
    bad = spaces.parse({"optim.grad_accum_steps": {"type": "choice", "values": [1, 11]}}, "s.yaml")
    with pytest.raises(UserError, match=r"optim.grad_accum_steps \(11\)"):
        planning.plan(cfg, bad, 160)


def test_rounds_that_never_reached_tune_meet_their_rungs_on_resume(tmp_path):
    """B passes rung 2, then the search is interrupted while B's Train run goes on to round 4
    (30: below A's 60 at rung 4) and is resumed from there. B's first result after the resume is
    round 5 (70); its history holds rounds 3 and 4. ASHA judges round 4 first and stops B there,
    as the uninterrupted search would have, and marks round 4 as B's last."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    s = schedulers.ResumableASHA(str(tmp_path / "asha.pkl"), str(tmp_path / "stopped"), trial_score="last",
                             time_attr="round", max_t=9, grace_period=2, reduction_factor=2)
    s.set_search_properties("eval_f1", "max")
    a, b = trial("A"), trial("B")
    for t in (a, b):
        s.on_trial_add(None, t)
    for t, r, f1 in ((a, 2, 50.0), (a, 4, 60.0), (b, 2, 55.0)):
        assert s.on_trial_result(None, t, {"round": r, "eval_f1": f1}) == CONTINUE
    history = json.dumps([[1, 20.0], [2, 55.0], [3, 40.0], [4, 30.0], [5, 70.0]])
    restored = pickle.loads(pickle.dumps(s))
    assert restored.set_search_properties("eval_f1", "max")  # Tune hands a resumed scheduler its metric again
    assert restored.on_trial_result(None, b, {"round": 5, "eval_f1": 70.0, "round_scores": history}) == STOP
    assert schedulers.stopped_at(str(tmp_path / "stopped"), "B") == 4
    assert schedulers.unseen_rounds({"round_scores": history}, 2, 5) == [(3, 40.0), (4, 30.0)]
    assert schedulers.unseen_rounds({}, 2, 5) == []
    # Tune ends B with the result it stopped on, a later round than its stop: B enters no rung
    # past 4 (with the bug, rung 8 held B's 90 and cut C below).
    restored.on_trial_complete(None, b, {"round": 9, "eval_f1": 90.0, "round_scores": history})
    c = trial("C")
    restored.on_trial_add(None, c)
    assert restored.on_trial_result(None, c, {"round": 8, "eval_f1": 65.0}) == CONTINUE


def _searcher(tmp_path, cls=None, **kwargs):
    import optuna

    from raykd import spaces
    from raykd.search import searchers

    params = spaces.parse({"distill.temperature": {"type": "uniform", "low": 1, "high": 4}})
    cls = cls or searchers.TruthfulOptunaSearch
    metric = kwargs.pop("metric", "eval_f1")
    return cls(space=spaces.define_by_run(params), metric=metric, mode=["max", "min"] if isinstance(metric, list)
               else "max", sampler=optuna.samplers.RandomSampler(seed=0), stopped_uri=str(tmp_path / "stopped"),
               **kwargs)


def test_optuna_hears_the_rounds_tune_never_saw_up_to_the_stop(tmp_path):
    """After a resume, B's first result is round 5 and its history holds rounds 3 and 4; ASHA
    stopped B at round 4. Optuna gets rounds 3 and 4 (not 5), and B is PRUNED with its score."""
    s = _searcher(tmp_path, trial_score="last")
    s.suggest("B")
    for r, f1 in ((1, 20.0), (2, 55.0)):
        s.on_trial_result("B", {"round": r, "eval_f1": f1, "final": False})
    schedulers.write_stopped(str(tmp_path / "stopped"), "B", 4)
    history = json.dumps([[1, 20.0], [2, 55.0], [3, 40.0], [4, 30.0], [5, 70.0]])
    s.on_trial_complete("B", {"round": 5, "eval_f1": 70.0, "final": False, "round_scores": history})
    done = s.study.trials[-1]
    assert done.state.name == "PRUNED" and done.intermediate_values == {1: 20.0, 2: 55.0, 3: 40.0, 4: 30.0}
    assert done.value == 30.0


def test_the_searcher_state_survives_save_and_restore(tmp_path):
    s = _searcher(tmp_path, storage=None)
    config = s.suggest("A")
    assert set(config) == {"distill.temperature"}
    s.on_trial_result("A", {"round": 1, "eval_f1": 10.0, "final": False})
    s.save(str(tmp_path / "searcher.pkl"))
    again = _searcher(tmp_path)
    again.restore(str(tmp_path / "searcher.pkl"))
    assert again.suggest("A") == config  # the same Optuna trial
    again.on_trial_complete("A", {"round": 2, "eval_f1": 30.0, "final": True})
    assert [(t.state.name, t.value) for t in again.study.trials] == [("COMPLETE", 30.0)]


def test_multi_objective_tpe_proposes_after_a_complete_and_a_pruned_trial(tmp_path):
    """What a Pareto search's sampler meets after its first trials: one COMPLETE with both
    objectives, one PRUNED without values. MOTPE (past its start-up trial) proposes the next."""
    import optuna

    from raykd import spaces
    from raykd.search import searchers

    params = spaces.parse({"distill.temperature": {"type": "uniform", "low": 1, "high": 4}})
    s = searchers.ParetoOptunaSearch(space=spaces.define_by_run(params), metric=["eval_f1", "latency_ms"],
                                     mode=["max", "min"], score="eval_f1", stopped_uri=str(tmp_path / "stopped"),
                                     sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=1))
    for tid, final in (("A", True), ("B", False)):
        s.suggest(tid)
        s.on_trial_result(tid, {"round": 1, "eval_f1": 50.0, "latency_ms": 3.0, "final": False})
        s.on_trial_complete(tid, {"round": 2, "eval_f1": 40.0, "latency_ms": 3.0, "final": final})
    config = s.suggest("C")
    assert 1 <= config["distill.temperature"] <= 4
    assert [t.state.name for t in s.study.trials] == ["COMPLETE", "PRUNED", "RUNNING"]


def test_a_multi_objective_trial_is_told_once_complete_or_pruned(tmp_path):
    from raykd.search import searchers

    s = _searcher(tmp_path, cls=searchers.ParetoOptunaSearch, metric=["eval_f1", "latency_ms"], score="eval_f1")
    for tid, final in (("A", True), ("B", False)):
        s.suggest(tid)
        s.on_trial_result(tid, {"round": 1, "eval_f1": 50.0, "latency_ms": 3.0, "final": False})
        s.on_trial_complete(tid, {"round": 2, "eval_f1": 40.0, "latency_ms": 3.0, "final": final})
    s.suggest("C")
    s.on_trial_complete("C", error=True)
    # A final round whose cost is NaN (a failed measurement) fails the trial; Optuna would refuse
    # it as COMPLETE and end the search.
    s.suggest("D")
    s.on_trial_complete("D", {"round": 2, "eval_f1": 40.0, "latency_ms": float("nan"), "final": True})
    assert [(t.state.name, t.values) for t in s.study.trials] == [
        ("COMPLETE", [50.0, 3.0]), ("PRUNED", None), ("FAIL", None), ("FAIL", None)]
