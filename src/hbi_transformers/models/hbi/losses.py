"""Loss terms of HBI training (docs/training.md), each one small function."""

import torch
import torch.nn.functional as F


def info_nce(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each row against its diagonal entry (the matched pair), averaged; or, with
    `targets` (rows summing to 1), against that distribution."""
    log_probs = F.log_softmax(logits, dim=-1)
    if targets is None:
        return -torch.diagonal(log_probs).mean()
    return -(targets * log_probs).sum(dim=-1).mean()


def same_video_targets(video_index: torch.Tensor) -> torch.Tensor:
    """Row i spreads its target evenly over every pair whose video is pair i's video, so that two
    captions of one video in a batch are not each other's negatives. Symmetric."""
    same = (video_index[:, None] == video_index[None, :]).float()
    return same / same.sum(dim=-1, keepdim=True)


def symmetric_info_nce(logits_per_text: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the text-to-video and video-to-text InfoNCE losses."""
    return (info_nce(logits_per_text, targets) + info_nce(logits_per_text.t(), targets)) / 2


def kl_divergence(input_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """The official `KL(input, target)`: `KL(softmax(target) || softmax(input))` over the last
    axis, divided by the number of elements (`kl_div(..., reduction="mean")`). The target is NOT
    detached: as officially, gradients reach both sides."""
    # The target as log-probabilities: the same values, but a target probability that underflows
    # to 0 (large logits) would otherwise give NaN gradients through the non-detached target.
    # The mean is written out because torch warns that kl_div's "mean" will change meaning.
    pointwise = F.kl_div(
        F.log_softmax(input_logits, dim=-1), F.log_softmax(target_logits, dim=-1), reduction="none", log_target=True
    )
    return pointwise.mean()


def banzhaf_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`KL(student, teacher) + KL(student^T, teacher^T)` on `[batch, words, frames]` maps, where
    `^T` reverses all axes (torch's `.T` on a 3-D tensor, as the official code writes it), so the
    second term normalises over the batch axis."""
    reverse = (2, 1, 0)
    return kl_divergence(student, teacher) + kl_divergence(student.permute(reverse), teacher.permute(reverse))


def distributed_world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def gather_from_all_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates every process's `tensor` along the batch axis, in rank order, differentiably.

    The backward pass sums, over all processes, the gradient each one computes for this process's
    shard (`torch.distributed.nn.functional.all_gather`), so that after DDP averages the parameter
    gradients every parameter receives the single-process gradient of the loss on the global batch.
    (The official HBI all-gather returns each rank's slice without that sum, which under-weights
    the encoders' gradient by the world size.) Batches of different sizes are padded for the
    exchange and cut back to size.
    """
    if distributed_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    local_size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(local_size) for _ in range(distributed_world_size())]
    torch.distributed.all_gather(sizes, local_size)
    sizes = [int(size) for size in sizes]
    padded = F.pad(tensor, [0, 0] * (tensor.dim() - 1) + [0, max(sizes) - tensor.shape[0]])
    shards = all_gather(padded)
    return torch.cat([shard[:size] for shard, size in zip(shards, sizes)])
