"""Pure loss functions of the DistilBERT "second step of distillation" (Sanh et al. 2019, §3 and
§4.2; Hinton et al. 2015 for the T² factor). Tensors in, tensors out; no model, no state.

Shapes: B = batch, L = sequence length, H = hidden size. ``span_mask`` is a bool [B, L] that is true
where an answer may start or end (context tokens and CLS): question tokens, separators and padding
never receive probability mass in either the teacher's or the student's distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_logits(logits: torch.Tensor, span_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] float32 logits with disallowed positions at the dtype's minimum (softmax → 0)."""
    logits = logits.float()
    return logits.masked_fill(~span_mask.bool(), torch.finfo(logits.dtype).min)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    span_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over positions, mean over the batch.

    The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al.), which
    matters because T and the alphas are searched together.
    """
    mask = span_mask.bool()
    log_s = F.log_softmax(mask_logits(student_logits, mask) / temperature, dim=-1)
    log_t = F.log_softmax(mask_logits(teacher_logits, mask) / temperature, dim=-1)
    per_pos = torch.exp(log_t) * (log_t - log_s)
    per_pos = torch.where(mask, per_pos, torch.zeros_like(per_pos))
    return per_pos.sum(dim=-1).mean() * temperature**2


def span_kd_loss(
    student_start: torch.Tensor,
    student_end: torch.Tensor,
    teacher_start: torch.Tensor,
    teacher_end: torch.Tensor,
    span_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """:func:`kd_loss` averaged over the start and end distributions."""
    return 0.5 * (
        kd_loss(student_start, teacher_start, span_mask, temperature)
        + kd_loss(student_end, teacher_end, span_mask, temperature)
    )


def span_ce_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
    span_mask: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of the gold start and end positions ([B] int64), averaged."""
    return 0.5 * (
        F.cross_entropy(mask_logits(start_logits, span_mask), start_positions)
        + F.cross_entropy(mask_logits(end_logits, span_mask), end_positions)
    )


def cosine_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over real tokens of 1 − cos(h_s, h_t) on [B, L, H] hidden states (DistilBERT's L_cos)."""
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(
            f"cosine loss needs equal hidden sizes, got {student_hidden.shape[-1]} and "
            f"{teacher_hidden.shape[-1]}"
        )
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    mask = attention_mask.float()
    return ((1.0 - cos) * mask).sum() / mask.sum().clamp(min=1.0)


def distillation_loss(
    student_start: torch.Tensor,
    student_end: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
    span_mask: torch.Tensor,
    *,
    teacher_start: torch.Tensor | None = None,
    teacher_end: torch.Tensor | None = None,
    temperature: float = 1.0,
    alpha_ce: float = 0.0,
    alpha_squad: float = 1.0,
    alpha_cos: float = 0.0,
    student_hidden: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """L = alpha_ce · L_kd + alpha_squad · L_ce [+ alpha_cos · L_cos].

    Returns {"loss", "kd", "ce", "cos"}; terms with weight 0 (or no teacher) are 0 and not computed.
    """
    zero = student_start.new_zeros((), dtype=torch.float32)
    ce = span_ce_loss(student_start, student_end, start_positions, end_positions, span_mask)
    kd = zero
    if alpha_ce > 0:
        if teacher_start is None or teacher_end is None:
            raise ValueError("alpha_ce > 0 needs teacher logits")
        kd = span_kd_loss(student_start, student_end, teacher_start, teacher_end, span_mask, temperature)
    cos = zero
    if alpha_cos > 0:
        if student_hidden is None or teacher_hidden is None or attention_mask is None:
            raise ValueError("alpha_cos > 0 needs both hidden states and the attention mask")
        cos = cosine_loss(student_hidden, teacher_hidden, attention_mask)
    loss = alpha_ce * kd + alpha_squad * ce + alpha_cos * cos
    return {"loss": loss, "kd": kd.detach(), "ce": ce.detach(), "cos": cos.detach()}
