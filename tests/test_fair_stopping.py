"""The fairness rule of early stopping across architectures, with fake trials (no Ray started)."""

import pickle

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from raykd.search.schedulers import PerArchitectureScheduler
from raykd.serving.architectures import KeyOf, key_of

ARCH = KeyOf({})
SMALL = key_of({"models.init_from_teacher_layers": [0, 5]})
LARGE = key_of({"models.init_from_teacher_layers": [0, 1, 2, 3, 4, 5]})
STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


class FakeTrial:
    def __init__(self, trial_id, layers, status=Trial.PENDING):
        self.trial_id = trial_id
        self.config = {"models.init_from_teacher_layers": layers, "optim.learning_rate": 1e-4}
        self.status = status


class FakeController:
    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials


def asha():
    return ASHAScheduler(time_attr="round", max_t=10, grace_period=1, reduction_factor=2)


def fair():
    s = PerArchitectureScheduler(ARCH, lambda key: asha(), [SMALL, LARGE])
    s.set_search_properties("eval_f1", "max")
    return s


def rnd(r, f1):
    return {"round": r, "eval_f1": f1}


def play(scheduler, events):
    """Feed (trial, round, f1) results in order; the decisions."""
    out = []
    for trial, r, f1 in events:
        out.append(scheduler.on_trial_result(None, trial, rnd(r, f1)))
    return out


def trials():
    return (FakeTrial("L1", [0, 1, 2, 3, 4, 5]), FakeTrial("L2", [0, 1, 2, 3, 4, 5]),
            FakeTrial("S1", [0, 5]), FakeTrial("S2", [0, 5]))


def test_a_small_student_is_not_stopped_because_a_larger_one_scores_higher():
    L1, L2, S1, S2 = trials()
    events = [(L1, 1, 80.0), (L2, 1, 78.0), (S1, 1, 50.0), (S2, 1, 40.0)]

    # One ASHA over all sizes (what the single-metric scheduler does): the first small student,
    # far below the large ones at round 1, is stopped.
    plain = asha()
    plain.set_search_properties("eval_f1", "max")
    for t in (L1, L2, S1, S2):
        plain.on_trial_add(None, t)
    assert play(plain, events) == [CONTINUE, STOP, STOP, STOP]

    # Per architecture: S1 is compared only with small students (none yet) and continues; S2 is
    # stopped by S1, a student of its own size; L2 by L1 as before.
    s = fair()
    for t in (L1, L2, S1, S2):
        s.on_trial_add(None, t)
    assert play(s, events) == [CONTINUE, STOP, CONTINUE, STOP]
    assert s.key(S1) == SMALL and s.key(L1) == LARGE


def test_rungs_are_per_architecture_at_later_rounds_too():
    L1, L2, S1, S2 = trials()
    s = fair()
    for t in (L1, L2, S1, S2):
        s.on_trial_add(None, t)
    # Round 1: all first-comers of their size, or better than their peers: all continue.
    assert play(s, [(L1, 1, 60.0), (S1, 1, 40.0), (S2, 1, 45.0), (L2, 1, 70.0)]) == [CONTINUE] * 4
    # Round 2: S1 (42) is below S2's 48 at this rung, its own size's cutoff; not compared with L.
    assert play(s, [(L1, 2, 75.0), (S2, 2, 48.0), (S1, 2, 42.0)]) == [CONTINUE, CONTINUE, STOP]
    # Rounds between rungs never stop.
    assert play(s, [(S2, 3, 10.0)]) == [CONTINUE]


def test_sub_schedulers_get_tunes_metric_and_mode():
    s = PerArchitectureScheduler(ARCH, lambda key: asha(), [SMALL, LARGE])
    L1 = trials()[0]
    with pytest.raises(ValueError, match="metric"):
        s.on_trial_add(None, L1)  # ASHA without a metric refuses, as it does on its own
    assert s.set_search_properties("eval_f1", "max")
    assert s.metric == "eval_f1"
    for sub in s.schedulers.values():
        assert sub._metric == "eval_f1" and sub._mode == "max"


def test_an_undeclared_architecture_is_refused():
    s = fair()
    with pytest.raises(ValueError, match="not among the search's architectures"):
        s.on_trial_add(None, FakeTrial("X", [0, 2, 4]))
    with pytest.raises(ValueError, match="architecture keys"):
        PerArchitectureScheduler(ARCH, lambda key: asha(), [])


def test_complete_and_remove_reach_the_right_scheduler():
    L1, L2, S1, S2 = trials()
    s = fair()
    for t in (L1, L2, S1, S2):
        s.on_trial_add(None, t)
    s.on_trial_complete(None, S1, rnd(10, 55.0))
    s.on_trial_remove(None, S2)
    small = s.schedulers[SMALL]
    assert "S1" not in small._trial_info and "S2" not in small._trial_info
    assert set(s.schedulers[LARGE]._trial_info) == {"L1", "L2"}


def test_fifo_choice_of_the_next_trial():
    a, b, c = FakeTrial("a", [0, 5], Trial.RUNNING), FakeTrial("b", [0, 5]), FakeTrial("c", [0, 5], Trial.PAUSED)
    s = fair()
    assert s.choose_trial_to_run(FakeController([a, b, c])) is b
    assert s.choose_trial_to_run(FakeController([a, c])) is c
    assert s.choose_trial_to_run(FakeController([a])) is None


def test_state_survives_pickling_as_tune_saves_it():
    L1, L2, S1, S2 = trials()
    s = fair()
    for t in (L1, L2, S1, S2):
        s.on_trial_add(None, t)
    play(s, [(S1, 1, 50.0), (L1, 1, 80.0)])
    restored = pickle.loads(pickle.dumps(s))
    # S2 is compared with S1's recorded 50 after the round trip.
    assert play(restored, [(S2, 1, 40.0), (L2, 1, 90.0)]) == [STOP, CONTINUE]
    assert "[" in restored.debug_string()


def test_architecture_key_reads_dotted_keys_and_canonicalises():
    arch = KeyOf({"models.student": "base"})
    a = arch({"models.init_from_teacher_layers": [0, 2], "models.student": "m", "optim.learning_rate": 1})
    b = arch({"models.student": "m", "models.init_from_teacher_layers": [0, 2], "optim.learning_rate": 2})
    assert a == b == key_of({"models.student": "m", "models.init_from_teacher_layers": [0, 2]})
    assert arch({"models.student": "m"}) != a  # missing layers: None, another architecture
    assert arch({"models.init_from_teacher_layers": [0, 2]}) != a  # the base's student, another one
