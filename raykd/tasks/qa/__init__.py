"""Extractive question answering on SQuAD v1.1, the first task. This folder owns SQuAD loading
and checking (``data``), the sliding-window features, n-best post-processing and the official
EM/F1 (``metrics``, ``squad_v1/``), answering raw questions (``inference``), the answer files
``cli.py evaluate`` writes (``predictions``), generated SQuAD-format data (``synthetic``), and
:class:`~raykd.tasks.qa.task.QuestionAnswering`, the only part the rest of raykd sees.

It may import raykd.config, errors, console and storage, :mod:`raykd.tasks.base` and
:mod:`raykd.tasks.forward`, and the model plumbing of raykd.modeling (``models``, ``losses``). It
never imports the other task, ray, mlflow, nor raykd's search, study, tracking or serving.
"""
