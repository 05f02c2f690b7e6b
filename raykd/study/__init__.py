"""What every run of a study reads, prepared once on the driver by :mod:`raykd.prepare`: the task's
features and the teacher's logits cached by fingerprint (``cache``), where a study lives and how a
node fetches it once (``store``), and what a worker receives, the :class:`~raykd.study.runspec.Study`
and the typed :class:`~raykd.study.runspec.RunSpec` (``runspec``).

It sits below :mod:`raykd.training` (the loop reads it) and above the tasks and the model plumbing.
It never imports Ray, MLflow, the search or training.
"""
