"""One run: the ``TorchTrainer`` on the driver, its resources and the cluster's size (``trainer``),
the training loop every worker runs (``loop``), a run's steps and evaluation rounds (``schedule``)
and what a checkpoint holds besides the model (``checkpoints``).

It imports the study it is given (:mod:`raykd.study`), the tasks and the model plumbing below it;
never the search, the preparation of a study (the caller prepares it first), tracking or serving.
"""
