"""The search: Ray Tune trials proposed by Optuna and stopped by ASHA, over one prepared study.

What each module owns:

- ``plan``: what every trial shares (rounds, first rung, scoring, measured costs) and how many
  trials run at once;
- ``resume``: what a resumed search must share with the one it continues, and the check;
- ``searchers``: the Optuna searchers (one objective, or several), the study broker, and where
  Optuna's study is stored;
- ``schedulers``: ASHA with rungs that survive an interruption and stop markers, one ASHA per
  architecture;
- ``trial``: the trial driver (all a trial actor imports) and whether a trial actor is reused;
- ``tuner``: the Tune ``Tuner`` (new or restored) and the search's run;
- ``summary``: a trial's score and history, the summary of all trials, pruning checkpoints;
- ``report``: what the search prints.

This package may import :mod:`raykd.study`, :mod:`raykd.training`, :mod:`raykd.serving`,
:mod:`raykd.tasks`, and the top-level ``config``, ``objective``, ``storage``, ``console``,
``errors``, ``spaces`` and ``compat``; never :mod:`raykd.tracking` (MLflow): the caller
(:func:`raykd.run.search`) hands the tracking in as Tune callbacks.
"""
