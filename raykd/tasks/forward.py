"""The one batched forward pass: a model over prepared features, batch by batch on a device, to
the task's logits as one numpy array [N, K, C]. Scoring (QA and classification) and the teacher-logit
cache all run their models through it; what differs between them is handed in (the task's logits
and trim, the autocast dtype, the array's dtype). No Ray, no MLflow.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import torch

from raykd.console import progress_line
from raykd.modeling import models

# A progress line every this many batches (and after the first and the last).
PROGRESS_EVERY = 20


def _same(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


@torch.no_grad()
def batched_logits(
    model: torch.nn.Module,
    features,
    logits: Callable[[Any], torch.Tensor],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    trim: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = _same,
    dtype: type | np.dtype = np.float32,
    progress: str | None = None,
    stream: IO[str] | None = None,
) -> np.ndarray:
    """``logits(model outputs)`` of every feature, in order, as ``dtype`` [N, K, C] (an empty
    (0, 0, 0) array when there are no features). The model runs in eval mode (its mode is restored
    after), on the inputs its forward accepts, ``trim``-med, under autocast to ``autocast_dtype``
    when one is given. ``progress``: a label under which a line with the rate and ETA goes to
    ``stream`` (default stderr: ``evaluate``'s stdout is its JSON result)."""
    inner = getattr(model, "module", model)  # a DDP-wrapped model runs its module
    was_training = inner.training
    inner.eval()
    names = models.accepted_inputs(inner)
    ds = features.with_format("torch", columns=list(names))
    device = torch.device(device)
    # Written into one preallocated array: the teacher's fp16 logits of all of SQuAD never exist
    # as a float32 list of batches besides it.
    out: np.ndarray | None = None
    n_batches = (len(ds) + batch_size - 1) // batch_size
    t0 = time.perf_counter()
    try:
        for b, start in enumerate(range(0, len(ds), batch_size)):
            batch = trim({k: v.to(device) for k, v in ds[start: start + batch_size].items()})
            with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                got = logits(models.forward(inner, batch, names)).float().cpu().numpy()
            if out is None:
                out = np.empty((len(ds), *got.shape[1:]), dtype=dtype)
            out[start: start + len(got)] = got
            if progress and (b % PROGRESS_EVERY == 0 or b == n_batches - 1):
                print(progress_line(progress, start + len(got), len(ds), time.perf_counter() - t0),
                      file=stream or sys.stderr, flush=True)
    finally:
        inner.train(was_training)
    return out if out is not None else np.zeros((0, 0, 0), dtype)
