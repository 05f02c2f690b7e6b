"""Pure loss functions of the DistilBERT "second step of distillation" (Sanh et al. 2019, §3 and
§4.2; Hinton et al. 2015 for the T² factor). Tensors in, tensors out; no model, no state, no task.

Shapes: B = batch, K = heads (distributions per example), C = classes of each distribution.
A task turns its model's outputs into logits [B, K, C] (question answering: K = 2, start and end,
over C = sequence positions; classification: K = 1 over its labels) and, where some classes may
not be chosen, a bool ``mask`` broadcastable to them (QA: [B, 1, L], true where an answer may
start or end: question tokens, separators and padding never receive probability mass in either the
teacher's or the student's distribution). L = sequence length and H = hidden size for hidden states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Float32 logits with disallowed classes at the dtype's minimum (softmax → 0)."""
    logits = logits.float()
    if mask is None:
        return logits
    return logits.masked_fill(~mask.bool(), torch.finfo(logits.dtype).min)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) over the last axis (classes), averaged over every
    leading axis: [B, C] → mean over the batch; [B, K, C] → mean over batch and heads (for QA the
    average of the start and end terms). ``mask`` broadcasts to the logits; None: every class.

    The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al.), which
    matters because T and the alphas are searched together.
    """
    log_s = F.log_softmax(mask_logits(student_logits, mask) / temperature, dim=-1)
    log_t = F.log_softmax(mask_logits(teacher_logits, mask) / temperature, dim=-1)
    per_class = torch.exp(log_t) * (log_t - log_s)
    if mask is not None:
        per_class = torch.where(mask.bool(), per_class, torch.zeros_like(per_class))
    return per_class.sum(dim=-1).mean() * temperature**2


def hard_ce_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of gold classes: ``logits`` [B, K, C], ``targets`` [B, K] int64, averaged over
    batch and heads (QA: the mean of the start and end terms)."""
    z = mask_logits(logits, mask)
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), targets.reshape(-1))


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
    student_logits: torch.Tensor,
    hard: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    alpha_ce: float = 0.0,
    alpha_hard: float = 1.0,
    alpha_cos: float = 0.0,
    student_hidden: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """L = alpha_ce · L_kd + alpha_hard · L_hard [+ alpha_cos · L_cos].

    ``student_logits``/``teacher_logits``: [B, K, C] (see the module docstring); ``hard``: the
    task's hard loss on the gold labels, already computed (:meth:`raykd.tasks.Task.hard_loss`).
    Fine-tuning is the same call with alpha_ce = alpha_cos = 0 and alpha_hard = 1.
    Returns {"loss", "kd", "ce", "cos"} ("ce" is the hard loss); terms with weight 0 are 0 and not
    computed.
    """
    zero = student_logits.new_zeros((), dtype=torch.float32)
    kd = zero
    if alpha_ce > 0:
        if teacher_logits is None:
            raise ValueError("alpha_ce > 0 needs teacher logits")
        kd = kd_loss(student_logits, teacher_logits, mask, temperature)
    cos = zero
    if alpha_cos > 0:
        if student_hidden is None or teacher_hidden is None or attention_mask is None:
            raise ValueError("alpha_cos > 0 needs both hidden states and the attention mask")
        cos = cosine_loss(student_hidden, teacher_hidden, attention_mask)
    loss = alpha_ce * kd + alpha_hard * hard + alpha_cos * cos
    return {"loss": loss, "kd": kd.detach(), "ce": hard.detach(), "cos": cos.detach()}
