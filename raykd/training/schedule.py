"""A run's schedule, as pure arithmetic: optimizer steps per epoch and in all, and the steps at
which it evaluates (its rounds). The loop follows it; the search plans ASHA's rungs with it.
"""

from __future__ import annotations

import math

from raykd.config import RaykdConfig
from raykd.errors import UserError


def batches_per_epoch(n_features: int, world: int, batch_size: int) -> int:
    """Micro-batches one worker trains on per epoch: every worker gets ceil(n / world) rows (the
    loop's sampler pads the last worker's share, as torch's DistributedSampler does)."""
    return math.ceil(math.ceil(n_features / world) / batch_size)


def check_accumulation(cfg: RaykdConfig, n_features: int, world: int | None = None) -> None:
    """Refuse ``optim.grad_accum_steps`` above the micro-batches one worker gets per epoch: an
    optimizer step would then need more than an epoch of data, and the run would silently take
    one step per epoch over fewer micro-batches than it asked for. ``world``: the workers of the
    run (default ``scaling.num_workers``)."""
    opt = cfg.optim
    world = world or cfg.scaling.num_workers
    batches = batches_per_epoch(n_features, world, opt.batch_size)
    if opt.grad_accum_steps > batches:
        where = f"{cfg.source}: " if cfg.source else ""
        raise UserError(
            f"{where}optim.grad_accum_steps ({opt.grad_accum_steps}) is more than the {batches} batch(es) of "
            f"{opt.batch_size} that one worker gets per epoch ({n_features} training features over {world} "
            f"worker(s)); lower optim.grad_accum_steps, optim.batch_size or scaling.num_workers")


def schedule(cfg: RaykdConfig, n_features: int, world: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, steps between evaluations) of one worker. Refuses
    a gradient accumulation longer than an epoch (:func:`check_accumulation`)."""
    opt = cfg.optim
    check_accumulation(cfg, n_features, world)
    batches = batches_per_epoch(n_features, world, opt.batch_size)
    steps_per_epoch = batches // opt.grad_accum_steps
    total_steps = max(1, math.ceil(opt.num_epochs * steps_per_epoch))
    return steps_per_epoch, total_steps, opt.eval_every_steps or steps_per_epoch


def expected_rounds(cfg: RaykdConfig, n_features: int) -> int:
    """Evaluation rounds a run reports when nothing stops it and no round count is imposed."""
    _, total, every = schedule(cfg, n_features, cfg.scaling.num_workers)
    return math.ceil(total / every)


def eval_points(total_steps: int, every: int, rounds: int | None = None) -> dict[int, int]:
    """{optimizer step: round number} of a run's evaluations. With ``rounds`` (a search), round k
    of R falls after k/R of this run's own steps, so runs with different batch sizes or epochs
    reach round k at the same share of their schedule; the last round is always R, at the last
    step (when a run has fewer steps than rounds, coinciding rounds are evaluated once, under the
    larger number). Without it: every ``every`` steps, and at the last step."""
    if rounds:
        points: dict[int, int] = {}
        for k in range(1, rounds + 1):
            points[max(1, math.ceil(k * total_steps / rounds - 1e-9))] = k
        return points
    steps = list(range(every, total_steps + 1, every))
    if not steps or steps[-1] != total_steps:
        steps.append(total_steps)
    return {s: i + 1 for i, s in enumerate(steps)}
