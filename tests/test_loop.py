"""The loop's pieces that need no Ray: fine-tuning as a distillation config, the typed run spec,
the loop state that reports and checkpoints read, the training data's order, the schedule's
refusal of an accumulation longer than an epoch and the (fused) AdamW."""

import pytest
import torch

from raykd.config import DISTILL, FINETUNE, RaykdConfig
from raykd.errors import UserError
from raykd.study.runspec import RunSpec, Study
from raykd.training import loop
from raykd.training.loop import LoopState, train_loader
from raykd.training.schedule import check_accumulation, schedule


def _study():
    return Study(prepared="/p", teacher_file=None, teacher=None, tokenizer="tok")


def test_fine_tuning_is_distillation_with_the_hard_loss_only():
    cfg = RaykdConfig.from_dict({"distill": {"alpha_ce": 0.7, "alpha_hard": 0.3, "alpha_cos": 0.5,
                                             "teacher_mode": "online"}})
    ft = RunSpec.of(cfg, FINETUNE, _study())
    assert (ft.cfg.distill.alpha_ce, ft.cfg.distill.alpha_hard, ft.cfg.distill.alpha_cos) == (0.0, 1.0, 0.0)
    assert cfg.distill.alpha_ce == 0.7  # the caller's config is untouched
    distill = RunSpec.of(cfg, DISTILL, _study(), eval_rounds=4)
    assert distill.cfg is cfg and distill.eval_rounds == 4 and distill.in_search and not ft.in_search


def test_loop_state_means_losses_since_the_last_report_and_restores_its_place():
    st = LoopState()
    st.start()
    st.add({"loss": 2.0, "kd": 1.0, "ce": 3.0, "cos": 0.0}, 8)
    st.add({"loss": 4.0, "kd": 1.0, "ce": 5.0, "cos": 0.0}, 8)
    got = st.take_train_metrics(world=2)
    assert got["train_loss"] == pytest.approx(3.0) and got["train_ce"] == pytest.approx(4.0)
    assert got["samples_per_sec"] > 0
    st.next_window()
    assert st.n_micro == 0 and st.sums["loss"] == 0.0
    st.restore({"step": 40, "round": 2, "history": [{"round": 1}, {"round": 2}]})
    assert (st.step, st.round, st.run_step0, len(st.history)) == (40, 2, 40, 2)
    st.step = 50
    assert "ETA" in st.progress(total_steps=100)


def test_a_state_without_the_data_position_resumes_where_its_step_says():
    st = LoopState()
    # 5 optimizer steps of 2 micro-batches per epoch; step 8 is 3 steps into the second epoch.
    st.restore({"step": 8, "round": 2, "history": []}, steps_per_epoch=5, accum=2)
    assert (st.epoch, st.micro) == (1, 6)
    st.restore({"step": 8, "round": 2, "epoch": 1, "micro": 7}, steps_per_epoch=5, accum=2)
    assert (st.epoch, st.micro) == (1, 7)  # a saved position wins
    assert st.saved() == {"step": 8, "round": 2, "history": [], "epoch": 1, "micro": 7}


def _order(seed: int, world: int = 2, rank: int = 0, epoch: int = 0, start: int = 0) -> list[int]:
    opt = RaykdConfig.from_dict({"optim": {"seed": seed, "batch_size": 5}}).optim
    loader = train_loader(list(range(50)), opt, world, rank)
    loader.sampler.set_position(epoch, start)
    return [int(i) for batch in loader for i in batch]


def test_optim_seed_reaches_the_distributed_sampler():
    opt = RaykdConfig.from_dict({"optim": {"seed": 7}}).optim
    assert train_loader(list(range(50)), opt, world=2, rank=1).sampler.seed == 7
    assert _order(1) != _order(2)
    assert _order(1) == _order(1)
    # Workers share the epoch's permutation and split it.
    assert sorted(_order(1, rank=0) + _order(1, rank=1)) == list(range(50))
    assert _order(1, epoch=0) != _order(1, epoch=1)
    assert _order(1, world=1) != _order(2, world=1)


def test_the_sampler_resumes_inside_an_epoch_in_the_same_order():
    full = _order(3, epoch=2)
    assert _order(3, epoch=2, start=10) == full[10:]
    opt = RaykdConfig.from_dict({"optim": {"seed": 3, "batch_size": 5}}).optim
    loader = train_loader(list(range(50)), opt, world=2, rank=0)
    loader.sampler.set_position(2, 10)
    assert len(loader) == 3  # 25 rows per worker, 10 of them trained on


def test_accumulation_longer_than_an_epoch_is_refused():
    def cfg(accum, workers=1):
        return RaykdConfig.from_dict({"optim": {"batch_size": 16, "grad_accum_steps": accum},
                                      "scaling": {"num_workers": workers}}, source="s.yaml")

    # 160 features: 10 batches of 16 per epoch on one worker, 5 on each of two.
    check_accumulation(cfg(10), 160)
    assert schedule(cfg(10), 160, 1)[0] == 1
    with pytest.raises(UserError, match=r"^s\.yaml: optim\.grad_accum_steps \(11\) is more than the 10 batch") as e:
        check_accumulation(cfg(11), 160)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"the 5 batch\(es\) of 16 that one worker gets per epoch"):
        check_accumulation(cfg(6, workers=2), 160)
    with pytest.raises(UserError, match="grad_accum_steps"):
        schedule(cfg(6), 160, 2)  # the loop's own schedule refuses it too


def _adamw_after_steps(opt_of, steps: int = 3) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4))
    b = torch.nn.Parameter(torch.zeros(4))
    opt = opt_of([{"params": [w], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}], 1e-2)
    for i in range(steps):
        opt.zero_grad()
        ((torch.ones(2, 8) * (i + 1)) @ w + b).pow(2).sum().backward()
        opt.step()
    return torch.cat([w.detach().flatten(), b.detach()]), opt


def test_adamw_is_fused_on_the_cpu_and_updates_as_the_default_one():
    fused, opt = _adamw_after_steps(loop.adamw)
    assert all(g["fused"] for g in opt.param_groups)
    plain, _ = _adamw_after_steps(lambda groups, lr: torch.optim.AdamW(groups, lr=lr))
    assert torch.allclose(fused, plain, atol=1e-6)


def test_adamw_falls_back_where_the_device_has_no_fused_kernel():
    opt = loop.adamw([{"params": [torch.nn.Parameter(torch.empty(2, device="meta"))]}], 1e-3)
    assert not any(g["fused"] for g in opt.param_groups)
