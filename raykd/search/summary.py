"""What a search found, read back after Tune ends: each trial's score (its best or last round,
:func:`trial_score`), its whole history (rounds from before a resume included), the summary of all
trials with the best one (and the Pareto front), and pruning the checkpoints no one needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from raykd import errors, storage
from raykd.config import COSTS
from raykd.objective import MODE
from raykd.search.plan import Plan
from raykd.serving import pareto
from raykd.training.checkpoints import META_FILE


def prune_checkpoints(runs_path: str, keep: int, by: str, stopped: dict[str, int] | None = None) -> None:
    """Leave each trial its best ``keep`` checkpoints by ``by`` (the objective, or ``round``: the latest). Train keeps the latest one too
    (to resume a run); once the search is over no trial resumes, so that one goes unless it is
    among the best. A trial ASHA stopped keeps none past the round it was stopped at
    (``stopped``). Works on local paths and on cloud URIs (pyarrow filesystems)."""
    fs, root = storage.filesystem(runs_path)
    info = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for run_dir in (i.path for i in info if i.type == pafs.FileType.Directory):
        ckpts = [i.path for i in fs.get_file_info(pafs.FileSelector(run_dir))
                 if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]
        last = (stopped or {}).get(run_dir.rstrip("/").rsplit("/", 1)[-1])
        scored = []
        for path in ckpts:
            try:
                with fs.open_input_stream(f"{path}/{META_FILE}") as f:
                    meta = json.loads(f.read())
                if last is not None and int(meta["round"]) > last:
                    fs.delete_dir(path)
                    continue
                scored.append((meta[by], path))
            except (FileNotFoundError, OSError, KeyError, ValueError):
                scored.append((float("-inf"), path))
        scored.sort(reverse=MODE == "max" or by == "round")
        for _, path in scored[keep:]:
            fs.delete_dir(path)


def trial_score(df, rule: str, metric: str):
    """The row of a trial's results its score comes from: its best round by ``metric`` (among equal
    scores the latest, as in Train's checkpoint manager and in prune_checkpoints, so the row's
    checkpoint is the one that was kept), or its last round."""
    if rule == "last":
        return df.iloc[-1]
    col = df[metric][::-1]
    return df.loc[col.idxmax() if MODE == "max" else col.idxmin()]


def _with_earlier_rounds(df, runs_path: str | None, trial_id: str):
    """A trial's rounds, all of them. Tune restarts the function of a trial resumed by --resume
    with a fresh result file (Train, not Tune, holds the checkpoint), so Tune's results of that
    trial start at the round it resumed from, or are empty when it had reported its last round
    before the interruption. The rounds before are in the history every checkpoint of the trial's
    Train run carries (its latest checkpoint is still there: pruning comes after the summary)."""
    import pandas as pd

    first = int(df["round"].iloc[0]) if df is not None and not df.empty and "round" in df else None
    if runs_path is None or first == 1:
        return df
    fs, root = storage.filesystem(f"{runs_path}/{trial_id}")
    metas: dict[int, tuple[dict, str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            try:
                with fs.open_input_stream(f"{info.path}/{META_FILE}") as f:
                    meta = json.loads(f.read())
                metas[int(meta["round"])] = (meta, info.path)
            except (FileNotFoundError, OSError, KeyError, ValueError):
                continue
    if not metas:
        return df
    history = metas[max(metas)][0].get("history", [])
    earlier = [h for h in history if first is None or int(h["round"]) < first]
    if not earlier:
        return df
    before = pd.DataFrame([{**h, "checkpoint_path": metas.get(int(h["round"]), (None, None))[1]} for h in earlier])
    return before if first is None else pd.concat([before, df], ignore_index=True)


def summarize(grid, keys: list[str], the_plan: Plan, statuses: dict[str, str] | None = None,
              runs_path: str | None = None, stopped: dict[str, int] | None = None) -> dict[str, Any]:
    """One row per trial (hyperparameters, its score and the round it comes from, rounds run of
    those planned, stopped early), and the best trial: the best score over all trials, with the
    checkpoint of the round it comes from. Every score the task reports is a column, each taken
    from the trial's score round."""
    metric = the_plan.metric
    score_keys = [k for k, _ in the_plan.scores]
    rows = []
    for result in grid:
        config = result.config or {}
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        df = _with_earlier_rounds(result.metrics_dataframe, runs_path, trial_id)
        if df is not None and not df.empty and trial_id in (stopped or {}) and "round" in df:
            # Rounds past the one ASHA stopped the trial at (a hard kill's leftovers) do not count.
            df = df[df["round"] <= stopped[trial_id]].reset_index(drop=True)
        row: dict[str, Any] = {"trial_id": trial_id, **{k: config.get(k) for k in keys}}
        if result.error:
            row["error"] = errors.reason(result.error)
        # Not TERMINATED and not errored: the search was interrupted while this trial ran or waited.
        unfinished = (statuses or {}).get(trial_id, "TERMINATED") not in ("TERMINATED", "ERROR")
        if df is None or df.empty or metric not in df:
            row.update({"status": "FAILED" if result.error else ("UNFINISHED" if unfinished else "NO RESULT"),
                        **dict.fromkeys(score_keys), "rounds": 0, "planned_rounds": the_plan.rounds,
                        "stopped_early": False,
                        "checkpoint_path": None})
            rows.append(row)
            continue
        best = trial_score(df, the_plan.trial_score, metric)
        last = df.iloc[-1]
        final = bool(last.get("final", True))
        row.update({
            "status": "FAILED" if result.error else (
                "UNFINISHED" if unfinished else "STOPPED" if not final else "COMPLETED"),
            **{k: float(best[k]) if k in best else None for k in score_keys},
            "score_round": int(best["round"]),
            "rounds": int(df["round"].max()),
            "planned_rounds": the_plan.rounds,
            "stopped_early": not final and not result.error and not unfinished,
            "checkpoint_path": best.get("checkpoint_path"),
            "curve": [[int(r), float(f)] for r, f in zip(df["round"], df[metric])],
            # The architecture's serving costs (the same in every round).
            **{k: float(last[k]) for k in COSTS if k in last and last[k] == last[k]},
        })
        rows.append(row)
    out = {"metric": metric, "scores": score_keys, "trial_score": the_plan.trial_score, "rounds": the_plan.rounds,
           "grace_period": the_plan.grace, "trials": rows}
    return {**out, **_front_and_best(rows, the_plan)}


def _front_and_best(rows: list[dict[str, Any]], the_plan: Plan) -> dict[str, Any]:
    """The best trial: the best score over the trials that count; within search.max_latency_ms
    when a budget is set. In a Pareto search also the objectives and the front (trial ids, best
    score first)."""
    metric = the_plan.metric
    # A failed trial's rounds before the failure are real, but its run did not end as configured:
    # the winner comes from trials that ran their schedule (or were stopped by the scheduler).
    scored = [r for r in rows if r[metric] is not None and r["status"] not in ("UNFINISHED", "FAILED")]
    out: dict[str, Any] = {}
    if the_plan.max_latency_ms is not None:
        # The winner answers within the budget: a faster student may score lower than the best
        # (among equal scores, the fastest: the pick is on the F1/latency front).
        out["max_latency_ms"] = the_plan.max_latency_ms
        out["over_budget"] = sorted(r["trial_id"] for r in scored if r["latency_ms"] > the_plan.max_latency_ms)
        out["best"] = pareto.best_under_budget(scored, pareto.Objective(metric, MODE), "latency_ms",
                                               the_plan.max_latency_ms)
    elif the_plan.pareto:
        # The best score; among equal scores the cheapest, in the objectives' order: on the front.
        costs = [k for k, d in the_plan.objectives if d == "min"]
        out["best"] = max(scored, key=lambda r: (r[metric] if MODE == "max" else -r[metric],
                                                 *(-r[c] for c in costs))) if scored else None
    else:
        pick = max if MODE == "max" else min
        out["best"] = pick(scored, key=lambda r: r[metric]) if scored else None
    if the_plan.pareto:
        objs = pareto.objectives(the_plan.objectives)
        out["objectives"] = [[o.name, o.direction] for o in objs]
        # Every scored trial competes (a stopped one too): no front point is dominated by any trial.
        out["front"] = [r["trial_id"] for r in pareto.front(scored, objs)]
    return out
