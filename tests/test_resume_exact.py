"""A resumed run continues exactly: a run stopped after round 2 of 4 and resumed from its round-2
checkpoint reports the same round-4 metrics as a run never stopped, with dropout on and round 2
falling inside an epoch. The real loop runs in Ray Train's local mode (a TorchTrainer with no
workers runs the training function in this process, without starting Ray)."""

import json
import shutil
from pathlib import Path

import pytest
import ray.train
import torch
from ray.train.torch import TorchTrainer
from transformers import AutoConfig

from raykd.config import DISTILL, RaykdConfig
from raykd.prepare import prepare_study
from raykd.study.runspec import RunSpec
from raykd.training import loop
from raykd.training.checkpoints import META_FILE, STATE_FILE

pytestmark = pytest.mark.integration


def read_meta(folder):
    """The metrics (and history) the loop wrote into a checkpoint folder."""
    return json.loads((Path(folder) / META_FILE).read_text())


class _Stopped(Exception):
    """Ends a run right after a round's report, as a stopped or preempted trial ends."""


def _fit(spec, tmp_path, name, stop_after=None, resume=None):
    """Runs the loop; returns {round: checkpoint folder} (a copy of each folder the loop wrote)
    and the loop state as setup left it."""
    keep = tmp_path / name
    keep.mkdir()
    seen = {}

    class Recipe(loop.Recipe):
        def write_checkpoint(self, folder, metrics, rngs):
            super().write_checkpoint(folder, metrics, rngs)
            shutil.copytree(folder, keep / str(metrics["round"]))

        def report(self, rnd, final):
            super().report(rnd, final)
            if rnd == stop_after:
                raise _Stopped

    def fn(config):
        recipe = Recipe(config["spec"])
        recipe.setup(ray.train.Checkpoint.from_directory(resume) if resume else None)
        seen["at"] = (recipe.state.step, recipe.state.epoch, recipe.state.micro)
        try:
            recipe.train()
        except _Stopped:
            pass

    TorchTrainer(fn, train_loop_config={"spec": spec}, scaling_config=ray.train.ScalingConfig(num_workers=0),
                 run_config=ray.train.RunConfig(name=name, storage_path=str(tmp_path / "results"))).fit()
    return {int(p.name): p for p in keep.iterdir()}, seen["at"]


def test_a_run_resumed_after_round_2_reports_round_4_as_if_never_stopped(tmp_path, tiny_models):
    cfg = RaykdConfig.from_dict({
        "data": {"synthetic": True, "synthetic_train_size": 40, "synthetic_eval_size": 12, "max_length": 96,
                 "doc_stride": 32, "cache_dir": str(tmp_path / "cache")},
        "models": {"teacher": str(tiny_models["bert"]), "student": str(tiny_models["distilbert"])},
        "distill": {"temperature": 2.0, "alpha_ce": 0.5, "alpha_hard": 0.5},
        # 40 features, batches of 4, 2 per step: 5 steps per epoch, 15 in all; rounds after steps
        # 4, 8, 12 and 15, so round 2 falls 3 steps (6 batches) into the second epoch.
        "optim": {"learning_rate": 3e-3, "num_epochs": 3, "batch_size": 4, "grad_accum_steps": 2,
                  "warmup_ratio": 0.0, "seed": 5},
    })
    study, _ = prepare_study(cfg, DISTILL)
    spec = RunSpec.of(cfg, DISTILL, study, eval_rounds=4)
    assert AutoConfig.from_pretrained(tiny_models["distilbert"]).dropout > 0  # dropout masks must match
    whole, _ = _fit(spec, tmp_path, "whole")
    stopped, _ = _fit(spec, tmp_path, "stopped", stop_after=2)
    assert sorted(stopped) == [1, 2]
    state = torch.load(stopped[2] / STATE_FILE, weights_only=False)
    assert (state["step"], state["epoch"], state["micro"]) == (8, 1, 6)
    assert len(state["rng"]) == 1 and {"python", "numpy", "torch"} <= set(state["rng"][0])

    resumed, at = _fit(spec, tmp_path, "resumed", resume=stopped[2])
    assert at == (8, 1, 6) and sorted(resumed) == [3, 4]
    for rnd in (3, 4):
        a, b = read_meta(whole[rnd]), read_meta(resumed[rnd])
        for key in ("eval_f1", "eval_exact_match", "train_loss", "train_kd", "train_ce", "learning_rate"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (rnd, key)
    # Training did move between the rounds compared (equal metrics are not from a frozen model).
    assert read_meta(whole[4])["train_loss"] != pytest.approx(read_meta(whole[2])["train_loss"], abs=1e-5)
    assert [h["round"] for h in read_meta(resumed[4])["history"]] == [1, 2, 3, 4]

    # A state file from before the data position and RNG states were saved still loads, at the
    # position its step implies.
    old = tmp_path / "old-state"
    shutil.copytree(stopped[2], old)
    for key in ("epoch", "micro", "rng"):
        del state[key]
    torch.save(state, old / STATE_FILE)
    _, at = _fit(spec, tmp_path, "old", resume=old, stop_after=3)
    assert at == (8, 1, 6)
