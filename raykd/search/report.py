"""What a search prints: Tune's progress table with the columns a user watches, one line per
trial round, and, when it ends, the tables of the summary (all trials, the Pareto front) with the
best trial and what was registered.
"""

from __future__ import annotations

import json
from typing import Any

from ray import tune
from ray.experimental.tqdm_ray import safe_print
from ray.tune.experiment import Trial

from raykd import compat, storage
from raykd.config import COSTS
from raykd.search.plan import Plan


class ProgressTable(tune.CLIReporter):
    """Tune's progress table with what a user watches as columns: the round, the task's scores
    (the objective by its full name, e.g. ``eval_f1`` and EM, or ``eval_accuracy`` and F1), the
    loss, and the searched parameters. Printed when a trial ends (and once at the end, if that
    adds anything), not every few seconds; without the scheduler's brackets and the resource
    lines, which are Ray's internals."""

    def __init__(self, keys: list[str], scores: list[tuple[str, str]]):
        short = [k.rsplit(".", 1)[-1] for k in keys]
        params = {k: (s if short.count(s) == 1 else k) for k, s in zip(keys, short)}
        super().__init__(metric_columns={"round": "round", **dict(scores), "train_loss": "loss"},
                         parameter_columns=params, max_report_frequency=0)
        self._printed_at = 0  # trials ended when the table was last printed

    def should_report(self, trials: list[Trial], done: bool = False) -> bool:
        ended = sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials)
        if ended == self._printed_at:
            return False
        self._printed_at = ended
        return True

    def report(self, trials: list[Trial], done: bool, *sys_info: str) -> None:
        # Dropped: Ray's temporary artifacts folder (the experiment's folder is in the summary) and
        # the "current best trial" by its last round, which is not a trial's score under
        # trial_score: best.
        lines = [line for line in compat.progress_text(self, trials, done).splitlines()
                 if not line.startswith(("Result logdir:", "Current best trial:"))]
        safe_print("\n".join(lines).rstrip("\n") + "\n")


class RoundLines(tune.Callback):
    """One line per trial round, printed by the search's driver as each result arrives. The
    workers' own lines are not shown in a search: Ray forwards them late, and its log
    deduplication merges lines of different trials that differ only in numbers."""

    def __init__(self, rounds: int, scores: list[tuple[str, str]]):
        self.rounds = rounds
        self.scores = scores  # (key, label), the objective first
        self._printed: set[tuple[str, int]] = set()

    def _line(self, trial: Trial, result: dict) -> None:
        metric = self.scores[0][0]
        if metric not in result or (trial.trial_id, result.get("round")) in self._printed:
            return
        self._printed.add((trial.trial_id, result.get("round")))
        shown = " ".join(f"{label}={result.get(key, float('nan')):.2f}" for key, label in self.scores)
        print(f"[raykd] trial {trial.trial_id} round {result.get('round')}/{self.rounds}: "
              f"{shown} loss={result.get('train_loss', float('nan')):.4f}", flush=True)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        self._line(trial, result)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        last = trial.last_result or {}
        self._line(trial, last)
        if self.scores[0][0] in last and not last.get("final", True):
            print(f"[raykd] trial {trial.trial_id} stopped early by ASHA after round {last.get('round')}/{self.rounds}",
                  flush=True)


def format_table(summary: dict[str, Any]) -> str:
    rows = summary["trials"]
    if not rows:
        return "(no trials)"
    keys = [k for k in rows[0] if k not in ("checkpoint_path", "curve", "planned_rounds", "error")]

    def fmt(k, r):
        v = r.get(k)
        if k == "rounds":
            # How much of its schedule a trial ran: "2/6" for one stopped after round 2 of 6.
            return f"{v}/{r.get('planned_rounds')}"
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(k, r) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "  ".join(k.ljust(w) for k, w in zip(keys, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    out += [f"{r['trial_id']} FAILED: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(out)


def format_front(summary: dict[str, Any]) -> str:
    """The Pareto front, best score first: each point's score, other scores and costs."""
    rows = {r["trial_id"]: r for r in summary["trials"]}
    keys = [*summary["scores"], *(k for k, d in summary["objectives"] if d == "min" and k not in summary["scores"])]
    keys += [k for k in COSTS if k not in keys]
    head = ["trial", *keys]
    cells = [[t, *(_cost_cell(k, rows[t].get(k)) for k in keys)] for t in summary["front"]]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    lines = [(f"Pareto front ({' vs '.join(f'{k} {d}' for k, d in summary['objectives'])}): {len(cells)} of "
             f"{len(rows)} trials"), "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def _cost_cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "params":
        return f"{value / 1e6:.1f}M"
    return f"{value:.2f}"


def print_interrupted(summary: dict[str, Any]) -> None:
    print()
    print(format_table(summary))
    unfinished = sum(r["status"] == "UNFINISHED" for r in summary["trials"])
    print(f"\n[raykd] interrupted: {unfinished} trial(s) unfinished; nothing was registered and no "
          "checkpoint was pruned. Continue the search with --resume.")


def print_outcome(summary: dict[str, Any], the_plan: Plan, searched: list[str], registered_name: str) -> None:
    """The trials, the best one (its scores, config and checkpoint), the front, and what was
    registered (``summary["mlflow"]``, when the search was tracked)."""
    print()
    print(format_table(summary))
    best = summary["best"]
    if best:
        shown = " ".join(f"{label}={best[key]:.2f}" for key, label in the_plan.scores if best.get(key) is not None)
        print(f"\nbest trial {best['trial_id']}: {shown} (round {best['score_round']}, its {summary['trial_score']} round)")
        print("best config: " + json.dumps({k: best[k] for k in searched}))
        print(f"best checkpoint: {best['checkpoint_path']}")
    if summary.get("max_latency_ms") is not None and not best:
        print(f"\n[raykd] no trial's student answers within search.max_latency_ms = {summary['max_latency_ms']:g} ms: "
              "there is no best and nothing was registered as within the budget")
    logged = summary.get("mlflow", {})
    if summary.get("front") is not None:
        print("\n" + format_front(summary))
        for f in logged.get("front", []):
            if f.get("registered_model"):
                print(f"registered model: {f['registered_model']} version {f['version']} (trial {f['trial_id']}"
                      + (f", alias {f['alias']}" if f.get("alias") else "") + ")")
            else:
                print(f"logged model: {f['model_uri']} (trial {f['trial_id']})")
    elif logged.get("registered_model"):
        print(f"registered model: {logged['registered_model']} version {logged['version']} ({logged['model_uri']})"
              + (f", alias {logged['alias']}" if logged.get("alias") else ""))
    if logged.get("alias_removed"):
        print(f"[raykd] alias removed: models:/{registered_name}@{logged['alias_removed']} pointed at an earlier "
              "search's student, and no student of this search was registered within the budget")
    print(f"summary: {storage.join(summary['experiment_path'], storage.SUMMARY)}")
