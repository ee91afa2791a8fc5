"""Loss terms of HBI training (spec section 5), each one small function."""

import torch
import torch.nn.functional as F


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row against its diagonal entry (the matched pair), averaged."""
    return -torch.diagonal(F.log_softmax(logits, dim=-1)).mean()


def symmetric_info_nce(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Mean of the text-to-video and video-to-text InfoNCE losses."""
    return (info_nce(logits_per_text) + info_nce(logits_per_text.t())) / 2


def kl_divergence(input_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """The official `KL(input, target)`: `KL(softmax(target) || softmax(input))` over the last
    axis, divided by the number of elements (`kl_div(..., reduction="mean")`). The target is NOT
    detached: as officially, gradients reach both sides."""
    # Written out: torch warns that kl_div's "mean" will change meaning.
    pointwise = F.kl_div(F.log_softmax(input_logits, dim=-1), F.softmax(target_logits, dim=-1), reduction="none")
    return pointwise.mean()


def banzhaf_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`KL(student, teacher) + KL(student^T, teacher^T)` on `[batch, words, frames]` maps, where
    `^T` reverses all axes (torch's `.T` on a 3-D tensor, as the official code writes it), so the
    second term normalises over the batch axis."""
    reverse = (2, 1, 0)
    return kl_divergence(student, teacher) + kl_divergence(student.permute(reverse), teacher.permute(reverse))
