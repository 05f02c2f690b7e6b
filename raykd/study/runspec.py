"""What the driver hands to the workers of one run: the prepared :class:`Study` and the typed
:class:`RunSpec` (the run's config, its study, when it evaluates). Plain frozen data, no Ray: they
cross to Ray's workers as the objects they are (pickled), never as dicts to rebuild.

Fine-tuning is not a separate code path: :func:`RunSpec.of` turns a fine-tuning run into a
distillation config with ``alpha_ce = 0``, ``alpha_hard = 1`` and no cosine term, so the loop and the
loss never ask which mode they are in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raykd.config import FINETUNE, RaykdConfig, replace
from raykd.study import store as study_store


@dataclass(frozen=True)
class Study:
    """What every run of a study shares: computed once, handed to all trials. ``prepared``,
    ``teacher`` and ``tokenizer`` are what any node can open: a local path, a model name, or a
    storage URI that :meth:`on_this_node` fetches into the node-local cache."""

    prepared: str
    teacher_file: str | None
    teacher: str | None
    tokenizer: str

    def on_this_node(self, items: tuple[str, ...] = study_store.PREPARED_ITEMS) -> Study:
        """The same study with local paths, fetched once per node when it was published."""
        return Study(
            str(study_store.local_prepared(self.prepared, self.teacher_file, items)), self.teacher_file,
            study_store.local_model(self.teacher), study_store.local_model(self.tokenizer),
        )


def as_finetune(cfg: RaykdConfig) -> RaykdConfig:
    """Fine-tuning as a distillation config: the hard loss only (valid whenever ``cfg`` is)."""
    return replace(cfg, {"distill.alpha_ce": 0.0, "distill.alpha_hard": 1.0, "distill.alpha_cos": 0.0})


@dataclass(frozen=True)
class RunSpec:
    """One run, as its workers receive it. ``eval_rounds``: evaluate at that many equal fractions
    of the run's training (a search's trials) instead of every ``optim.eval_every_steps``."""

    cfg: RaykdConfig
    study: Study
    eval_rounds: int | None = None
    # The serving costs of this run's student architecture (latency_ms, params, size_mb),
    # measured before the search; reported with every round. Empty outside a Pareto search.
    costs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: RaykdConfig, mode: str, study: Study, eval_rounds: int | None = None,
           costs: dict[str, float] | None = None) -> RunSpec:
        return cls(as_finetune(cfg) if mode == FINETUNE else cfg, study, eval_rounds, dict(costs or {}))

    @property
    def in_search(self) -> bool:
        return self.eval_rounds is not None
