"""Names that ``vulture raykd cli.py vulture_whitelist.py`` would report as unused but that are
used: called by a library through its own API, written to JSON through ``dataclasses.asdict``, or
read by the tests. vulture's whitelist mechanism: naming them here counts as a use. Never imported
or run (tests/test_imports.py runs vulture over it)."""

# ruff: noqa: B018  (each line is an attribute read that does nothing: that is how vulture counts a use)

from vulture.whitelist_utils import Whitelist

_ = Whitelist()

# Library hooks: called by name by the library, never by raykd.
_.writable  # console._Tee: io.TextIOBase's API, asked by print() and logging of any stream
_.should_report  # search.report.ProgressTable: tune.ProgressReporter's hook, called by Tune
_.iteration  # search.report.RoundLines: tune.Callback's hooks receive it as a keyword argument
_._metric  # search.schedulers.PerArchitectureScheduler: read by TrialScheduler.metric (Tune's checks)
_.log_trial_start  # tracking.callback.TrialRunsCallback: tune.logger.LoggerCallback's hooks
_.log_trial_result  # (same)
_.log_trial_end  # (same)
_.load_context  # tracking.registry.StudentModel: mlflow.pyfunc.PythonModel's hook, called on load
_.SquadV1  # tasks/qa/squad_v1: the evaluate module's metric class, found by evaluate.load(path)
_._info  # (same): evaluate.Metric's hook
_._compute  # (same): evaluate.Metric's hook
_.log_severity_level  # serving.onnx_export.session: onnxruntime.SessionOptions attributes, read by ORT
_.intra_op_num_threads  # (same)

# Dataclass fields written to JSON (dataclasses.asdict): the latency cache and the export report.
_.latency_p90_ms  # serving.latency.Measurement
_.measured_at  # serving.latency.Measurement
_.per_output  # serving.onnx_export.Parity
_.min_ms  # serving.onnx_export.Latency

# Read by the tests.
_.schedulers  # search.schedulers.PerArchitectureScheduler: tests/test_fair_stopping.py inspects the sub-schedulers
_.dominators  # serving.pareto: tests/test_pareto.py and test_pareto_search.py check fronts with it
