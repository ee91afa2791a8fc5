"""Token merging for the HBI hierarchy: DPC-KNN clustering of words (or frames) into fewer
tokens, then an attention block that lets each merged token look at the tokens it came from.

Entity level (raw tokens) -> action level -> event level, on each side separately. This mirrors
the official CTM + TCBlock pair, quirks included (see `cluster_tokens_dpc_knn`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


# torch.cdist's default switches from direct differences to matrix products above 25 tokens.
CDIST_MATMUL_ABOVE = 25


@torch.no_grad()
def cluster_tokens_dpc_knn(
    tokens: torch.Tensor,
    num_clusters: int,
    num_neighbors: int,
    token_mask: torch.Tensor | None = None,
    padded_length: int | None = None,
) -> torch.Tensor:
    """Assigns every token to one of `num_clusters` centres picked by DPC-KNN.

    Returns `[batch, tokens]` cluster indices; clusters are numbered in descending order of the
    centres' score (local density x distance to a denser token), and every centre is in its own
    cluster. As in the official code, distances to padding tokens are replaced by the maximum
    distance over the WHOLE batch plus one, so the clustering of an item with fewer valid tokens
    than `num_neighbors` depends on the batch it is in, and a 1e-6 uniform noise breaks density
    ties (seed torch's RNG for repeatable merges). Tokens whose trailing padding was cut off give
    their `padded_length`: distances are then computed the way torch computes them at that length.
    """
    batch_size, num_tokens, dim = tokens.shape
    # At least float32, whatever the tokens' precision: cdist has no bfloat16 kernel on CPU, and a
    # 16-bit density could not hold the 1e-6 tie-breaking noise. Only indices leave this function.
    tokens = tokens.to(torch.promote_types(tokens.dtype, torch.float32))
    by_matmul = (padded_length or num_tokens) > CDIST_MATMUL_ABOVE
    compute_mode = "use_mm_for_euclid_dist" if by_matmul else "donot_use_mm_for_euclid_dist"
    distances = torch.cdist(tokens, tokens, compute_mode=compute_mode) / math.sqrt(dim)
    if token_mask is not None:
        valid = token_mask > 0
        fill = distances.max() + 1
        distances = distances * valid[:, None, :] + fill * (~valid[:, None, :])

    # The official code fails when a level has fewer tokens than k; use them all instead.
    nearest = torch.topk(distances, k=min(num_neighbors, num_tokens), dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    density = density + torch.rand(density.shape, device=density.device, dtype=density.dtype) * 1e-6
    if token_mask is not None:
        density = density * valid

    denser = (density[:, None, :] > density[:, :, None]).to(tokens.dtype)
    max_distance = distances.flatten(1).max(dim=-1).values[:, None, None]
    distance_to_denser = (distances * denser + max_distance * (1 - denser)).min(dim=-1).values

    centre_score = distance_to_denser * density
    centres = torch.topk(centre_score, k=num_clusters, dim=-1).indices
    batch_index = torch.arange(batch_size, device=tokens.device)[:, None]
    cluster_index = distances[batch_index, centres].argmin(dim=1)
    cluster_index[batch_index.expand(-1, num_clusters), centres] = torch.arange(
        num_clusters, device=tokens.device
    ).expand(batch_size, -1)
    return cluster_index


def merge_clustered_tokens(
    tokens: torch.Tensor, cluster_index: torch.Tensor, num_clusters: int, token_weight: torch.Tensor
) -> torch.Tensor:
    """Weight-normalised average of each cluster's tokens: `[batch, num_clusters, D]`.

    `token_weight` is `[batch, tokens]` (0 for padding); 1e-6 is added to each cluster's total
    weight, as in the official code.
    """
    batch_size, _, dim = tokens.shape
    cluster_weight = token_weight.new_zeros(batch_size, num_clusters).scatter_add_(1, cluster_index, token_weight)
    normalized_weight = token_weight / (cluster_weight + 1e-6).gather(1, cluster_index)
    merged = tokens.new_zeros(batch_size, num_clusters, dim)
    return merged.scatter_add_(
        1, cluster_index[..., None].expand(-1, -1, dim), tokens * normalized_weight[..., None]
    )


def convolve_by_stacked_taps(tokens: torch.Tensor, weight: torch.Tensor, lookahead: bool = False) -> torch.Tensor:
    """The merge convolution (kernel 3, zero padding 1, no bias; `weight` `[out, in, 3]`) of
    `tokens` `[batch, tokens, D]`, as one matrix product of every token with the three taps side
    by side, then shifted sums: on CPU 1.3x to 2.2x as fast as torch's convolution at 4 to 25
    tokens, and closer to float64 (docs/token_merging.md#the-convolution-as-one-matrix-product).
    With `lookahead`, the last token is read as the next one of the token before it and gets no
    output. Returns `[batch, outputs, D]`."""
    batch_size, num_tokens, dim = tokens.shape
    # Rows ordered (tap, out): F.linear multiplies by the transpose without copying it again.
    stacked = weight.permute(2, 0, 1).reshape(-1, dim)
    taps = F.linear(tokens.reshape(batch_size * num_tokens, dim), stacked).view(batch_size, num_tokens, 3, -1)
    num_outputs = num_tokens - 1 if lookahead else num_tokens
    convolved = taps[:, :num_outputs, 1].clone()
    convolved[:, 1:] += taps[:, : num_outputs - 1, 0]
    convolved[:, : num_tokens - 1] += taps[:, 1:, 2]
    return convolved


class TokenClusterMerge(nn.Module):
    """Scores and clusters tokens, and merges each cluster into one token (official `CTM`).

    A 1-D convolution over the token axis (padding tokens keep their features and leak into their
    neighbours, as officially), LayerNorm, then a linear score; padding tokens get a score of
    -inf, so their merge weight `exp(score)` is 0 and the attention block drops them as keys.
    """

    def __init__(self, dim: int, merge_ratio: float, num_neighbors: int):
        super().__init__()
        self.merge_ratio = merge_ratio
        self.num_neighbors = num_neighbors
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Linear(dim, 1)

    def num_clusters(self, num_tokens: int) -> int:
        return max(math.ceil(num_tokens * self.merge_ratio), 1)

    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        padded_length: int | None = None,
        lookahead: bool = False,
        stacked_taps: bool = False,
    ):
        """Returns `(merged [batch, clusters, D], features [batch, tokens, D], score [batch, tokens],
        cluster_index [batch, tokens])`: the merged tokens, the processed tokens with their scores
        (the keys of the attention), and which cluster each token went into. `padded_length` is
        the length the tokens had before trailing padding was cut off: the cluster count is
        computed from it, so trimming does not change it. With `lookahead`, the last position of
        `tokens` (and `mask`) is padding that only the convolution reads, as the next token of
        the last one kept: it gets no output. `stacked_taps` computes the convolution by
        `convolve_by_stacked_taps`, as the lookahead always does: what gallery scoring does;
        training and the forward keep torch's convolution, the official op."""
        if stacked_taps or lookahead:
            convolved = convolve_by_stacked_taps(tokens, self.conv.weight, lookahead)
        else:
            convolved = self.conv(tokens.transpose(1, 2)).transpose(1, 2)
        if lookahead:
            tokens, mask = tokens[:, :-1], None if mask is None else mask[:, :-1]
        features = self.norm(tokens + convolved)
        score = self.score(features).squeeze(-1)
        if mask is not None:
            score = score.masked_fill(mask == 0, float("-inf"))
        num_clusters = self.num_clusters(padded_length or tokens.shape[1])
        cluster_index = cluster_tokens_dpc_knn(features, num_clusters, self.num_neighbors, mask, padded_length)
        merged = merge_clustered_tokens(features, cluster_index, num_clusters, score.exp())
        return merged, features, score, cluster_index


class MergedTokenAttention(nn.Module):
    """Merged tokens (queries) attend to the tokens before merging (keys, values), with each key's
    merge score added to the attention logits; residual on the merged tokens, no MLP (official
    `TCBlock`). One LayerNorm is shared by queries and keys."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, merged: torch.Tensor, keys: torch.Tensor, key_score: torch.Tensor) -> torch.Tensor:
        batch_size, num_queries, dim = merged.shape
        num_keys = keys.shape[1]
        query = self.query(self.norm(merged)).view(batch_size, num_queries, self.num_heads, self.head_dim)
        key_value = self.key_value(self.norm(keys)).view(batch_size, num_keys, 2, self.num_heads, self.head_dim)
        query = query.transpose(1, 2)
        key, value = key_value.permute(2, 0, 3, 1, 4)
        # The merge score is an additive bias on every query's logits (-inf drops a padding key).
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=key_score[:, None, None, :].to(query.dtype), scale=self.scale
        )
        attended = attended.transpose(1, 2).reshape(batch_size, num_queries, dim)
        return merged + self.out_proj(attended)


class TokenMergeBlock(nn.Module):
    """One step up the hierarchy for one side: cluster + merge, then attention."""

    def __init__(self, dim: int, merge_ratio: float, num_neighbors: int, num_heads: int):
        super().__init__()
        self.merge = TokenClusterMerge(dim, merge_ratio, num_neighbors)
        self.attention = MergedTokenAttention(dim, num_heads)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.merge_tokens(tokens, mask)[0]

    def merge_tokens(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        padded_length: int | None = None,
        lookahead: bool = False,
        stacked_taps: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The merged tokens `[batch, clusters, D]` and which of them each input token went into
        (`cluster_index` `[batch, tokens]`); `padded_length`, `lookahead` and `stacked_taps` as in
        `TokenClusterMerge.forward`."""
        merged, features, score, cluster_index = self.merge(tokens, mask, padded_length, lookahead, stacked_taps)
        return self.attention(merged, features, score), cluster_index
