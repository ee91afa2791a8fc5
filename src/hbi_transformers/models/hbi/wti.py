"""Weighted token-wise interaction (WTI): how much a text and a video match, word by frame.

For text `a` and video `b` with L2-normalised tokens, `S[a, b, t, v] = <text[a, t], video[b, v]>`
(masked cells set to 0, which still take part in the max), and

    t2v[a, b] = sum_t w_text[a, t] * max_v S[a, b, t, v]
    v2t[a, b] = sum_v w_video[b, v] * max_t S[a, b, t, v]
    sim[a, b] = (t2v + v2t) / 2
"""

from dataclasses import dataclass

import torch
from torch import nn

# The official code fills masked weight logits with this finite value, not -inf.
MASKED_WEIGHT_LOGIT = -9e15


class TokenWeightHead(nn.Module):
    """Softmax importance of each token (word or frame) of one item: Linear -> ReLU -> Linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc_in = nn.Linear(dim, 2 * dim)
        self.activation = nn.ReLU()
        self.fc_out = nn.Linear(2 * dim, 1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.fc_out(self.activation(self.fc_in(tokens))).squeeze(-1)
        if mask is not None:
            # float16 cannot hold -9e15; its lowest value gives padding the same zero weight.
            logits = logits.masked_fill(mask == 0, max(MASKED_WEIGHT_LOGIT, torch.finfo(logits.dtype).min))
        return torch.softmax(logits, dim=-1)


@dataclass
class LevelTokens:
    """One side (texts or videos) of one hierarchy level, ready to be matched.

    `tokens` are L2-normalised `[batch, tokens, D]`, `weights` their softmax importance
    `[batch, tokens]`, `mask` `[batch, tokens]` or None where the level is not masked (merged
    action and event tokens are never padding). `features` are the tokens before normalisation
    (what the question answering heads pool), where the level walk kept them. `cluster_index`
    `[batch, tokens of the level below]`, above the entity level, says which of this level's
    tokens each token of the level below was merged into.
    """

    tokens: torch.Tensor
    weights: torch.Tensor
    mask: torch.Tensor | None
    features: torch.Tensor | None = None
    cluster_index: torch.Tensor | None = None

    def __getitem__(self, index) -> "LevelTokens":
        return LevelTokens(
            *(None if value is None else value[index] for value in
              (self.tokens, self.weights, self.mask, self.features, self.cluster_index))
        )

    def __len__(self) -> int:
        return self.tokens.shape[0]


def l2_normalize(tokens: torch.Tensor) -> torch.Tensor:
    # No epsilon, as the official code: a zero token would be a bug upstream, not something to hide.
    return tokens / tokens.norm(dim=-1, keepdim=True)


def _masked_tokens(side: LevelTokens) -> torch.Tensor:
    # Zeroing padding tokens makes their similarity cells exactly 0, as masking the cells does.
    if side.mask is None:
        return side.tokens
    return side.tokens * side.mask[..., None].to(side.tokens.dtype)


def word_frame_similarity(text: LevelTokens, video: LevelTokens) -> torch.Tensor:
    """`S[a, b, t, v]` for every text `a` and video `b`: `[n_text, n_video, words, frames]`."""
    return word_frame_similarity_text_major(text, video).permute(0, 2, 1, 3)


def word_frame_similarity_text_major(text: LevelTokens, video: LevelTokens) -> torch.Tensor:
    """`S` laid out `[n_text, words, n_video, frames]`: one matrix product, no copy."""
    n_text, words, dim = text.tokens.shape
    n_video, frames, _ = video.tokens.shape
    text_rows = _masked_tokens(text).reshape(n_text * words, dim)
    video_rows = _masked_tokens(video).reshape(n_video * frames, dim)
    return (text_rows @ video_rows.t()).view(n_text, words, n_video, frames)


def matched_word_frame_similarity(text: LevelTokens, video: LevelTokens) -> torch.Tensor:
    """`S[b, b]` for the matched pairs (text b with video b): `[batch, words, frames]`."""
    return torch.einsum("btd,bvd->btv", _masked_tokens(text), _masked_tokens(video))


def weighted_token_interaction(text: LevelTokens, video: LevelTokens) -> torch.Tensor:
    """WTI similarity of every text with every video, `[n_text, n_video]`, in one block."""
    similarity = word_frame_similarity_text_major(text, video)
    t2v = (similarity.amax(dim=3) * text.weights[:, :, None]).sum(dim=1)
    v2t = (similarity.amax(dim=1) * video.weights[None]).sum(dim=2)
    return (t2v + v2t) / 2.0


def _length_sorted_chunks(side: LevelTokens, chunk_size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]]:
    """`side` cut into chunks of at most `chunk_size` items, each as `(items, masked tokens,
    weights, trimmed)`.

    On a masked level the items are taken longest first and each chunk keeps only the token
    positions some item of it uses: the dropped positions are padding of every item in the chunk,
    whose cells are 0 and whose terms in the weighted sum are 0. `trimmed` says positions were
    dropped, so a max over them must still see those zero cells (docs/wti.md). A chunk that holds
    a quarter of `chunk_size` items also ends where the length drops, so that the items after it
    are not padded to its width.
    """
    if side.mask is None:
        return [
            (torch.arange(start, min(start + chunk_size, len(side)), device=side.tokens.device),
             side.tokens[start : start + chunk_size],
             side.weights[start : start + chunk_size], False)
            for start in range(0, len(side), chunk_size)
        ]
    width = side.tokens.shape[1]
    lengths = side.mask.sum(dim=1)
    if len(side) <= chunk_size:
        # One chunk: order does not matter, and slicing instead of gathering saves a copy.
        keep = max(int(lengths.max()), 1) if len(side) else width
        tokens = side.tokens[:, :keep] * side.mask[:, :keep, None].to(side.tokens.dtype)
        return [(torch.arange(len(side), device=side.tokens.device), tokens, side.weights[:, :keep], keep < width)]
    order = torch.argsort(lengths, descending=True, stable=True)
    # One host sync per side and level, not one per block.
    sorted_lengths = lengths[order].tolist()
    least = max(chunk_size // 4, 1)
    starts = [0]
    for position in range(1, len(order)):
        held = position - starts[-1]
        if held == chunk_size or (held >= least and sorted_lengths[position] < sorted_lengths[position - 1]):
            starts.append(position)
    chunks = []
    for start, end in zip(starts, starts[1:] + [len(order)]):
        items = order[start:end]
        keep = max(int(sorted_lengths[start]), 1)
        tokens = side.tokens[items, :keep] * side.mask[items, :keep, None].to(side.tokens.dtype)
        chunks.append((items, tokens, side.weights[items, :keep], keep < width))
    return chunks


def chunked_weighted_token_interaction(
    text: LevelTokens, video: LevelTokens, chunk_size: int | None = None
) -> torch.Tensor:
    """`weighted_token_interaction` in blocks of `chunk_size` texts x `chunk_size` videos written
    into one `[n_text, n_video]` result, so that the `[n_text, words, n_video, frames]` tensor
    never exists whole. Blocks group items of similar length and skip the token positions that
    are padding for all of them (same scores, fewer products)."""
    chunk_size = chunk_size or max(len(text), len(video), 1)
    text_chunks = _length_sorted_chunks(text, chunk_size)
    video_chunks = _length_sorted_chunks(video, chunk_size)
    # Frames major within a video chunk: a block is then laid out [texts, words, frames, videos],
    # and both maxima reduce an axis that is not the last one, which torch vectorises along the
    # videos (docs/wti.md#chunked-evaluation).
    video_blocks = [
        (tokens.transpose(0, 1).reshape(-1, tokens.shape[-1]), weights.t(), trimmed, len(items))
        for items, tokens, weights, trimmed in video_chunks
    ]
    # Blocks are written as slices in the chunks' order, then put in place at once.
    scores = text.tokens.new_empty(len(text), len(video))
    text_start = 0
    for _, text_tokens, text_weights, text_trimmed in text_chunks:
        n_text, words, dim = text_tokens.shape
        text_rows = text_tokens.reshape(n_text * words, dim)
        video_start = 0
        for video_rows, video_weights, video_trimmed, n_video in video_blocks:
            frames = video_weights.shape[0]
            similarity = (text_rows @ video_rows.t()).view(n_text, words, frames, n_video)
            best_frame = similarity.amax(dim=2)
            best_word = similarity.amax(dim=1)
            # Dropped positions were zero cells of every item here: the max still counts them.
            if video_trimmed:
                best_frame.clamp_min_(0)
            if text_trimmed:
                best_word.clamp_min_(0)
            t2v = (best_frame * text_weights[:, :, None]).sum(dim=1)
            v2t = (best_word * video_weights[None]).sum(dim=1)
            scores[text_start : text_start + n_text, video_start : video_start + n_video] = (t2v + v2t) / 2.0
            video_start += n_video
        text_start += n_text
    # Only masked sides were sorted; each reordering holds two N x N matrices at most.
    for dim, (side, chunks) in enumerate(((text, text_chunks), (video, video_chunks))):
        if side.mask is not None and scores.numel():
            order = torch.cat([items for items, *_ in chunks])
            scores = torch.empty_like(scores).index_copy_(dim, order, scores)
    return scores
