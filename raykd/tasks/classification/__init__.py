"""Text classification (SST-2 and the like), the second task. This folder owns reading labelled
sentences or sentence pairs from the hub or local CSV / TSV / JSON lines (``data``), generated
SST-2-format data (``synthetic``), and :class:`~raykd.tasks.classification.task.Classification`
(head, trim, accuracy/F1, the teacher's label-order check, serving), the only part the rest of
raykd sees.

It may import raykd.config, errors, console and storage, :mod:`raykd.tasks.base` and
:mod:`raykd.tasks.forward`, and the model plumbing of raykd.modeling (``models``, ``losses``). It
never imports the other task (what both need lives in ``tasks/base.py``, ``tasks/forward.py`` or
``raykd/storage.py``), ray, mlflow, nor raykd's search, study, tracking or serving.
"""
