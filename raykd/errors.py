"""The base of every error that is the user's input (config, space, model choice, paths): the CLI
prints these as one line and exits with status 2 instead of a traceback."""


class UserError(ValueError):
    """Bad input from the user; the message says what and where."""


class TrialFailed(RuntimeError):
    """A trial that cannot go on (non-finite loss, its workers failed past ``scaling.max_failures``);
    the message is the one line the summary and the trial's MLflow run show."""


def reason(error: BaseException | str | None) -> str:
    """One line saying why a trial failed, out of whatever wraps it by the time it reaches the
    driver (Tune's and Train's errors carry the worker's traceback in their text)."""
    if error is None:
        return ""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for marker in (f"{TrialFailed.__name__}: ", f"{__name__}.{TrialFailed.__name__}: "):
        for ln in reversed(lines):
            if marker in ln:
                return ln.split(marker, 1)[1][:300]
    return (lines[-1] if lines else type(error).__name__)[:300]
