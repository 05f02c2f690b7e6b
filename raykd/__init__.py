"""raykd: distributed hyperparameter search for task-specific knowledge distillation of
question-answering transformers (Ray Train + Ray Tune/Optuna/ASHA + MLflow)."""

__version__ = "0.1.0"
