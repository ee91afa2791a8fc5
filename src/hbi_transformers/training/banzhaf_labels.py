"""Banzhaf interaction labels (docs/banzhaf.md): the Monte Carlo estimate that pre-trains the
Banzhaf estimator, vectorised over every word-frame pair and sample, with the official
generator's semantics or the textbook ones, and exact enumeration for small games.

Players are the words and frames of one matched pair. A coalition (words A, frames F) is worth
the WTI similarity of the map restricted to it: cells outside A x F are 0 and still take part
in the max (as in WTI), and the weights are re-softmaxed over the members (non-members filled
with -9e15, so an empty side gets uniform weights over all-zero rows and is worth 0).
"""

import torch

from ..models.hbi.wti import MASKED_WEIGHT_LOGIT

# The official label generator multiplies the similarity map by 1000 before playing the game.
LABEL_SIMILARITY_SCALE = 1000.0
SEMANTICS = ("official", "standard")
# Working memory of one chunk of evaluations when the caller does not fix the chunk size. On CPU
# chunks that stay in cache run fastest (measured on 32 pairs of 24 words x 12 frames: 16 to 32
# samples per chunk, against 1.4x slower with all 100 at once); on a GPU large chunks amortise the
# kernel launches.
CPU_CHUNK_MEMORY_BYTES = 16 * 2**20
ACCELERATOR_CHUNK_MEMORY_BYTES = 2**30
# Exact enumeration visits 2 ** (words + frames - 2) coalitions per word-frame pair.
MAX_EXACT_PLAYERS = 20


def draw_coalitions(
    num_samples: int,
    batch_size: int,
    num_words: int,
    num_frames: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random coalitions, every word and frame in with probability 0.5, independently per sample
    and batch item: `(word_members [num_samples, batch, words], frame_members [num_samples,
    batch, frames])`, booleans, words drawn first. `monte_carlo_banzhaf_interaction` draws
    exactly these when given the same generator state."""
    word_members = torch.rand(num_samples, batch_size, num_words, generator=generator, device=device) < 0.5
    frame_members = torch.rand(num_samples, batch_size, num_frames, generator=generator, device=device) < 0.5
    return word_members, frame_members


@torch.no_grad()
def monte_carlo_banzhaf_interaction(
    sim_map: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    text_weight: torch.Tensor,
    video_weight: torch.Tensor,
    num_samples: int = 100,
    generator: torch.Generator | None = None,
    semantics: str = "official",
    chunk_size: int | None = None,
    coalitions: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Monte Carlo estimate of the Banzhaf interaction of every word i with every frame j,
    `[batch, words, frames]`: the mean over random coalitions C of the other players of
    `v(C + {i, j}) - v(C + {i}) - v(C + {j}) + v(C)`, zero for padded words and frames.

    Args:
        sim_map: the matched pair's word-frame similarity `[batch, words, frames]`, unscaled (the
            x1000 of the official labels is applied here).
        text_mask, video_mask: `[batch, words]`, `[batch, frames]`, nonzero for real tokens.
        text_weight, video_weight: the WTI weights as the official estimator passes them, i.e.
            already softmaxed over the real tokens; each coalition re-softmaxes them.
        num_samples: coalitions per label.
        generator: draws the coalitions (see `draw_coalitions`), on the inputs' device.
        semantics: "official" reproduces the official `BanzhafInteraction` in expectation, quirks
            included: `v(C + {i, j})` adds only the cell (i, j) to the coalition's map (not row i
            and column j), and its weights are a softmax of the coalition's already re-softmaxed
            weights together with the raw weights of i and j; `v(C + {i})` and `v(C + {j})` add
            the whole row i (over the coalition's frames) or column j. "standard" is the textbook
            interaction of the WTI game, where i brings its whole row and j its whole column.
        chunk_size: (word, frame, sample) evaluations per chunk, rounded down to whole samples
            (at least one); by default as many as fit in `CPU_CHUNK_MEMORY_BYTES`
            (`ACCELERATOR_CHUNK_MEMORY_BYTES` on other devices). The result does not depend on it
            beyond float rounding.
        coalitions: pre-drawn `(word_members, frame_members)` as `draw_coalitions` returns them,
            used instead of drawing (then `num_samples` must equal their count and `generator`
            stays None). Members are intersected with the masks.

    Sample s draws every word and frame of an item in or out with probability 0.5, and label (i, j)
    uses that draw without i and j: each label averages over exactly the official distribution of
    coalitions (every other player in with probability 0.5, independently), with the official
    variance. But one draw serves all pairs of an item, where the official draws anew for every
    pair, so the sampling errors of one map's labels are correlated. Sharing the draw is what lets
    a sample evaluate all pairs at once from its row and column maxima (`_interaction_per_sample`).
    """
    _check_semantics(semantics)
    scaled, text_valid, video_valid = _prepare_game(sim_map, text_mask, video_mask, text_weight, video_weight)
    batch_size, num_words, num_frames = scaled.shape
    if coalitions is None:
        word_members, frame_members = draw_coalitions(
            num_samples, batch_size, num_words, num_frames, generator=generator, device=scaled.device
        )
    else:
        word_members, frame_members = _check_coalitions(coalitions, num_samples, generator, scaled.shape)
    word_members = word_members.to(scaled.device) & text_valid
    frame_members = frame_members.to(scaled.device) & video_valid

    # Exponentials shifted by each item's largest real weight (softmax ratios do not change) and
    # 0 at padding, so that nothing a caller left at padded positions reaches real labels.
    text_weight = text_weight.to(scaled).masked_fill(~text_valid, 0.0)
    video_weight = video_weight.to(scaled).masked_fill(~video_valid, 0.0)
    text_exp = _shifted_exp(text_weight, text_valid)
    video_exp = _shifted_exp(video_weight, video_valid)

    if chunk_size is None:
        samples_per_chunk = _chunk_memory_bytes(scaled.device) // _bytes_per_sample(scaled)
    else:
        samples_per_chunk = chunk_size // (num_words * num_frames)
    samples_per_chunk = max(1, samples_per_chunk)

    total = torch.zeros_like(scaled)
    for start in range(0, num_samples, samples_per_chunk):
        stop = start + samples_per_chunk
        total += _interaction_per_sample(
            scaled,
            word_members[start:stop],
            frame_members[start:stop],
            text_weight,
            video_weight,
            text_exp,
            video_exp,
            official=semantics == "official",
        ).sum(0)
    labels = total / num_samples
    return labels.masked_fill(~(text_valid[:, :, None] & video_valid[:, None, :]), 0.0)


@torch.no_grad()
def exact_banzhaf_interaction(
    sim_map: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    text_weight: torch.Tensor,
    video_weight: torch.Tensor,
    semantics: str = "standard",
) -> torch.Tensor:
    """The expectation that `monte_carlo_banzhaf_interaction` estimates, `[batch, words, frames]`,
    by enumerating every coalition of the other players: 2 ** (words + frames - 2) per pair, so
    for small games only (at most `MAX_EXACT_PLAYERS` words + frames; 8 x 8 takes seconds).
    Written independently of the Monte Carlo code, straight from the value function, to serve as
    its ground truth. Arguments as for `monte_carlo_banzhaf_interaction`."""
    _check_semantics(semantics)
    scaled, text_valid, video_valid = _prepare_game(sim_map, text_mask, video_mask, text_weight, video_weight)
    batch_size, num_words, num_frames = scaled.shape
    if num_words + num_frames > MAX_EXACT_PLAYERS:
        raise ValueError(
            f"exact_banzhaf_interaction enumerates 2**(words + frames - 2) coalitions per pair; "
            f"{num_words} words + {num_frames} frames exceed its limit of {MAX_EXACT_PLAYERS} players. "
            "Use monte_carlo_banzhaf_interaction for games this large."
        )
    text_weight = text_weight.to(scaled)
    video_weight = video_weight.to(scaled)
    num_others = num_words + num_frames - 2
    num_coalitions = 2**num_others
    bytes_per_coalition = 8 * batch_size * num_words * num_frames * scaled.element_size()
    coalitions_per_chunk = max(1, _chunk_memory_bytes(scaled.device) // bytes_per_coalition)
    labels = torch.zeros_like(scaled)
    for i in range(num_words):
        for j in range(num_frames):
            other_words = [t for t in range(num_words) if t != i]
            other_frames = [v for v in range(num_frames) if v != j]
            interaction_sum = torch.zeros(batch_size, dtype=scaled.dtype, device=scaled.device)
            for start in range(0, num_coalitions, coalitions_per_chunk):
                codes = torch.arange(start, min(start + coalitions_per_chunk, num_coalitions), device=scaled.device)
                bits = (codes[:, None] >> torch.arange(num_others, device=scaled.device)) & 1 == 1
                words_in = torch.zeros(len(codes), 1, num_words, dtype=torch.bool, device=scaled.device)
                frames_in = torch.zeros(len(codes), 1, num_frames, dtype=torch.bool, device=scaled.device)
                words_in[:, 0, other_words] = bits[:, : num_words - 1]
                frames_in[:, 0, other_frames] = bits[:, num_words - 1 :]
                interaction_sum += _interaction_by_definition(
                    scaled, words_in & text_valid, frames_in & video_valid, text_weight, video_weight, i, j, semantics
                ).sum(0)
            labels[:, i, j] = interaction_sum / num_coalitions
    return labels.masked_fill(~(text_valid[:, :, None] & video_valid[:, None, :]), 0.0)


def _check_semantics(semantics: str) -> None:
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")


def _prepare_game(sim_map, text_mask, video_mask, text_weight, video_weight):
    """Checks shapes; returns the x1000 map (at least float32, padded cells 0) and boolean masks."""
    if sim_map.dim() != 3:
        raise ValueError(f"sim_map must be [batch, words, frames], got shape {tuple(sim_map.shape)}")
    batch_size, num_words, num_frames = sim_map.shape
    for name, tensor, shape in (
        ("text_mask", text_mask, (batch_size, num_words)),
        ("video_mask", video_mask, (batch_size, num_frames)),
        ("text_weight", text_weight, (batch_size, num_words)),
        ("video_weight", video_weight, (batch_size, num_frames)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match sim_map, got {tuple(tensor.shape)}")
    dtype = torch.promote_types(sim_map.dtype, torch.float32)
    text_valid = text_mask.to(sim_map.device) != 0
    video_valid = video_mask.to(sim_map.device) != 0
    cell_valid = text_valid[:, :, None] & video_valid[:, None, :]
    scaled = torch.where(cell_valid, sim_map.to(dtype) * LABEL_SIMILARITY_SCALE, 0.0)
    return scaled, text_valid, video_valid


def _check_coalitions(coalitions, num_samples, generator, shape):
    word_members, frame_members = coalitions
    batch_size, num_words, num_frames = shape
    if tuple(word_members.shape) != (num_samples, batch_size, num_words) or tuple(frame_members.shape) != (
        num_samples,
        batch_size,
        num_frames,
    ):
        raise ValueError(
            f"coalitions must be [num_samples={num_samples}, batch, words] and [num_samples, batch, frames] "
            f"for sim_map {tuple(shape)}, got {tuple(word_members.shape)} and {tuple(frame_members.shape)}"
        )
    if generator is not None:
        raise ValueError("pass either coalitions or a generator to draw them, not both")
    return word_members.bool(), frame_members.bool()


def _shifted_exp(weight: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    shift = weight.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, 0.0)
    return torch.exp(weight - shift).masked_fill(~valid, 0.0)


def _chunk_memory_bytes(device: torch.device) -> int:
    return CPU_CHUNK_MEMORY_BYTES if device.type == "cpu" else ACCELERATOR_CHUNK_MEMORY_BYTES


def _bytes_per_sample(scaled: torch.Tensor) -> int:
    """Peak working memory of one sample in `_interaction_per_sample`, counted from its live
    tensors: about 10 [batch, words, frames] tensors and the mixed-softmax [batch, players,
    players] weights with one temporary each (the growth of the peak resident set measured on CPU
    is 30 to 50% of this)."""
    batch_size, num_words, num_frames = scaled.shape
    elements = batch_size * (10 * num_words * num_frames + 2 * (num_words**2 + num_frames**2))
    return elements * scaled.element_size()


def _inverse_or_zero(normaliser: torch.Tensor) -> torch.Tensor:
    # An empty side of a coalition has no weight mass; its sums are 0 and so is its value.
    return torch.where(normaliser > 0, 1.0 / normaliser, 0.0)


def _leave_one_out_max(values: torch.Tensor, dim: int) -> torch.Tensor:
    """For every position k along `dim`, the max of `values` over the other positions (-inf if
    there are none). Overwrites `values`."""
    if values.shape[dim] == 1:
        return values.fill_(float("-inf"))
    first, first_index = values.max(dim, keepdim=True)
    second = values.scatter_(dim, first_index, float("-inf")).max(dim, keepdim=True).values
    # Only the position holding the max (one of them, on ties) loses it.
    return first.expand_as(values).scatter(dim, first_index, second)


def _coalition_average(values, member_weight, player_weight, inverse_normaliser, players_dim):
    """For every player k along `players_dim` (words: -2, frames: -1) of `values` [s, b, words,
    frames]: the sum over the drawn members other than k of w_m * values, plus
    `player_weight[k]` * values at k (0 leaves k out), times `inverse_normaliser[k]`. That is the
    sum over all drawn members (a matrix product) corrected at k, so no [.., k, m] tensor is built."""
    correction = player_weight - member_weight
    if players_dim == -2:
        total = member_weight.unsqueeze(-2) @ values  # [s, b, 1, frames]
        return torch.addcmul(total, correction.unsqueeze(-1), values).mul_(inverse_normaliser.unsqueeze(-1))
    total = values @ member_weight.unsqueeze(-1)  # [s, b, words, 1]
    return torch.addcmul(total, correction.unsqueeze(-2), values).mul_(inverse_normaliser.unsqueeze(-2))


def _mixed_softmax(members, member_weight, inverse_normaliser, raw_weight):
    """The official weights of `v(C + {i, j})` on one side, for every player k of that side as i
    (or j): softmax over C + {k} of the coalition's re-softmaxed weights w_m = e_m / Z_k (members
    m != k) and k's raw weight p_k. Returns exp(w_m) `[s, b, k, m]` (0 outside C) and, per k,
    the factor that turns it into the member's softmax weight, and k's own weight.

    The softmax is shifted by max(p_k, 0) (p_k alone when C is empty) so that every term stays
    finite whatever the weights, the largest being about 1: each w_m lies in (0, 1]."""
    resoftmaxed = inverse_normaliser.unsqueeze(-1) * member_weight.unsqueeze(-2)
    # m = k is not in C + {k} as a member; zeroing it before exp also keeps e_k / Z_k from overflowing.
    resoftmaxed.diagonal(dim1=-2, dim2=-1).zero_()
    members_exp = resoftmaxed.exp_().mul_(members.unsqueeze(-2))
    members_exp.diagonal(dim1=-2, dim2=-1).zero_()
    shift = torch.where(inverse_normaliser > 0, raw_weight.clamp_min(0.0), raw_weight)
    members_scale, own_term = torch.exp(-shift), torch.exp(raw_weight - shift)
    normaliser = members_exp.sum(-1) * members_scale + own_term
    return members_exp, members_scale / normaliser, own_term / normaliser


def _interaction_per_sample(
    scaled, word_members, frame_members, text_weight, video_weight, text_exp, video_exp, official
) -> torch.Tensor:
    """`v(C + {i, j}) - v(C + {i}) - v(C + {j}) + v(C)` for every sample, word i and frame j,
    `[samples, batch, words, frames]`, where C is the sample's drawn coalition without i and j.

    Each coalition value is (t2v + v2t) / 2, t2v a weighted mean of row maxima over the words, v2t
    of column maxima over the frames. For sample s, row t's max in a coalition without frame j is
    the max over the other frames of the row with non-members zeroed (`_leave_one_out_max`), clamped
    at 0 since cell (t, j) is then a zero in the row; with j joining it is that max or S[t, j],
    whichever is larger (a zero counts only if a frame other than j is out). Columns likewise.
    Weighted means over "the drawn words without i" or "... plus i" are the mean over all drawn
    words corrected at i (`_coalition_average`). So a sample costs O(words * frames) for all its
    pairs, plus, for the official mixed softmax, O(words^2 + frames^2) weights and two batched
    matrix products.
    """
    map_ = scaled[None]
    word_in = word_members.to(scaled.dtype)
    frame_in = frame_members.to(scaled.dtype)
    row_max_others = _leave_one_out_max(map_ * frame_in.unsqueeze(-2), dim=-1)  # [s, b, t, j]
    row_max_with_j = torch.maximum(row_max_others, map_)
    row_max = row_max_others.clamp_min_(0.0)
    row_gain_from_j = row_max_with_j.sub_(row_max)  # what j's joining adds to the row's max
    column_max_others = _leave_one_out_max(map_ * word_in.unsqueeze(-1), dim=-2)  # [s, b, i, v]
    column_max_with_i = torch.maximum(column_max_others, map_)
    column_max = column_max_others.clamp_min_(0.0)
    column_gain_from_i = column_max_with_i.sub_(column_max)

    # Softmax normalisers of the words without / with i and of the frames without / with j.
    word_weight = word_in * text_exp  # e_t of the drawn words, 0 elsewhere
    frame_weight = frame_in * video_exp
    words_without_i = word_weight.sum(-1, keepdim=True) - word_weight
    frames_without_j = frame_weight.sum(-1, keepdim=True) - frame_weight
    inverse_words = _inverse_or_zero(words_without_i)
    inverse_words_with_i = _inverse_or_zero(words_without_i + text_exp)
    inverse_frames = _inverse_or_zero(frames_without_j)
    inverse_frames_with_j = _inverse_or_zero(frames_without_j + video_exp)
    left_out = torch.zeros((), dtype=scaled.dtype, device=scaled.device)

    def t2v(row_values, with_i):
        own, inverse = (text_exp, inverse_words_with_i) if with_i else (left_out, inverse_words)
        return _coalition_average(row_values, word_weight, own, inverse, players_dim=-2)

    def v2t(column_values, with_j):
        own, inverse = (video_exp, inverse_frames_with_j) if with_j else (left_out, inverse_frames)
        return _coalition_average(column_values, frame_weight, own, inverse, players_dim=-1)

    # t2v and v2t are linear in the maxima. Word i joining C adds row i to t2v and raises each
    # column max by its gain from i; frame j likewise. So, doubling every value:
    #   2 v(C + {i}) = t2v(C + {i}) + v2t(C) + v2t(gain from i, over C)
    #   2 v(C + {j}) = t2v(C) + t2v(gain from j, over C) + v2t(C + {j})
    #   2 v(C + {i, j}) = t2v(C + {i}) + t2v(gain from j, over C + {i}) + v2t(C + {j}) + v2t(gain from i, over C + {j})
    # (the last in the standard semantics), which leaves four weighted means per interaction.
    if official:
        value_with_pair = _official_value_with_pair(
            map_,
            row_max,
            column_max,
            _mixed_softmax(word_in, word_weight, inverse_words, text_weight),
            _mixed_softmax(frame_in, frame_weight, inverse_frames, video_weight),
        )
        twice_interaction = value_with_pair.sub_(t2v(row_max, with_i=True))
        twice_interaction.sub_(t2v(row_gain_from_j, with_i=False))
        twice_interaction.sub_(v2t(column_max, with_j=True))
        twice_interaction.sub_(v2t(column_gain_from_i, with_j=False))
    else:
        twice_interaction = t2v(row_gain_from_j, with_i=True).sub_(t2v(row_gain_from_j, with_i=False))
        twice_interaction.add_(v2t(column_gain_from_i, with_j=True))
        twice_interaction.sub_(v2t(column_gain_from_i, with_j=False))
    return twice_interaction.mul_(0.5)


def _official_value_with_pair(map_, row_max, column_max, word_softmax, frame_softmax):
    """t2v + v2t of the official `v(C + {i, j})`, `[s, b, i, j]`: the coalition's map plus the
    single cell (i, j), weighted by the mixed softmax (`_mixed_softmax` of each side). The
    coalition's rows and columns keep their maxima without i and j (their cells in row i / column
    j stay 0); row i and column j hold only S[i, j] among zeros, so their max is max(S[i, j], 0),
    or S[i, j] itself when the map has a single frame (row) or a single word (column)."""
    num_words, num_frames = map_.shape[-2:]
    word_exp, word_member_factor, own_word_weight = word_softmax
    frame_exp, frame_member_factor, own_frame_weight = frame_softmax
    cell_row_max = map_.clamp_min(0.0) if num_frames > 1 else map_
    cell_column_max = map_.clamp_min(0.0) if num_words > 1 else map_
    t2v = (word_exp @ row_max).mul_(word_member_factor.unsqueeze(-1))
    t2v.addcmul_(own_word_weight.unsqueeze(-1), cell_row_max)
    v2t = (column_max @ frame_exp.transpose(-1, -2)).mul_(frame_member_factor.unsqueeze(-2))
    v2t.addcmul_(own_frame_weight.unsqueeze(-2), cell_column_max)
    return t2v.add_(v2t)


def _interaction_by_definition(scaled, words_in, frames_in, text_weight, video_weight, i, j, semantics):
    """`v(C + {i, j}) - v(C + {i}) - v(C + {j}) + v(C)` for the coalitions C = (words_in,
    frames_in) `[coalitions, batch, players]` (i and j out), each value computed on its own
    masked map as the value function defines it."""
    word_positions = torch.arange(scaled.shape[1], device=scaled.device)
    frame_positions = torch.arange(scaled.shape[2], device=scaled.device)
    words_with_i = words_in | (word_positions == i)
    frames_with_j = frames_in | (frame_positions == j)
    value_c = _coalition_value(scaled, words_in, frames_in, text_weight, video_weight)
    value_c_i = _coalition_value(scaled, words_with_i, frames_in, text_weight, video_weight)
    value_c_j = _coalition_value(scaled, words_in, frames_with_j, text_weight, video_weight)
    if semantics == "standard":
        value_c_ij = _coalition_value(scaled, words_with_i, frames_with_j, text_weight, video_weight)
    else:
        cells = words_in[..., :, None] & frames_in[..., None, :]
        cells[..., i, j] = True
        mixed_text = torch.softmax(text_weight.masked_fill(~words_in, MASKED_WEIGHT_LOGIT), -1)
        mixed_text = mixed_text.masked_fill(~words_in, MASKED_WEIGHT_LOGIT)
        mixed_text[..., i] = text_weight[:, i]
        mixed_video = torch.softmax(video_weight.masked_fill(~frames_in, MASKED_WEIGHT_LOGIT), -1)
        mixed_video = mixed_video.masked_fill(~frames_in, MASKED_WEIGHT_LOGIT)
        mixed_video[..., j] = video_weight[:, j]
        value_c_ij = _wti_value(scaled, cells, mixed_text, mixed_video)
    return value_c_ij - value_c_i - value_c_j + value_c


def _coalition_value(scaled, words_in, frames_in, text_weight, video_weight):
    cells = words_in[..., :, None] & frames_in[..., None, :]
    text_logits = text_weight.masked_fill(~words_in, MASKED_WEIGHT_LOGIT)
    video_logits = video_weight.masked_fill(~frames_in, MASKED_WEIGHT_LOGIT)
    return _wti_value(scaled, cells, text_logits, video_logits)


def _wti_value(scaled, cells, text_logits, video_logits):
    """WTI similarity of the map restricted to `cells` (others 0, still in the max), with the
    weights softmax(`text_logits`), softmax(`video_logits`)."""
    restricted = torch.where(cells, scaled, 0.0)
    t2v = (torch.softmax(text_logits, -1) * restricted.amax(-1)).sum(-1)
    v2t = (torch.softmax(video_logits, -1) * restricted.amax(-2)).sum(-1)
    return (t2v + v2t) / 2.0
