import math

import pytest
import torch
import torch.nn.functional as F

from raykd import losses


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
    ce = losses.span_ce_loss(s, s, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), mask)
    ce2 = losses.span_ce_loss(s2, s2, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), mask)
    assert ce.item() == pytest.approx(ce2.item(), rel=1e-6)
    assert torch.isfinite(base)


def test_alpha_ce_zero_is_plain_cross_entropy():
    torch.manual_seed(0)
    s_start, s_end = torch.randn(4, 10), torch.randn(4, 10)
    sp, ep = torch.tensor([0, 3, 4, 9]), torch.tensor([0, 5, 4, 9])
    mask = torch.ones(4, 10, dtype=torch.bool)
    out = losses.distillation_loss(s_start, s_end, sp, ep, mask, alpha_ce=0.0, alpha_squad=1.0)
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
    out = losses.distillation_loss(s, e, sp, ep, mask, teacher_start=ts, teacher_end=te, temperature=2.0,
                                   alpha_ce=0.3, alpha_squad=0.7, alpha_cos=0.5, student_hidden=hs,
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
        losses.distillation_loss(s, s, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), mask,
                                 alpha_ce=0.5)
    val = losses.kd_loss(s, s.half(), mask, 2.0)
    assert math.isfinite(val.item()) and val.item() < 1e-3
