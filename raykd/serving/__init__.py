"""What a student costs to serve, and the only folder that imports ONNX (onnx, onnxscript,
onnxruntime, torch.onnx): the architectures a search can build and their measured costs
(:mod:`~raykd.serving.architectures`), the latency key and cache (:mod:`~raykd.serving.latency_key`,
:mod:`~raykd.serving.latency`), the export with its parity check and timing
(:mod:`~raykd.serving.onnx_export`), and Pareto fronts over scores and costs
(:mod:`~raykd.serving.pareto`). No Ray, no MLflow.
"""
