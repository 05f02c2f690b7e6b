"""The loop's pieces that need no Ray: fine-tuning as a distillation config, the typed run spec,
and the loop state that reports and checkpoints read."""

import pytest

from raykd.config import DISTILL, FINETUNE, RaykdConfig
from raykd.loop import LoopState
from raykd.runspec import RunSpec, Study


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
