"""Banzhaf interaction labels (docs/banzhaf.md): the vectorised Monte Carlo estimator against a slow
loop written here from docs/banzhaf.md, against exact enumeration, and on closed-form cases."""

import math

import pytest
import torch

from hbi_transformers.training.banzhaf_labels import (
    LABEL_SIMILARITY_SCALE,
    MAX_EXACT_PLAYERS,
    draw_coalitions,
    exact_banzhaf_interaction,
    monte_carlo_banzhaf_interaction,
)

DTYPE = torch.float64
MASKED_LOGIT = -9e15


@pytest.fixture(autouse=True)
def one_thread():
    """These games are tiny: on a small shared machine, OpenMP workers spinning between ops cost
    far more than the work (seen: 1.2 s against 4 to 15 s for this file on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_game(batch=3, words=4, frames=3, seed=0, padded=True):
    """Similarities in [-0.2, 0.6] (some negative, so zero cells matter in the max), weights
    softmaxed over the real tokens as the estimator passes them. With padding, item 1 lacks its
    last word and frame (where it has more than one), item 2 has a single real word and frame."""
    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(batch, words, dtype=torch.long)
    video_mask = torch.ones(batch, frames, dtype=torch.long)
    if padded and batch > 1:
        text_mask[1, 1:] = torch.arange(1, words) < words - 1
        video_mask[1, 1:] = torch.arange(1, frames) < frames - 1
    if padded and batch > 2:
        text_mask[2, 1:], video_mask[2, 1:] = 0, 0
    sim_map = torch.rand(batch, words, frames, generator=generator, dtype=DTYPE) * 0.8 - 0.2
    sim_map = sim_map * text_mask[:, :, None] * video_mask[:, None, :]
    text_logits = torch.randn(batch, words, generator=generator, dtype=DTYPE)
    video_logits = torch.randn(batch, frames, generator=generator, dtype=DTYPE)
    text_weight = torch.softmax(text_logits.masked_fill(text_mask == 0, MASKED_LOGIT), -1)
    video_weight = torch.softmax(video_logits.masked_fill(video_mask == 0, MASKED_LOGIT), -1)
    return sim_map, text_mask, video_mask, text_weight, video_weight


def every_coalition(batch, words, frames):
    """All 2 ** (words + frames) membership patterns as samples: each pair (i, j) then meets every
    coalition of the other players equally often, so the Monte Carlo mean is the exact value."""
    codes = torch.arange(2 ** (words + frames))
    bits = (codes[:, None] >> torch.arange(words + frames)) & 1 == 1
    return bits[:, None, :words].expand(-1, batch, -1), bits[:, None, words:].expand(-1, batch, -1)


# ------------------------------------------------------------------------------------------
# Slow reference, plain Python from docs/banzhaf.md: players are words and frames; a coalition's map
# keeps its cells and zeroes the others (zeros take part in the max); its weights are the given
# weights re-softmaxed over its members (others filled with -9e15).


def softmax(logits):
    top = max(logits)
    exps = [math.exp(value - top) for value in logits]
    return [value / sum(exps) for value in exps]


def wti_value(cells, text_logits, video_logits):
    words, frames = len(cells), len(cells[0])
    text_weights, video_weights = softmax(text_logits), softmax(video_logits)
    t2v = sum(text_weights[t] * max(cells[t]) for t in range(words))
    v2t = sum(video_weights[v] * max(cells[t][v] for t in range(words)) for v in range(frames))
    return (t2v + v2t) / 2


def coalition_value(scaled, words_in, frames_in, text_weight, video_weight):
    words, frames = range(len(scaled)), range(len(scaled[0]))
    cells = [[scaled[t][v] if t in words_in and v in frames_in else 0.0 for v in frames] for t in words]
    text_logits = [text_weight[t] if t in words_in else MASKED_LOGIT for t in words]
    video_logits = [video_weight[v] if v in frames_in else MASKED_LOGIT for v in frames]
    return cells, text_logits, video_logits, wti_value(cells, text_logits, video_logits)


def loop_interaction(
    sim_map, text_mask, video_mask, text_weight, video_weight, word_members, frame_members, semantics
):
    """Per item, word i, frame j and sample: v(C+{i,j}) - v(C+{i}) - v(C+{j}) + v(C), C = the
    sample's drawn real players without i and j; official: C+{i,j} adds only the cell (i, j),
    its weights softmax the coalition's re-softmaxed weights with the raw weights of i and j."""
    batch, words, frames = sim_map.shape
    labels = torch.zeros(batch, words, frames, dtype=DTYPE)
    for b in range(batch):
        scaled = (sim_map[b] * 1000).tolist()
        p, q = text_weight[b].tolist(), video_weight[b].tolist()
        for i in range(words):
            for j in range(frames):
                if not (text_mask[b, i] and video_mask[b, j]):
                    continue
                total = 0.0
                for sample in range(word_members.shape[0]):
                    drawn_words = word_members[sample, b] & (text_mask[b] != 0)
                    drawn_frames = frame_members[sample, b] & (video_mask[b] != 0)
                    words_in = {t for t in range(words) if drawn_words[t] and t != i}
                    frames_in = {v for v in range(frames) if drawn_frames[v] and v != j}
                    cells, text_logits, video_logits, value = coalition_value(scaled, words_in, frames_in, p, q)
                    value_i = coalition_value(scaled, words_in | {i}, frames_in, p, q)[3]
                    value_j = coalition_value(scaled, words_in, frames_in | {j}, p, q)[3]
                    if semantics == "standard":
                        value_ij = coalition_value(scaled, words_in | {i}, frames_in | {j}, p, q)[3]
                    else:
                        cells[i][j] = scaled[i][j]
                        resoftmaxed_text, resoftmaxed_video = softmax(text_logits), softmax(video_logits)
                        mixed_text = [w if t in words_in else MASKED_LOGIT for t, w in enumerate(resoftmaxed_text)]
                        mixed_video = [w if v in frames_in else MASKED_LOGIT for v, w in enumerate(resoftmaxed_video)]
                        mixed_text[i], mixed_video[j] = p[i], q[j]
                        value_ij = wti_value(cells, mixed_text, mixed_video)
                    total += value_ij - value_i - value_j + value
                labels[b, i, j] = total / word_members.shape[0]
    return labels


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("semantics", ["official", "standard"])
@pytest.mark.parametrize("shape", [(3, 4, 3), (2, 3, 1), (2, 1, 3)])
def test_vectorised_equals_slow_loop_on_the_same_draws(semantics, shape):
    batch, words, frames = shape
    game = make_game(batch, words, frames, seed=1)
    generator = torch.Generator().manual_seed(2)
    word_members, frame_members = draw_coalitions(12, batch, words, frames, generator=generator)
    # Force the edge cases in: everyone in (full coalitions: no zero cell in the max) and no one in.
    word_members[0], frame_members[0] = True, True
    word_members[1], frame_members[1] = False, False
    word_members[2], frame_members[2] = True, False
    labels = monte_carlo_banzhaf_interaction(
        *game, num_samples=12, semantics=semantics, coalitions=(word_members, frame_members)
    )
    expected = loop_interaction(*game, word_members, frame_members, semantics)
    torch.testing.assert_close(labels, expected, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("semantics", ["official", "standard"])
def test_generator_draws_the_documented_coalitions(semantics):
    game = make_game()

    def labels(**draw):
        return monte_carlo_banzhaf_interaction(*game, num_samples=20, semantics=semantics, **draw)

    seeded = labels(generator=torch.Generator().manual_seed(5))
    coalitions = draw_coalitions(20, 3, 4, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(seeded, labels(coalitions=coalitions))
    assert torch.equal(seeded, labels(generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(seeded, labels(generator=torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("semantics", ["official", "standard"])
def test_every_coalition_once_gives_the_exact_value(semantics):
    game = make_game()
    exact = exact_banzhaf_interaction(*game, semantics=semantics)
    coalitions = every_coalition(3, 4, 3)
    mean = monte_carlo_banzhaf_interaction(
        *game, num_samples=len(coalitions[0]), semantics=semantics, coalitions=coalitions
    )
    torch.testing.assert_close(mean, exact, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("semantics", ["official", "standard"])
def test_monte_carlo_converges_to_exact(semantics):
    """4 words x 3 frames, batch 2: the mean of 40 independent runs of 250 samples is within 5
    standard errors (estimated from the runs' spread) of the exact expectation."""
    game = make_game(batch=2, seed=3)
    exact = exact_banzhaf_interaction(*game, semantics=semantics)
    generator = torch.Generator().manual_seed(4)
    runs = torch.stack(
        [
            monte_carlo_banzhaf_interaction(*game, num_samples=250, semantics=semantics, generator=generator)
            for _ in range(40)
        ]
    )
    mean, standard_error = runs.mean(0), runs.std(0) / math.sqrt(len(runs))
    assert exact.abs().max() > 10  # a game worth estimating
    assert ((mean - exact).abs() <= 5 * standard_error + 1e-9).all(), ((mean - exact) / standard_error)


def test_exact_matches_slow_loop_over_every_coalition():
    """The exact enumeration is itself checked against the reference loop (run over every coalition)."""
    game = make_game(batch=2, words=3, frames=2, seed=7)
    word_members, frame_members = every_coalition(2, 3, 2)
    for semantics in ("official", "standard"):
        expected = loop_interaction(*game, word_members, frame_members, semantics)
        exact = exact_banzhaf_interaction(*game, semantics=semantics)
        torch.testing.assert_close(exact, expected, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("similarity", [0.4, -0.3])
@pytest.mark.parametrize("semantics", ["official", "standard"])
def test_single_word_and_frame_is_worth_its_similarity_times_1000(semantics, similarity):
    """Alone, the pair's only coalitions are empty (worth 0) but for both together: the whole map,
    where neither max meets a zero cell."""
    weight = torch.ones(1, 1, dtype=DTYPE)
    game = (torch.tensor([[[similarity]]], dtype=DTYPE), torch.ones(1, 1), torch.ones(1, 1), weight, weight)
    assert LABEL_SIMILARITY_SCALE == 1000
    for labels in (
        monte_carlo_banzhaf_interaction(*game, num_samples=3, semantics=semantics),
        exact_banzhaf_interaction(*game, semantics=semantics),
    ):
        torch.testing.assert_close(labels, torch.tensor([[[1000 * similarity]]], dtype=DTYPE))


def test_one_word_two_frames_by_hand():
    """Label of (word 0, frame 0); the only other player is frame 1, in or out with probability 1/2."""
    s00, s01, q0, q1 = 0.3, -0.2, 0.7, 0.3
    sim_map, video_weight = torch.tensor([[[s00, s01]]], dtype=DTYPE), torch.tensor([[q0, q1]], dtype=DTYPE)
    game = (sim_map, torch.ones(1, 1), torch.ones(1, 2), torch.ones(1, 1, dtype=DTYPE), video_weight)
    full_weight_0 = math.exp(q0) / (math.exp(q0) + math.exp(q1))
    # Frame 1 out: only v(C + {i, j}) is nonzero; row 0 holds a zero at frame 1, column 0 has no zero.
    frame_1_out = (max(s00, 0) + s00) / 2
    # Frame 1 in: v(C + {i}) is word 0 over frame 1 (a zero at frame 0); v(C) = v(C + {j}) = 0 (no words).
    value_with_word = (max(s01, 0) + s01) / 2
    standard_with_pair = (max(s00, s01) + full_weight_0 * s00 + (1 - full_weight_0) * s01) / 2
    # Official: only cell (0, 0) joins; frame 1's re-softmaxed weight (1.0 alone) mixes with q0.
    mixed_weight_0 = math.exp(q0) / (math.exp(q0) + math.exp(1.0))
    official_with_pair = (max(s00, 0) + mixed_weight_0 * s00) / 2
    expected = {
        "standard": 1000 * (frame_1_out + standard_with_pair - value_with_word) / 2,
        "official": 1000 * (frame_1_out + official_with_pair - value_with_word) / 2,
    }
    for semantics, value in expected.items():
        exact = exact_banzhaf_interaction(*game, semantics=semantics)
        mean = monte_carlo_banzhaf_interaction(*game, 8, semantics=semantics, coalitions=every_coalition(1, 1, 2))
        assert exact[0, 0, 0].item() == pytest.approx(value, rel=1e-12)
        assert mean[0, 0, 0].item() == pytest.approx(value, rel=1e-12)


def test_null_players_have_zero_interaction():
    """A word whose row is all zero and whose weight vanishes (exp(-1e4) = 0) never changes a
    coalition's value when the other similarities are positive: it adds no weight, no row max
    and no column max. Likewise a frame. So it interacts with nobody (standard semantics)."""
    sim_map, text_mask, video_mask, text_weight, video_weight = make_game(batch=2, padded=False, seed=9)
    sim_map = sim_map.abs() + 0.05
    sim_map[0, 2, :], text_weight[0, 2] = 0.0, -1e4
    sim_map[1, :, 1], video_weight[1, 1] = 0.0, -1e4
    game = (sim_map, text_mask, video_mask, text_weight, video_weight)
    exact = exact_banzhaf_interaction(*game)
    generator = torch.Generator().manual_seed(0)
    estimate = monte_carlo_banzhaf_interaction(*game, num_samples=200, semantics="standard", generator=generator)
    for labels in (exact, estimate):
        assert labels[0, 2].abs().max() < 1e-9 and labels[1, :, 1].abs().max() < 1e-9
        assert labels[0, :2].abs().max() > 1 and labels[1, :, 0].abs().max() > 1


@pytest.mark.parametrize("semantics", ["official", "standard"])
def test_padding_gets_exactly_zero_and_cannot_leak(semantics):
    sim_map, text_mask, video_mask, text_weight, video_weight = make_game(batch=4, seed=11)
    text_mask[3] = 0  # an item without a single real word
    coalitions = draw_coalitions(30, 4, 4, 3, generator=torch.Generator().manual_seed(1))
    clean = monte_carlo_banzhaf_interaction(
        sim_map, text_mask, video_mask, text_weight, video_weight, 30, semantics=semantics, coalitions=coalitions
    )
    padded_cells = ~(text_mask.bool()[:, :, None] & video_mask.bool()[:, None, :])
    garbage_map = sim_map.masked_fill(padded_cells, float("nan"))
    garbage_map[1, 0, 2] = float("inf")
    garbage_text_weight = text_weight.masked_fill(text_mask == 0, 1e30)
    garbage_video_weight = video_weight.masked_fill(video_mask == 0, float("-inf"))
    labels = monte_carlo_banzhaf_interaction(
        garbage_map, text_mask, video_mask, garbage_text_weight, garbage_video_weight, 30,
        semantics=semantics, coalitions=coalitions,
    )
    assert torch.isfinite(labels).all()
    assert (labels[padded_cells] == 0).all() and (labels[3] == 0).all()
    torch.testing.assert_close(labels, clean, rtol=1e-12, atol=1e-9)
    assert (clean[~padded_cells] != 0).any()


@pytest.mark.parametrize("semantics", ["official", "standard"])
def test_labels_do_not_depend_on_batch_composition(semantics):
    game = make_game(batch=3, seed=13)
    word_members, frame_members = draw_coalitions(25, 3, 4, 3, generator=torch.Generator().manual_seed(3))
    coalitions = (word_members, frame_members)
    together = monte_carlo_banzhaf_interaction(*game, 25, semantics=semantics, coalitions=coalitions)
    for item in range(3):
        alone = monte_carlo_banzhaf_interaction(
            *(tensor[item : item + 1] for tensor in game),
            25,
            semantics=semantics,
            coalitions=(word_members[:, item : item + 1], frame_members[:, item : item + 1]),
        )
        torch.testing.assert_close(alone[0], together[item], rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("semantics", ["official", "standard"])
def test_chunk_size_does_not_change_the_result(semantics):
    game = make_game(seed=17)
    coalitions = draw_coalitions(37, 3, 4, 3, generator=torch.Generator().manual_seed(4))
    reference = monte_carlo_banzhaf_interaction(*game, 37, semantics=semantics, coalitions=coalitions)
    for chunk_size in (1, 12, 5 * 12, 37 * 12, 10**9):
        labels = monte_carlo_banzhaf_interaction(
            *game, 37, semantics=semantics, coalitions=coalitions, chunk_size=chunk_size
        )
        torch.testing.assert_close(labels, reference, rtol=1e-12, atol=1e-10)


def test_float32_input_agrees_with_float64():
    game = make_game(seed=19)
    coalitions = draw_coalitions(40, 3, 4, 3, generator=torch.Generator().manual_seed(5))
    labels64 = monte_carlo_banzhaf_interaction(*game, 40, coalitions=coalitions)
    labels32 = monte_carlo_banzhaf_interaction(*(tensor.float() for tensor in game), 40, coalitions=coalitions)
    assert labels32.dtype == torch.float32
    torch.testing.assert_close(labels32.double(), labels64, rtol=1e-4, atol=1e-3)


def test_official_labels_are_mostly_negative():
    """Spec section 4: with the official semantics most labels come out negative (v(C + {i, j})
    adds a single cell where v(C + {i}) and v(C + {j}) add whole rows and columns)."""
    generator = torch.Generator().manual_seed(23)
    batch, words, frames = 8, 24, 12
    text_mask = (torch.arange(words)[None] < torch.randint(6, words + 1, (batch, 1), generator=generator)).long()
    video_mask = torch.ones(batch, frames, dtype=torch.long)
    sim_map = (0.25 + 0.05 * torch.randn(batch, words, frames, generator=generator)) * text_mask[:, :, None]
    text_logits = 0.02 * torch.randn(batch, words, generator=generator)
    text_weight = torch.softmax(text_logits.masked_fill(text_mask == 0, MASKED_LOGIT), -1)
    video_weight = torch.softmax(0.02 * torch.randn(batch, frames, generator=generator), -1)
    game = (sim_map, text_mask, video_mask, text_weight, video_weight)
    labels = monte_carlo_banzhaf_interaction(*game, generator=generator)
    real = labels[text_mask.bool()[:, :, None].expand_as(labels)]
    assert (real < 0).float().mean() > 0.7 and real.mean() < 0


def test_invalid_arguments_are_rejected():
    game = make_game()
    with pytest.raises(ValueError, match="semantics"):
        monte_carlo_banzhaf_interaction(*game, semantics="textbook")
    with pytest.raises(ValueError, match="text_weight"):
        monte_carlo_banzhaf_interaction(game[0], game[1], game[2], game[3][:, :2], game[4])
    coalitions = draw_coalitions(5, 3, 4, 3)
    with pytest.raises(ValueError, match="num_samples"):
        monte_carlo_banzhaf_interaction(*game, num_samples=6, coalitions=coalitions)
    with pytest.raises(ValueError, match="not both"):
        monte_carlo_banzhaf_interaction(*game, num_samples=5, coalitions=coalitions, generator=torch.Generator())
    large = make_game(batch=1, words=MAX_EXACT_PLAYERS - 4, frames=5)
    with pytest.raises(ValueError, match="monte_carlo_banzhaf_interaction"):
        exact_banzhaf_interaction(*large)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    game = make_game(batch=4, words=6, frames=5, seed=29)
    coalitions = draw_coalitions(50, 4, 6, 5, generator=torch.Generator().manual_seed(6))
    cpu = monte_carlo_banzhaf_interaction(*game, 50, coalitions=coalitions)
    cuda = monte_carlo_banzhaf_interaction(
        *(tensor.cuda() for tensor in game), 50, coalitions=tuple(members.cuda() for members in coalitions)
    )
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-9, atol=1e-7)
    generated = monte_carlo_banzhaf_interaction(
        *(tensor.cuda() for tensor in game), 50, generator=torch.Generator(device="cuda").manual_seed(0)
    )
    assert generated.device.type == "cuda" and torch.isfinite(generated).all()
