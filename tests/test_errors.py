"""A failed trial's reason is one line, found inside whatever wraps it."""

from raykd import errors


def test_reason_finds_the_trial_failure_inside_a_wrapped_traceback():
    wrapped = ("ray.exceptions.RayTaskError(TrialFailed): ray::_trial_driver()\n"
               "  File \"x.py\", line 3, in f\n    raise TrialFailed(...)\n"
               "raykd.errors.TrialFailed: non-finite loss (nan) at step 2 of 10: learning_rate 1e+30\n")
    assert errors.reason(wrapped) == "non-finite loss (nan) at step 2 of 10: learning_rate 1e+30"
    assert errors.reason(errors.TrialFailed("x")) == "x"


def test_reason_of_another_error_is_its_last_line():
    assert errors.reason(RuntimeError("Traceback\n  ...\nOSError: disk full\n")) == "OSError: disk full"
    assert errors.reason(None) == ""
    assert len(errors.reason("y" * 1000)) == 300
