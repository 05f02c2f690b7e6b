"""The Task seam: everything that differs between what raykd can distil, behind one small
interface. The loop, the loss, the teacher-logit cache, the search, tracking and the CLI ask a
task; they never ask which task it is.

A task owns: loading its data (hub name or local files, or data it generates), building the
features, the model class and head (:class:`raykd.modeling.models.Head`), turning model outputs
into the logits that are distilled ([batch, heads, classes], with an optional mask; see
:mod:`raykd.modeling.losses`), the hard loss, scoring (in training, and a local file for
``cli.py evaluate``), the checks of its data files and settings before Ray starts, and how the
registered student answers (a DataFrame in, a DataFrame out). The one :class:`DataError` of every
task lives here.

Heavy libraries (torch, datasets, transformers, pandas) are imported inside methods: the config
validation and the preflight checks use tasks before anything heavy is loaded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from raykd.config import DataConfig, RaykdConfig
from raykd.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from datasets import Dataset

    from raykd.modeling.models import Head


class DataError(UserError):
    """A data file this task cannot read; the message names the file and where in it."""


@dataclass(frozen=True)
class Score:
    """A metric an evaluation reports: its key (``eval_accuracy``) and the console's short label."""

    key: str
    label: str


@dataclass
class Built:
    """What a task builds for a prepared folder: training and evaluation features, the evaluation
    examples its scoring reads, and counts for the manifest."""

    train: Dataset
    eval: Dataset
    examples: Dataset
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    """One column of what the served student reads or returns (an MLflow signature column)."""

    name: str
    type: str  # MLflow's: string, double, long
    required: bool = True


class Task(ABC):
    name: ClassVar[str]
    # The objective unless search.metric says otherwise, and every score evaluate() returns.
    metric: ClassVar[str]
    scores: ClassVar[tuple[Score, ...]]
    # Feature columns the hard loss and mask read, besides the model inputs.
    train_columns: ClassVar[tuple[str, ...]]
    # Settings this task never reads -> why; written by a user, they are refused (a silent no-op).
    unused_keys: ClassVar[dict[str, str]] = {}
    file_format: ClassVar[str]  # what a local data file must be, for messages
    serving_inputs: ClassVar[tuple[Column, ...]]
    serving_outputs: ClassVar[tuple[Column, ...]]
    # Whether check_teacher looks at anything (an online teacher is then run on a sample first).
    checks_teacher: ClassVar[bool] = False
    # Files ``cli.py evaluate`` can write besides the scores, by flag name (QA: its answers).
    writes: ClassVar[tuple[str, ...]] = ()

    def score_keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.scores)

    def config_checks(self, cfg: RaykdConfig) -> list[tuple[bool, str, str]]:
        """Extra (ok, dotted key, message) checks of this task's settings."""
        return []

    # --- models -------------------------------------------------------------------------------

    @abstractmethod
    def head(self, cfg: RaykdConfig) -> Head: ...

    # The class-name ending of a model with this task's head (BertForSequenceClassification).
    architecture: ClassVar[str]

    def check_model_config(self, conf: dict[str, Any], cfg: RaykdConfig, what: str, teacher: bool) -> None:
        """Refuse (DataError) a model whose config cannot serve this task: a teacher must carry the
        task's trained head (loaded into the task's class, another model's head would be random
        and every trial would distil noise)."""
        archs = conf.get("architectures") or []
        if teacher and archs and not any(a.endswith(self.architecture) for a in archs):
            raise DataError(f"{what}: is a {archs[0]}, not a model with a trained *{self.architecture} head, so "
                            f"its {self.name} outputs would be random; fine-tune one first "
                            "(models.teacher_finetune.base) or choose a teacher trained for the task")

    # --- data ---------------------------------------------------------------------------------

    @abstractmethod
    def data_files(self, cfg: DataConfig, cache_dir: Path) -> tuple[str | None, str | None]:
        """Local train/validation files (generated on first use when ``cfg.synthetic``), or None
        for a split that comes from the hub."""

    @abstractmethod
    def feature_settings(self, cfg: DataConfig) -> dict[str, Any]:
        """The settings the features depend on besides the tokenizer and the data (fingerprinted)."""

    @abstractmethod
    def build(self, cfg: DataConfig, tokenizer, cache_dir: Path) -> Built: ...

    @abstractmethod
    def check_data_file(self, path: Path, text: str, what: str, cfg: RaykdConfig,
                        warn: Callable[[str], None] | None = None) -> int:
        """Parse a local data file's text as this task reads it (with ``cfg``'s data settings);
        return its example count, or raise DataError naming ``what`` and the first bad place;
        ``warn`` for what is skipped."""

    # --- training -----------------------------------------------------------------------------

    def trim(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch as the model should see it (classification drops columns that are padding in
        every row; QA keeps every position, its logits are per position)."""
        return batch

    def check_teacher(self, logits: np.ndarray, train: Dataset, warn: Callable[[str], None]) -> None:
        """Look at the teacher's freshly computed logits on the training features: raise DataError
        when they show the teacher cannot be this data's teacher, ``warn`` when it looks weak."""

    @abstractmethod
    def logits(self, outputs: Any) -> torch.Tensor:
        """Model outputs -> the logits that are distilled, [B, K, C]."""

    @abstractmethod
    def mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Classes that may be chosen, broadcastable to [B, K, C]; None: all."""

    @abstractmethod
    def hard_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def predict_logits(self, model: torch.nn.Module, features: Dataset, batch_size: int = 64,
                       device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
                       dtype: Any = None, progress: str | None = None, stream: Any = None) -> np.ndarray:
        """The distilled logits of every feature, [N, K, C] (float32 unless ``dtype``): the one
        batched forward pass (:func:`raykd.tasks.forward.batched_logits`) with this task's
        :meth:`logits` and :meth:`trim`."""
        import numpy as np

        from raykd.tasks import forward

        return forward.batched_logits(model, features, self.logits, batch_size, device, autocast_dtype, self.trim,
                                      dtype or np.float32, progress, stream)

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, features: Dataset, examples: Dataset, cfg: DataConfig,
                 batch_size: int, device: torch.device | str = "cpu",
                 autocast_dtype: torch.dtype | None = None, progress: str | None = None) -> dict[str, float]:
        """{score key: value} for every key of :attr:`scores`, in percent; ``progress``: the label
        of a progress line on stderr (a long ``cli.py evaluate``)."""

    # --- scoring a file (cli.py evaluate) ---------------------------------------------------------

    @abstractmethod
    def eval_file(self, path: str, tokenizer, cfg: DataConfig) -> tuple[Dataset, Dataset, dict[str, Any]]:
        """A local evaluation file read as this task reads it: (features, examples, counts for the
        report, such as ``examples``)."""

    def score_file(self, model: torch.nn.Module, tokenizer, path: str, cfg: DataConfig, batch_size: int,
                   progress: str | None = None, write: dict[str, str] | None = None) -> dict[str, Any]:
        """{score key: value, count: n} of ``model`` on a local data file; ``write``: {name in
        :attr:`writes`: path} of files to write too (their paths are returned under the name)."""
        if write:
            raise ValueError(f"task {self.name} writes no {', '.join(write)} file")  # refused before, by the caller
        features, examples, counts = self.eval_file(path, tokenizer, cfg)
        return {**self.evaluate(model, features, examples, cfg, batch_size, progress=progress), **counts}

    # --- serving ------------------------------------------------------------------------------

    @abstractmethod
    def serving_example(self) -> dict[str, list]: ...

    @abstractmethod
    def serving_settings(self, cfg: RaykdConfig) -> dict[str, Any]:
        """What the served student needs besides its weights (max_length, ...); JSON."""

    @abstractmethod
    def predictor(self, model_dir: str, settings: dict[str, Any]) -> Callable[[pd.DataFrame], pd.DataFrame]:
        """The student in ``model_dir`` as a function from the serving inputs to the outputs."""
