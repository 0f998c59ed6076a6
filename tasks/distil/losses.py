"""The soft-target loss of distillation, from the teacher's top-k logits (DistillKit's offline distillation).

The teacher's distribution at each target token is its top-k logits renormalised over those k tokens, at a
temperature. The student's is its full softmax at the same temperature; its probability outside the teacher's k
tokens is one more outcome (the rest), which the teacher gives 0. With k covering the vocabulary both are the full
distributions, and the loss is the full divergence. Scaled by T^2 (Hinton et al.), so that its gradients keep their
size as the temperature changes."""

from __future__ import annotations

import math

import torch


def soft_target_loss(student_logits: torch.Tensor, teacher_values: torch.Tensor, teacher_indices: torch.Tensor,
                     temperature: float = 1.0, divergence: str = "kl") -> torch.Tensor:
    """Per position (rows of `student_logits`, (positions, vocab)): KL(teacher || student) or the Jensen-Shannon
    divergence, from the teacher's top-k logits `teacher_values` at vocabulary ids `teacher_indices` (positions, k)."""
    student_log = (student_logits.float() / temperature).log_softmax(-1)
    student_top = student_log.gather(1, teacher_indices.long())
    teacher_log = (teacher_values.float() / temperature).log_softmax(-1)
    teacher = teacher_log.exp()
    if divergence == "kl":
        loss = (teacher * (teacher_log - student_top)).sum(-1)
    elif divergence == "jsd":
        student_top_p = student_top.exp()
        middle_log = (0.5 * (teacher + student_top_p)).clamp_min(1e-30).log()
        to_teacher = (teacher * (teacher_log - middle_log)).sum(-1)
        rest = (1 - student_top_p.sum(-1)).clamp_min(0)  # the student's mass outside the teacher's k tokens
        to_student = (student_top_p * (student_top - middle_log)).sum(-1) + rest * math.log(2)
        loss = 0.5 * (to_teacher + to_student)
    else:
        raise ValueError(f"divergence {divergence!r}: kl or jsd")
    return loss * temperature**2
