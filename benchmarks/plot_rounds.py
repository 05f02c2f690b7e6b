"""Draw a finished search's eval F1 by round (every trial) into a PNG: the README's picture (and,
for a Pareto search, its front beside it).

    python benchmarks/plot_rounds.py raykd_results/quickstart \
        --out benchmarks/results/quickstart-eval_f1-by-round.png

Reads ``<experiment>/summary.json`` (written at the end of every search); the figure is the one
raykd logs to the study run in MLflow (:func:`raykd.plots.rounds_figure`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raykd.tracking import plots

DEFAULT_OUT = Path(__file__).parent / "results" / "quickstart-eval_f1-by-round.png"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", help="the search's folder (<storage_path>/<search.name>) or its summary.json")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"PNG to write (default {DEFAULT_OUT})")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    src = Path(args.experiment)
    summary_file = src / "summary.json" if src.is_dir() else src
    if not summary_file.is_file():
        print(f"plot_rounds: no summary at {summary_file} (is the search finished?)", file=sys.stderr)
        return 2
    summary = json.loads(summary_file.read_text())
    n = len(summary["trials"])
    stopped = sum(bool(r.get("stopped_early")) for r in summary["trials"])
    title = args.title or (f"{summary_file.parent.name}: {summary['metric']} by round, {n} trials "
                           f"({stopped} stopped early by ASHA; best circled)")
    fig = plots.rounds_figure(summary, title=title)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(out)
    if summary.get("front") is not None:
        # A Pareto search: also its front, beside the rounds figure (the study run's pareto_front.png).
        front_out = out.with_name(out.stem.replace("-eval_f1-by-round", "") + "-pareto-front.png")
        plots.front_figure(summary).savefig(front_out, dpi=120)
        print(front_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
