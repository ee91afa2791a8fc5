"""Weighted token-wise interaction (docs/wti.md) against slow, explicit loop computations.

Every reference below works on Python floats with explicit loops over texts, videos, words,
frames and feature dimensions; none of it reuses the package's vectorised code.
"""

import math

import pytest
import torch

from hbi_transformers.models.hbi.wti import (
    MASKED_WEIGHT_LOGIT,
    LevelTokens,
    TokenWeightHead,
    _length_sorted_chunks,
    chunked_weighted_token_interaction,
    l2_normalize,
    matched_word_frame_similarity,
    weighted_token_interaction,
    word_frame_similarity,
)

DTYPE = torch.float64


# ------------------------------------------------------------------------------------------------
# Loop references
# ------------------------------------------------------------------------------------------------
def loop_softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def loop_weight_head(head, tokens, mask):
    """softmax over tokens of Linear(D, 2D) -> ReLU -> Linear(2D, 1), masked logits = -9e15."""
    w1, b1 = head.fc_in.weight.tolist(), head.fc_in.bias.tolist()
    w2, b2 = head.fc_out.weight.tolist()[0], head.fc_out.bias.item()
    weights = []
    for item in range(tokens.shape[0]):
        logits = []
        for position in range(tokens.shape[1]):
            x = tokens[item, position].tolist()
            hidden = [max(sum(w1[j][i] * x[i] for i in range(len(x))) + b1[j], 0.0) for j in range(len(b1))]
            logit = sum(w2[j] * hidden[j] for j in range(len(hidden))) + b2
            if mask is not None and mask[item, position] == 0:
                logit = -9e15
            logits.append(logit)
        weights.append(loop_softmax(logits))
    return weights


def loop_normalize(tokens):
    out = []
    for item in tokens.tolist():
        rows = []
        for token in item:
            norm = math.sqrt(sum(x * x for x in token))
            rows.append([x / norm for x in token])
        out.append(rows)
    return out


def loop_similarity(text_tokens, text_mask, video_tokens, video_mask):
    """S[a][b][t][v] = <text[a, t], video[b, v]> * text_mask[a, t] * video_mask[b, v]."""
    text, video = text_tokens.tolist(), video_tokens.tolist()
    out = []
    for a in range(len(text)):
        per_video = []
        for b in range(len(video)):
            grid = []
            for t in range(len(text[a])):
                row = []
                for v in range(len(video[b])):
                    value = sum(x * y for x, y in zip(text[a][t], video[b][v]))
                    if text_mask is not None:
                        value *= float(text_mask[a, t])
                    if video_mask is not None:
                        value *= float(video_mask[b, v])
                    row.append(value)
                grid.append(row)
            per_video.append(grid)
        out.append(per_video)
    return out


def loop_wti(text: LevelTokens, video: LevelTokens, masked_cells_in_max=True):
    """sim[a][b] = (sum_t w_t * max_v S + sum_v w_v * max_t S) / 2.

    With `masked_cells_in_max=False` the masked cells are left out of the maxima and sums (what
    a "-inf" masking would do): only used to show the tests tell the two apart.
    """
    similarity = loop_similarity(text.tokens, text.mask, video.tokens, video.mask)
    text_weights, video_weights = text.weights.tolist(), video.weights.tolist()

    def valid(mask, item, position):
        return masked_cells_in_max or mask is None or mask[item, position] != 0

    n_text, n_video = len(text_weights), len(video_weights)
    words, frames = text.tokens.shape[1], video.tokens.shape[1]
    sim = [[0.0] * n_video for _ in range(n_text)]
    for a in range(n_text):
        for b in range(n_video):
            grid = similarity[a][b]
            t2v = 0.0
            for t in range(words):
                if not valid(text.mask, a, t):
                    continue
                best = -math.inf
                for v in range(frames):
                    if valid(video.mask, b, v):
                        best = max(best, grid[t][v])
                t2v += text_weights[a][t] * best
            v2t = 0.0
            for v in range(frames):
                if not valid(video.mask, b, v):
                    continue
                best = -math.inf
                for t in range(words):
                    if valid(text.mask, a, t):
                        best = max(best, grid[t][v])
                v2t += video_weights[b][v] * best
            sim[a][b] = (t2v + v2t) / 2
    return torch.tensor(sim, dtype=DTYPE)


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def make_mask(lengths, size):
    mask = torch.zeros(len(lengths), size, dtype=torch.long)
    for item, length in enumerate(lengths):
        mask[item, :length] = 1
    return mask


def make_side(generator, head, count, size, dim, lengths):
    """Raw tokens, their mask and the matching LevelTokens (weights from `head`)."""
    raw = torch.randn(count, size, dim, generator=generator, dtype=DTYPE)
    mask = None if lengths is None else make_mask(lengths, size)
    tokens = torch.tensor(loop_normalize(raw), dtype=DTYPE)
    with torch.no_grad():
        weights = head(raw, mask)
    return LevelTokens(tokens, weights, mask), raw


def make_head(dim, seed):
    torch.manual_seed(seed)
    return TokenWeightHead(dim).to(DTYPE)


@pytest.fixture
def masked_pair():
    generator = torch.Generator().manual_seed(0)
    dim = 6
    text, _ = make_side(generator, make_head(dim, 1), 5, 4, dim, [4, 2, 3, 1, 4])
    video, _ = make_side(generator, make_head(dim, 2), 7, 5, dim, [5, 3, 1, 5, 2, 4, 5])
    return text, video


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
def test_masked_weight_logit_is_the_official_finite_fill():
    assert MASKED_WEIGHT_LOGIT == -9e15


@pytest.mark.parametrize("masked", [True, False])
def test_token_weight_head_matches_loop(masked):
    generator = torch.Generator().manual_seed(3)
    head = make_head(5, 4)
    tokens = torch.randn(3, 6, 5, generator=generator, dtype=DTYPE)
    mask = make_mask([6, 2, 4], 6) if masked else None
    with torch.no_grad():
        got = head(tokens, mask)
    expected = torch.tensor(loop_weight_head(head, tokens, mask), dtype=DTYPE)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.sum(-1), torch.ones(3, dtype=DTYPE))
    if masked:
        # Padding positions get exactly 0 weight.
        assert (got[mask == 0] == 0).all()


def test_token_weight_head_all_masked_row_is_uniform_not_nan():
    # A finite -9e15 fill (not -inf) turns an all-padding row into a uniform softmax.
    head = make_head(4, 5)
    tokens = torch.randn(2, 3, 4, dtype=DTYPE)
    mask = torch.tensor([[0, 0, 0], [1, 0, 1]])
    with torch.no_grad():
        got = head(tokens, mask)
    expected = torch.tensor(loop_weight_head(head, tokens, mask), dtype=DTYPE)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[0], torch.full((3,), 1 / 3, dtype=DTYPE))


def test_token_weight_head_float32_padding_weight_is_zero():
    head = TokenWeightHead(4)
    mask = torch.tensor([[1, 1, 0, 0]])
    with torch.no_grad():
        weights = head(torch.randn(1, 4, 4), mask)
    assert weights.dtype == torch.float32
    assert (weights[0, 2:] == 0).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_l2_normalize_matches_loop():
    tokens = torch.randn(2, 3, 5, dtype=DTYPE)
    torch.testing.assert_close(l2_normalize(tokens), torch.tensor(loop_normalize(tokens), dtype=DTYPE))


def test_word_frame_similarity_matches_loop(masked_pair):
    text, video = masked_pair
    expected = torch.tensor(loop_similarity(text.tokens, text.mask, video.tokens, video.mask), dtype=DTYPE)
    got = word_frame_similarity(text, video)
    assert got.shape == (5, 7, 4, 5)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # Masked cells are exactly 0 (not -inf).
    assert (got[:, 2, :, 1:] == 0).all() and (got[3, :, 1:, :] == 0).all()


def test_matched_word_frame_similarity_matches_loop():
    generator = torch.Generator().manual_seed(7)
    dim = 6
    text, _ = make_side(generator, make_head(dim, 1), 4, 5, dim, [5, 2, 3, 1])
    video, _ = make_side(generator, make_head(dim, 2), 4, 3, dim, [3, 1, 2, 3])
    full = loop_similarity(text.tokens, text.mask, video.tokens, video.mask)
    expected = torch.tensor([full[b][b] for b in range(4)], dtype=DTYPE)
    torch.testing.assert_close(matched_word_frame_similarity(text, video), expected, rtol=1e-12, atol=1e-12)
    # Unmasked: the plain dot products.
    text_free, video_free = LevelTokens(text.tokens, text.weights, None), LevelTokens(video.tokens, video.weights, None)
    full_free = loop_similarity(text.tokens, None, video.tokens, None)
    torch.testing.assert_close(
        matched_word_frame_similarity(text_free, video_free),
        torch.tensor([full_free[b][b] for b in range(4)], dtype=DTYPE),
        rtol=1e-12,
        atol=1e-12,
    )


def test_weighted_token_interaction_masked_matches_loop(masked_pair):
    text, video = masked_pair
    got = weighted_token_interaction(text, video)
    assert got.shape == (5, 7)
    torch.testing.assert_close(got, loop_wti(text, video), rtol=1e-12, atol=1e-12)


def test_weighted_token_interaction_unmasked_matches_loop():
    generator = torch.Generator().manual_seed(11)
    dim = 6
    text, _ = make_side(generator, make_head(dim, 1), 3, 4, dim, None)
    video, _ = make_side(generator, make_head(dim, 2), 4, 2, dim, None)
    assert text.mask is None and video.mask is None
    torch.testing.assert_close(weighted_token_interaction(text, video), loop_wti(text, video), rtol=1e-12, atol=1e-12)


def test_masked_zeros_win_the_max_for_an_all_negative_row():
    """The official quirk: masked cells are 0 and take part in the max, so a word whose similarity
    to every real frame is negative gets max_v S = 0 against a video with padding frames."""
    dim = 3
    text_tokens = torch.zeros(1, 2, dim, dtype=DTYPE)
    text_tokens[0, 0] = torch.tensor([1.0, 0.0, 0.0], dtype=DTYPE)  # word 0
    text_tokens[0, 1] = torch.tensor([0.0, 1.0, 0.0], dtype=DTYPE)  # word 1
    video_tokens = torch.zeros(1, 3, dim, dtype=DTYPE)
    video_tokens[0, 0] = torch.tensor([-0.6, 0.8, 0.0], dtype=DTYPE)  # real frame
    video_tokens[0, 1] = torch.tensor([-0.8, -0.6, 0.0], dtype=DTYPE)  # real frame
    video_tokens[0, 2] = torch.tensor([1.0, 0.0, 0.0], dtype=DTYPE)  # padding frame (would match word 0 perfectly)
    text = LevelTokens(text_tokens, torch.tensor([[0.7, 0.3]], dtype=DTYPE), torch.tensor([[1, 1]]))
    video = LevelTokens(video_tokens, torch.tensor([[0.5, 0.5, 0.0]], dtype=DTYPE), torch.tensor([[1, 1, 0]]))

    similarity = word_frame_similarity(text, video)[0, 0]
    torch.testing.assert_close(similarity, torch.tensor([[-0.6, -0.8, 0.0], [0.8, -0.6, 0.0]], dtype=DTYPE))
    # Word 0's row is all negative over the real frames: max_v is the masked 0.
    # t2v = 0.7 * 0 + 0.3 * 0.8; v2t = 0.5 * max(-0.6, 0.8) + 0.5 * max(-0.8, -0.6).
    expected = (0.3 * 0.8 + 0.5 * 0.8 + 0.5 * -0.6) / 2
    got = weighted_token_interaction(text, video)
    torch.testing.assert_close(got, torch.tensor([[expected]], dtype=DTYPE), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, loop_wti(text, video), rtol=1e-12, atol=1e-12)
    # The loop reference tells the quirk apart from "-inf" masking (masked cells left out).
    without_quirk = loop_wti(text, video, masked_cells_in_max=False)
    assert abs(without_quirk.item() - expected) > 0.1
    assert not torch.allclose(got, without_quirk)


def test_masked_zero_quirk_matters_on_random_inputs(masked_pair):
    # With several padded items some rows/columns are all negative: the two rules disagree, and
    # the package follows the official one.
    text, video = masked_pair
    got = weighted_token_interaction(text, video)
    torch.testing.assert_close(got, loop_wti(text, video), rtol=1e-12, atol=1e-12)
    assert (got - loop_wti(text, video, masked_cells_in_max=False)).abs().max() > 1e-3


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 4, 5, 6, 7, 100])
def test_chunked_interaction_matches_loop(masked_pair, chunk_size):
    text, video = masked_pair  # 5 texts x 7 videos: most chunk sizes divide neither count
    got = chunked_weighted_token_interaction(text, video, chunk_size)
    assert got.shape == (5, 7)
    torch.testing.assert_close(got, loop_wti(text, video), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_chunked_interaction_unmasked_matches_loop(chunk_size):
    generator = torch.Generator().manual_seed(13)
    dim = 4
    text, _ = make_side(generator, make_head(dim, 1), 4, 3, dim, None)
    video, _ = make_side(generator, make_head(dim, 2), 5, 2, dim, None)
    torch.testing.assert_close(
        chunked_weighted_token_interaction(text, video, chunk_size), loop_wti(text, video), rtol=1e-12, atol=1e-12
    )


def test_level_tokens_indexing_keeps_rows_and_mask(masked_pair):
    text, _ = masked_pair
    part = text[1:3]
    assert len(part) == 2
    assert torch.equal(part.tokens, text.tokens[1:3])
    assert torch.equal(part.weights, text.weights[1:3])
    assert torch.equal(part.mask, text.mask[1:3])
    free = LevelTokens(text.tokens, text.weights, None)[0:2]
    assert free.mask is None


def test_chunks_end_where_the_length_drops_once_a_quarter_full():
    # Chunk size 8: a chunk ends at 8 items, or at a drop in length once it holds 2. 8 items of 5
    # tokens, 10 of 4 (a full chunk, then 2), 1 of 3 (alone: it goes on with the 2-token items).
    lengths = torch.tensor([5] * 8 + [4] * 10 + [3] + [2] * 3)[torch.randperm(22, generator=torch.Generator().manual_seed(0))]
    side = LevelTokens(torch.randn(22, 6, 3), torch.rand(22, 6), (torch.arange(6)[None] < lengths[:, None]).long())
    chunks = _length_sorted_chunks(side, 8)
    assert [(len(items), tokens.shape[1], trimmed) for items, tokens, _, trimmed in chunks] == [
        (8, 5, True), (8, 4, True), (2, 4, True), (4, 3, True)
    ]
    assert sorted(torch.cat([items for items, *_ in chunks]).tolist()) == list(range(22))
    for items, tokens, weights, _ in chunks:
        masked = side.tokens[items, : tokens.shape[1]] * side.mask[items, : tokens.shape[1], None]
        assert torch.equal(tokens, masked)
        assert torch.equal(weights, side.weights[items, : tokens.shape[1]])
