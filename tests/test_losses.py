import math

import pytest
import torch
import torch.nn.functional as F

from raykd.modeling import losses


def _mask(b=3, length=8, masked=(1, 2)):
    m = torch.ones(b, length, dtype=torch.bool)
    m[:, list(masked)] = False  # question tokens
    m[:, -2:] = False  # padding
    return m


def test_identical_logits_give_zero_kd():
    z = torch.randn(3, 8)
    assert losses.kd_loss(z, z.clone(), _mask(), 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_matches_hand_computed_kl_with_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    temp = 3.0
    p_t = F.softmax(t / temp, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
    assert losses.kd_loss(s, t, mask, temp).item() == pytest.approx(expected.item(), rel=1e-5)


def test_t_squared_factor_keeps_gradient_scale():
    # For large T the KL gradient scales like 1/T^2; with the T^2 factor it stays put (Hinton et al.).
    torch.manual_seed(0)
    t = torch.randn(4, 16)
    grads = []
    for temp in (8.0, 16.0):
        s = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)).requires_grad_()
        losses.kd_loss(s, t, torch.ones(4, 16, dtype=torch.bool), temp).backward()
        grads.append(s.grad.norm().item())
    assert grads[0] / grads[1] == pytest.approx(1.0, rel=0.1)


def test_t_squared_factor_exact():
    torch.manual_seed(0)
    s, t = torch.randn(2, 6), torch.randn(2, 6)
    m = torch.ones(2, 6, dtype=torch.bool)
    raw = losses.kd_loss(s, t, m, 4.0) / 16.0
    p_t = F.softmax(t / 4, -1)
    assert raw.item() == pytest.approx((p_t * (p_t.log() - F.log_softmax(s / 4, -1))).sum(-1).mean().item(), rel=1e-5)


def test_masked_positions_are_ignored():
    torch.manual_seed(0)
    s, t = torch.randn(3, 8), torch.randn(3, 8)
    mask = _mask()
    base = losses.kd_loss(s, t, mask, 2.0)
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = 100.0  # huge logits at padding / question tokens must change nothing
    t2[~mask] = -50.0
    assert losses.kd_loss(s2, t2, mask, 2.0).item() == pytest.approx(base.item(), rel=1e-6)
    gold = torch.zeros(3, 2, dtype=torch.long)  # start and end
    ce = losses.hard_ce_loss(torch.stack([s, s], 1), gold, mask[:, None])
    ce2 = losses.hard_ce_loss(torch.stack([s2, s2], 1), gold, mask[:, None])
    assert ce.item() == pytest.approx(ce2.item(), rel=1e-6)
    assert torch.isfinite(base)


def test_alpha_ce_zero_is_plain_cross_entropy():
    torch.manual_seed(0)
    s_start, s_end = torch.randn(4, 10), torch.randn(4, 10)
    sp, ep = torch.tensor([0, 3, 4, 9]), torch.tensor([0, 5, 4, 9])
    mask = torch.ones(4, 10, dtype=torch.bool)
    logits = torch.stack([s_start, s_end], 1)
    hard = losses.hard_ce_loss(logits, torch.stack([sp, ep], 1), mask[:, None])
    out = losses.distillation_loss(logits, hard, mask=mask[:, None], alpha_ce=0.0, alpha_hard=1.0)
    expected = (F.cross_entropy(s_start, sp) + F.cross_entropy(s_end, ep)) / 2
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["kd"].item() == 0.0


def test_weighted_sum_of_terms():
    torch.manual_seed(0)
    s, e, ts, te = (torch.randn(2, 6) for _ in range(4))
    sp = ep = torch.tensor([1, 2])
    mask = torch.ones(2, 6, dtype=torch.bool)
    hs, ht = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    am = torch.ones(2, 6)
    logits = torch.stack([s, e], 1)
    hard = losses.hard_ce_loss(logits, torch.stack([sp, ep], 1), mask[:, None])
    out = losses.distillation_loss(logits, hard, mask=mask[:, None], teacher_logits=torch.stack([ts, te], 1),
                                   temperature=2.0, alpha_ce=0.3, alpha_hard=0.7, alpha_cos=0.5, student_hidden=hs,
                                   teacher_hidden=ht, attention_mask=am)
    want = 0.3 * out["kd"] + 0.7 * out["ce"] + 0.5 * out["cos"]
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    assert out["kd"] > 0 and out["cos"] > 0


def test_cosine_loss_zero_for_identical_and_ignores_padding():
    h = torch.randn(2, 5, 8)
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert losses.cosine_loss(h, h.clone(), am).item() == pytest.approx(0.0, abs=1e-6)
    h2 = h.clone()
    h2[0, 3:] = -h[0, 3:]  # only padding differs
    assert losses.cosine_loss(h, h2, am).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.cosine_loss(h, -h, am).item() == pytest.approx(2.0, rel=1e-6)


def test_kd_needs_teacher_and_fp16_teacher_logits_work():
    s = torch.randn(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises(ValueError):
        losses.distillation_loss(torch.stack([s, s], 1), s.new_zeros(()), mask=mask[:, None], alpha_ce=0.5)
    val = losses.kd_loss(s, s.half(), mask, 2.0)
    assert math.isfinite(val.item()) and val.item() < 1e-3


# The loss is task-free: a [B, K, C] tensor with an optional mask, whatever K and C mean.


def test_kd_on_qa_shape_is_the_mean_of_the_start_and_end_terms():
    torch.manual_seed(0)
    s, t = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    mask = _mask()[:, None, :]  # one answer-position mask for both heads
    both = losses.kd_loss(s, t, mask, 2.0)
    start = losses.kd_loss(s[:, 0], t[:, 0], mask[:, 0], 2.0)
    end = losses.kd_loss(s[:, 1], t[:, 1], mask[:, 0], 2.0)
    assert both.item() == pytest.approx(0.5 * (start + end).item(), rel=1e-6)


def test_kd_on_classification_shape_without_mask_is_kl_over_classes_with_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(4, 1, 3), torch.randn(4, 1, 3)
    temp = 5.0
    p_t = F.softmax(t / temp, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
    assert losses.kd_loss(s, t, None, temp).item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses.kd_loss(s, s.clone(), None, temp).item() == pytest.approx(0.0, abs=1e-6)


def test_hard_loss_on_classification_shape_is_cross_entropy_and_alpha_ce_zero_is_fine_tuning():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 1, 2), torch.tensor([0, 1, 1, 0, 1])
    hard = losses.hard_ce_loss(logits, labels[:, None])
    assert hard.item() == pytest.approx(F.cross_entropy(logits[:, 0], labels).item(), rel=1e-6)
    out = losses.distillation_loss(logits, hard, alpha_ce=0.0, alpha_hard=1.0)
    assert out["loss"].item() == pytest.approx(hard.item()) and out["kd"].item() == 0.0
    teacher = torch.randn(5, 1, 2)
    mixed = losses.distillation_loss(logits, hard, teacher_logits=teacher, temperature=3.0, alpha_ce=0.4, alpha_hard=0.6)
    assert mixed["loss"].item() == pytest.approx(0.4 * losses.kd_loss(logits, teacher, None, 3.0).item()
                                                 + 0.6 * hard.item(), rel=1e-6)
