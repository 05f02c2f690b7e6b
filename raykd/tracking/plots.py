"""Figures of a finished search, drawn from its summary (``summary.json``): every trial's score
(the search's metric, e.g. ``eval_f1`` or ``eval_accuracy``) by round, and in a Pareto search the
score against a cost with the front. Matplotlib only (no MLflow, no Ray): :mod:`raykd.tracking` logs the figure to the study
run, and ``benchmarks/plot_rounds.py`` writes it for the README.
"""

from __future__ import annotations

from typing import Any

# A summary row's own fields, with its scores (``eval_*``); every other key is a searched parameter.
ROW_FIELDS = {"trial_id", "status", "score_round", "rounds", "planned_rounds", "stopped_early", "checkpoint_path",
              "curve", "error", "latency_ms", "params", "size_mb"}


def _param(key: str) -> bool:
    return key not in ROW_FIELDS and not key.startswith("eval_")


def _short(key: str, value: Any) -> str:
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, float):
        return f"{name}={value:.2g}" if abs(value) < 1e-2 else f"{name}={value:.2f}"
    return f"{name}={value}"


def rounds_figure(summary: dict[str, Any], title: str | None = None):
    """The search's metric over rounds, one line per trial: solid when it ran its whole schedule, dashed and
    ending in a cross when ASHA stopped it; the best trial drawn thicker, with its score round
    circled; ASHA's first rung as a dotted vertical line. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = (summary.get("best") or {}).get("trial_id")
    metric = summary.get("metric", "eval_f1")  # summaries before the task seam scored eval_f1
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for row in summary["trials"]:
        curve = row.get("curve") or []
        if not curve:
            continue
        xs, ys = [c[0] for c in curve], [c[1] for c in curve]
        params = ", ".join(_short(k, v) for k, v in row.items() if _param(k))
        stopped = row.get("stopped_early")
        label = f"{row['trial_id']}{' (stopped)' if stopped else ''}: {params}"
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, linestyle="--" if stopped else "-",
                          linewidth=2.6 if row["trial_id"] == best else 1.2, label=label)
        if stopped:
            ax.plot(xs[-1], ys[-1], marker="x", markersize=9, color=line.get_color())
        if row["trial_id"] == best and row.get("score_round") in xs:
            ax.plot(row["score_round"], row[metric], marker="o", markersize=12, fillstyle="none",
                    color=line.get_color())
    if summary.get("grace_period"):
        ax.axvline(summary["grace_period"], color="grey", linestyle=":", linewidth=1)
        ax.text(summary["grace_period"], ax.get_ylim()[1], " ASHA's first rung", color="grey", fontsize=7,
                va="top")
    rounds = summary.get("rounds") or max((len(r.get("curve") or []) for r in summary["trials"]), default=1)
    ax.set_xticks(range(1, rounds + 1))
    ax.set_xlabel("evaluation round (k of R = k/R of a trial's training)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or f"{metric} by round, all trials (best circled)")
    ax.grid(alpha=0.3)
    # Below the axes: inside, it would hide the curves of the stopped trials.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.14), frameon=False)
    fig.tight_layout()
    return fig


def front_figure(summary: dict[str, Any], cost: str | None = None):
    """A Pareto search's trials, score against ``cost`` (default: the first cost objective): every
    scored trial a dot (a cross when stopped early), the front joined and labelled, the latency
    budget a dashed line and the best within it circled. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summary["metric"]
    cost = cost or next(k for k, d in summary["objectives"] if d == "min")
    on_front = set(summary.get("front") or [])
    rows = [r for r in summary["trials"] if r.get(metric) is not None and r.get(cost) is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for stopped in (False, True):
        pts = [r for r in rows if bool(r.get("stopped_early")) == stopped and r["trial_id"] not in on_front]
        ax.scatter([r[cost] for r in pts], [r[metric] for r in pts], marker="x" if stopped else "o", color="grey",
                   alpha=0.7, label="stopped early" if stopped else "dominated")
    front = sorted((r for r in rows if r["trial_id"] in on_front), key=lambda r: r[cost])
    ax.plot([r[cost] for r in front], [r[metric] for r in front], marker="o", color="tab:red", label="Pareto front")
    for r in front:
        ax.annotate(f" {r['trial_id']}", (r[cost], r[metric]), fontsize=7)
    if summary.get("max_latency_ms") is not None and cost == "latency_ms":
        ax.axvline(summary["max_latency_ms"], color="tab:blue", linestyle="--", linewidth=1,
                   label=f"budget {summary['max_latency_ms']:g} ms")
    best = summary.get("best")
    if best and best.get(cost) is not None:
        ax.plot(best[cost], best[metric], marker="o", markersize=14, fillstyle="none", color="tab:blue",
                label="best" + (" within budget" if summary.get("max_latency_ms") is not None else ""))
    unit = {"latency_ms": "latency (ms, measured)", "params": "parameters", "size_mb": "ONNX size (MB)"}.get(cost, cost)
    ax.set_xlabel(unit)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} against {cost}: all trials, the front in red")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
