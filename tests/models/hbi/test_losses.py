"""The HBI losses against independent loop computations (docs/training.md, docs/banzhaf.md).

First the loss terms (InfoNCE, the KL terms) against loops over rows and elements with math.log /
math.exp, and their gradients against central finite differences of those loops. Then the whole
training loss of `HBIModel`: from the model's own encoder outputs and level tokens (entity,
action, event), the test rebuilds with explicit loops over texts, videos, words, frames and rows
the WTI similarities, the per-level symmetric InfoNCE on `sim * exp(logit_scale)`, the per-level
Banzhaf KL between each student and the frozen teacher on the matched pairs' word-frame maps
(masked at the entity level), and the self-distillation of the action and event levels towards
the entity level."""

import math

import pytest
import torch
from conftest import make_batch, tiny_config

from hbi_transformers import HBIModel
from hbi_transformers.models.hbi.configuration_hbi import LEVEL_NAMES
from hbi_transformers.models.hbi.wti import LevelTokens, weighted_token_interaction
from hbi_transformers.models.hbi.losses import banzhaf_kl, info_nce, kl_divergence, symmetric_info_nce

DTYPE = torch.float64


# ------------------------------------------------------------------------------------------------
# Loop references (plain Python floats)
# ------------------------------------------------------------------------------------------------
def log_sum_exp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def as_lists(values):
    return values.tolist() if torch.is_tensor(values) else values


def loop_info_nce(logits):
    rows = as_lists(logits)
    n = len(rows)
    return sum(-(rows[i][i] - log_sum_exp(rows[i])) for i in range(n)) / n


def loop_info_nce_columns(logits):
    rows = as_lists(logits)
    n = len(rows)
    total = 0.0
    for j in range(n):
        column = [rows[i][j] for i in range(n)]
        total += -(rows[j][j] - log_sum_exp(column))
    return total / n


def loop_symmetric_info_nce(logits, scale=1.0):
    scaled = [[value * scale for value in row] for row in as_lists(logits)]
    return (loop_info_nce(scaled) + loop_info_nce_columns(scaled)) / 2


def kl_rows(input_rows, target_rows):
    """sum over rows of KL(softmax(target_row) || softmax(input_row))."""
    total = 0.0
    for x, y in zip(input_rows, target_rows):
        lse_x, lse_y = log_sum_exp(x), log_sum_exp(y)
        for j in range(len(x)):
            log_p = y[j] - lse_y
            log_q = x[j] - lse_x
            total += math.exp(log_p) * (log_p - log_q)
    return total


def flat_rows(tensor):
    last = tensor.shape[-1]
    return tensor.reshape(-1, last).tolist()


def loop_kl(input_logits, target_logits):
    """The official KL(input, target): KL(softmax(target) || softmax(input)) over the last axis,
    summed, divided by the number of elements."""
    return kl_rows(flat_rows(input_logits), flat_rows(target_logits)) / input_logits.numel()


def loop_banzhaf_kl(student, teacher):
    """KL over rows (b, t) normalising over frames v, plus KL over rows (v, t) normalising over
    the batch b (torch's .T on a 3-D tensor reverses all axes)."""
    s, t = as_lists(student), as_lists(teacher)
    batch, words, frames = len(s), len(s[0]), len(s[0][0])
    first_in = [s[b][w] for b in range(batch) for w in range(words)]
    first_target = [t[b][w] for b in range(batch) for w in range(words)]
    second_in = [[s[b][w][v] for b in range(batch)] for v in range(frames) for w in range(words)]
    second_target = [[t[b][w][v] for b in range(batch)] for v in range(frames) for w in range(words)]
    numel = batch * words * frames
    return kl_rows(first_in, first_target) / numel + kl_rows(second_in, second_target) / numel


def finite_difference(function, tensor, step=1e-6):
    grad = torch.zeros_like(tensor)
    flat = tensor.reshape(-1)
    for index in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[index] += step
        minus[index] -= step
        grad.view(-1)[index] = (function(plus.view_as(tensor)) - function(minus.view_as(tensor))) / (2 * step)
    return grad


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE) * scale


# ------------------------------------------------------------------------------------------------
# InfoNCE
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, scale", [(1, 1.0), (3, 1.0), (5, 14.3), (4, 100.0)])
def test_info_nce_matches_loop(n, scale):
    logits = randn(n, n, seed=n, scale=scale)
    assert info_nce(logits).item() == pytest.approx(loop_info_nce(logits), rel=1e-12, abs=1e-12)
    assert info_nce(logits.t()).item() == pytest.approx(loop_info_nce_columns(logits), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("n", [2, 4, 6])
def test_symmetric_info_nce_matches_loop_and_gradient(n):
    logits = randn(n, n, seed=10 + n, scale=5.0).requires_grad_()
    loss = symmetric_info_nce(logits)
    assert loss.item() == pytest.approx(loop_symmetric_info_nce(logits.detach()), rel=1e-12, abs=1e-12)
    loss.backward()
    expected = finite_difference(loop_symmetric_info_nce, logits.detach())
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-8)
    # Not symmetric in general: the two directions differ, and both enter.
    assert loop_info_nce(logits.detach()) != pytest.approx(loop_info_nce_columns(logits.detach()))


def test_info_nce_perfect_match_is_near_zero():
    logits = torch.eye(3, dtype=DTYPE) * 100
    assert info_nce(logits).item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# KL
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3, 4), (4, 4)])
def test_kl_divergence_matches_loop(shape):
    x, y = randn(*shape, seed=1, scale=2.0), randn(*shape, seed=2, scale=2.0)
    got = kl_divergence(x, y)
    assert got.item() == pytest.approx(loop_kl(x, y), rel=1e-12, abs=1e-14)
    # The official reduction divides by the number of elements, not rows, and the direction is
    # KL(softmax(target) || softmax(input)); the loop tells both alternatives apart.
    rows = x.numel() // shape[-1]
    assert got.item() != pytest.approx(loop_kl(x, y) * x.numel() / rows)
    assert got.item() != pytest.approx(loop_kl(y, x))


def test_kl_divergence_gradients_reach_both_arguments():
    x = randn(3, 4, seed=3).requires_grad_()
    y = randn(3, 4, seed=4).requires_grad_()
    kl_divergence(x, y).backward()
    assert x.grad is not None and y.grad is not None  # the target is not detached
    assert y.grad.abs().max() > 1e-4
    torch.testing.assert_close(x.grad, finite_difference(lambda v: loop_kl(v, y.detach()), x.detach()), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(y.grad, finite_difference(lambda v: loop_kl(x.detach(), v), y.detach()), rtol=1e-5, atol=1e-9)


def test_kl_divergence_of_equal_logits_is_zero_and_shift_invariant():
    x = randn(2, 5, seed=5)
    assert kl_divergence(x, x).item() == pytest.approx(0.0, abs=1e-15)
    assert kl_divergence(x, x + 3.0).item() == pytest.approx(0.0, abs=1e-14)


def test_kl_divergence_no_future_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kl_divergence(randn(2, 3, seed=6), randn(2, 3, seed=7))


# ------------------------------------------------------------------------------------------------
# Banzhaf KL
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 2, 2), (4, 1, 3), (1, 3, 2)])
def test_banzhaf_kl_matches_loop(shape):
    student, teacher = randn(*shape, seed=11, scale=2.0), randn(*shape, seed=12, scale=2.0)
    got = banzhaf_kl(student, teacher)
    assert got.item() == pytest.approx(loop_banzhaf_kl(student, teacher), rel=1e-12, abs=1e-14)


def test_banzhaf_kl_second_term_normalises_over_the_batch_axis():
    student, teacher = randn(3, 4, 5, seed=13, scale=2.0), randn(3, 4, 5, seed=14, scale=2.0)
    got = banzhaf_kl(student, teacher).item()
    first = loop_kl(student, teacher)
    reversed_axes = loop_kl(student.permute(2, 1, 0), teacher.permute(2, 1, 0))
    assert got == pytest.approx(first + reversed_axes, rel=1e-12)
    # A matrix-style transpose of the last two axes (normalising over words) is something else.
    words_axis = loop_kl(student.transpose(1, 2), teacher.transpose(1, 2))
    assert abs(got - (first + words_axis)) > 1e-3
    # So is leaving the batch axis alone in the second term (normalising over the frames again).
    assert abs(got - 2 * first) > 1e-3


def test_banzhaf_kl_gradients():
    student = randn(2, 3, 4, seed=15).requires_grad_()
    teacher = randn(2, 3, 4, seed=16)
    banzhaf_kl(student, teacher).backward()
    expected = finite_difference(lambda s: loop_banzhaf_kl(s, teacher), student.detach())
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-9)


def test_banzhaf_kl_with_masked_maps():
    # Entity-level maps are multiplied by the word and frame masks first: zeros are ordinary logits.
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=DTYPE)[:, :, None] * torch.tensor(
        [[1, 1, 1, 0], [1, 1, 0, 0]], dtype=DTYPE
    )[:, None, :]
    student, teacher = randn(2, 3, 4, seed=17) * mask, randn(2, 3, 4, seed=18) * mask
    assert banzhaf_kl(student, teacher).item() == pytest.approx(loop_banzhaf_kl(student, teacher), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# The whole training loss of HBIModel
# ------------------------------------------------------------------------------------------------
SEED = 1234


# ------------------------------------------------------------------------------------------------
# Loop references (plain Python floats)
# ------------------------------------------------------------------------------------------------
def dot(x, y):
    return sum(a * b for a, b in zip(x, y))


def loop_word_frame(text_tokens, text_mask, video_tokens, video_mask, a, b):
    """S[a, b] as nested lists [words][frames], masked cells set to 0."""
    grid = []
    for t in range(len(text_tokens[a])):
        row = []
        for v in range(len(video_tokens[b])):
            value = dot(text_tokens[a][t], video_tokens[b][v])
            if text_mask is not None:
                value *= text_mask[a][t]
            if video_mask is not None:
                value *= video_mask[b][v]
            row.append(value)
        grid.append(row)
    return grid


def loop_wti(text: LevelTokens, video: LevelTokens):
    text_tokens, video_tokens = text.tokens.tolist(), video.tokens.tolist()
    text_weights, video_weights = text.weights.tolist(), video.weights.tolist()
    text_mask = None if text.mask is None else text.mask.tolist()
    video_mask = None if video.mask is None else video.mask.tolist()
    sims = []
    for a in range(len(text_tokens)):
        row = []
        for b in range(len(video_tokens)):
            grid = loop_word_frame(text_tokens, text_mask, video_tokens, video_mask, a, b)
            words, frames = len(grid), len(grid[0])
            t2v = sum(text_weights[a][t] * max(grid[t][v] for v in range(frames)) for t in range(words))
            v2t = sum(video_weights[b][v] * max(grid[t][v] for t in range(words)) for v in range(frames))
            row.append((t2v + v2t) / 2)
        sims.append(row)
    return sims


def transpose(matrix):
    return [[matrix[i][j] for i in range(len(matrix))] for j in range(len(matrix[0]))]


def loop_kl_matrix(input_matrix, target_matrix):
    return kl_rows(input_matrix, target_matrix) / (len(input_matrix) * len(input_matrix[0]))


def loop_matched_maps(text: LevelTokens, video: LevelTokens):
    text_tokens, video_tokens = text.tokens.tolist(), video.tokens.tolist()
    text_mask = None if text.mask is None else text.mask.tolist()
    video_mask = None if video.mask is None else video.mask.tolist()
    return [loop_word_frame(text_tokens, text_mask, video_tokens, video_mask, b, b) for b in range(len(text_tokens))]


def loop_banzhaf_term(model, level_index, text: LevelTokens, video: LevelTokens, mask_maps=True):
    maps = loop_matched_maps(text, video)
    map_tensor = torch.tensor(maps, dtype=text.tokens.dtype)
    with torch.no_grad():
        student = model.levels[level_index].banzhaf_student(map_tensor).tolist()
        teacher = model.banzhaf_teacher(map_tensor).tolist()
    if level_index == 0 and mask_maps:
        text_mask, video_mask = text.mask.tolist(), video.mask.tolist()
        for b in range(len(student)):
            for t in range(len(student[b])):
                for v in range(len(student[b][t])):
                    factor = text_mask[b][t] * video_mask[b][v]
                    student[b][t][v] *= factor
                    teacher[b][t][v] *= factor
    return loop_banzhaf_kl(student, teacher)


def loop_distillation(sims):
    entity = sims[0]
    return sum(
        loop_kl_matrix(transpose(level), transpose(entity)) + loop_kl_matrix(level, entity) for level in sims[1:]
    )


def loop_hbi_loss(model, text_levels, video_levels, mask_entity_maps=True):
    config = model.config
    scale = math.exp(model.logit_scale.item())
    sims = [loop_wti(text, video) for text, video in zip(text_levels, video_levels)]
    terms = {}
    for index, name in enumerate(LEVEL_NAMES):
        terms[f"contrastive_{name}"] = loop_symmetric_info_nce(sims[index], scale)
        terms[f"banzhaf_{name}"] = loop_banzhaf_term(
            model, index, text_levels[index], video_levels[index], mask_entity_maps
        )
    terms["distillation"] = loop_distillation(sims)
    loss = sum(
        terms[f"contrastive_{name}"] + config.banzhaf_kl_weight * terms[f"banzhaf_{name}"] for name in LEVEL_NAMES
    )
    loss += config.distillation_kl_weight * terms["distillation"]
    return loss, terms, sims


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HBIModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def batch():
    return make_batch()


def model_levels(model, batch):
    """The level tokens forward computes: encoders, then text levels, then video levels, with the
    RNG seeded as before forward (the encoders draw no random numbers in eval mode)."""
    text = model.get_text_features(batch["input_ids"], batch["attention_mask"])
    video = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
    torch.manual_seed(SEED)
    text_levels = model.text_levels(text.text_embeds, text.attention_mask)
    video_levels = model.video_levels(video.video_embeds, video.video_mask)
    return text_levels, video_levels


def seeded_forward(model, batch):
    torch.manual_seed(SEED)
    return model(**batch, return_loss=True)


@pytest.fixture(scope="module")
def reference(model, batch):
    with torch.no_grad():
        out = seeded_forward(model, batch)
        text_levels, video_levels = model_levels(model, batch)
    loss, terms, sims = loop_hbi_loss(model, text_levels, video_levels)
    return dict(out=out, text_levels=text_levels, video_levels=video_levels, loss=loss, terms=terms, sims=sims)


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
def test_level_shapes_and_masks(reference):
    text_levels, video_levels = reference["text_levels"], reference["video_levels"]
    # 10 words -> ceil(10 * 0.25) = 3 -> ceil(3 * 0.5) = 2; 12 frames -> 3 -> 2.
    assert [t.tokens.shape[1] for t in text_levels] == [10, 3, 2]
    assert [v.tokens.shape[1] for v in video_levels] == [12, 3, 2]
    assert text_levels[0].mask is not None and video_levels[0].mask is not None
    assert all(level.mask is None for level in text_levels[1:] + video_levels[1:])


def test_level_tokens_follow_the_hierarchy(model, batch, reference):
    """Entity tokens = normalised embeddings weighted by the masked entity heads; each higher
    level merges the previous level's UNnormalised tokens (unmasked after the first merge) and
    weighs them with its own heads, unmasked. Text merges run before video merges."""
    with torch.no_grad():
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        video = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
        torch.manual_seed(SEED)
        sides = {}
        for side, tokens, mask in (
            ("text", text.text_embeds, text.attention_mask),
            ("video", video.video_embeds, video.video_mask),
        ):
            levels = []
            for index, level in enumerate(model.levels):
                if index > 0:
                    tokens, mask = getattr(level, f"{side}_merge")(tokens, mask), None
                weights = getattr(level, f"{side}_weight_head")(tokens, mask)
                norms = [[math.sqrt(sum(x * x for x in token)) for token in item] for item in tokens.tolist()]
                levels.append((tokens / torch.tensor(norms)[..., None], weights, mask))
            sides[side] = levels
    for side, model_levels_ in (("text", reference["text_levels"]), ("video", reference["video_levels"])):
        for (tokens, weights, mask), level in zip(sides[side], model_levels_):
            torch.testing.assert_close(level.tokens, tokens, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(level.weights, weights, rtol=1e-6, atol=1e-7)
            assert (mask is None) == (level.mask is None)
            if mask is not None:
                assert torch.equal(level.mask, mask)


def test_similarities_match_loop(model, reference):
    scale = model.logit_scale.exp().item()
    for index, sims in enumerate(reference["sims"]):
        expected = torch.tensor(sims) * scale
        torch.testing.assert_close(reference["out"].level_logits_per_text[index], expected, rtol=1e-5, atol=1e-5)


def test_total_loss_matches_loop(reference):
    out = reference["out"]
    assert out.loss.item() == pytest.approx(reference["loss"], rel=1e-5, abs=1e-5)


def test_each_loss_term_matches_loop(reference):
    out = reference["out"]
    assert set(out.loss_terms) == set(reference["terms"])
    for name, expected in reference["terms"].items():
        got = out.loss_terms[name].item()
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7), name
        assert not out.loss_terms[name].requires_grad


def test_loss_weights_come_from_the_config(reference, model):
    terms = reference["terms"]
    recombined = sum(terms[f"contrastive_{name}"] + terms[f"banzhaf_{name}"] for name in LEVEL_NAMES)
    recombined += 0.2 * terms["distillation"]
    assert model.config.banzhaf_kl_weight == 1.0 and model.config.distillation_kl_weight == 0.2
    assert reference["out"].loss.item() == pytest.approx(recombined, rel=1e-5, abs=1e-5)


def test_reference_is_discriminating(model, reference):
    # The loop reference is sensitive to the entity-map masking and to the noise-seeded merges:
    # an error in either would show up above.
    _, unmasked_terms, _ = loop_hbi_loss(model, reference["text_levels"], reference["video_levels"], False)
    assert abs(unmasked_terms["banzhaf_entity"] - reference["terms"]["banzhaf_entity"]) > 1e-6
    assert abs(unmasked_terms["banzhaf_entity"] - reference["terms"]["banzhaf_entity"]) > 10 * 1e-5 * abs(
        reference["terms"]["banzhaf_entity"]
    )


def test_loss_with_other_weights(batch):
    torch.manual_seed(0)
    model = HBIModel(tiny_config(banzhaf_kl_weight=3.0, distillation_kl_weight=2.0)).eval()
    with torch.no_grad():
        out = seeded_forward(model, batch)
        text_levels, video_levels = model_levels(model, batch)
    loss, terms, _ = loop_hbi_loss(model, text_levels, video_levels)
    assert out.loss.item() == pytest.approx(loss, rel=1e-5, abs=1e-5)
    for name, expected in terms.items():
        assert out.loss_terms[name].item() == pytest.approx(expected, rel=1e-5, abs=1e-7), name


def test_gradients_reach_every_trainable_parameter_but_not_the_teacher(model, batch):
    model.zero_grad(set_to_none=True)
    seeded_forward(model, batch).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("banzhaf_teacher."):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad, name
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
    for index, level in enumerate(model.levels):
        for name, parameter in level.banzhaf_student.named_parameters():
            if index > 0 and name == "conv_out.bias":
                # Unmasked maps: a constant shift is invisible to both softmaxes of the KL.
                assert parameter.grad.abs().sum() < 1e-6, (index, name)
            else:
                assert parameter.grad.abs().sum() > 0, (index, name)
    model.zero_grad(set_to_none=True)


def test_teacher_runs_without_gradient_even_if_unfrozen(model, batch):
    teacher_parameters = list(model.banzhaf_teacher.parameters())
    model.zero_grad(set_to_none=True)
    try:
        for parameter in teacher_parameters:
            parameter.requires_grad_(True)
        seeded_forward(model, batch).loss.backward()
        assert all(parameter.grad is None for parameter in teacher_parameters)
    finally:
        for parameter in teacher_parameters:
            parameter.requires_grad_(False)
        model.zero_grad(set_to_none=True)


def finite_difference_of_matrices(function, values, step=1e-6):
    """Central differences of `function(list of matrices)` w.r.t. every entry of every matrix."""
    grads = []
    for m, matrix in enumerate(values):
        grad = [[0.0] * len(matrix[0]) for _ in matrix]
        for i in range(len(matrix)):
            for j in range(len(matrix[0])):
                plus = [[row[:] for row in x] for x in values]
                minus = [[row[:] for row in x] for x in values]
                plus[m][i][j] += step
                minus[m][i][j] -= step
                grad[i][j] = (function(plus) - function(minus)) / (2 * step)
        grads.append(torch.tensor(grad))
    return grads


def test_distillation_target_receives_gradient(model, reference):
    """The entity similarity is the (non-detached) target of the self-distillation KL, so its
    gradient is that of the contrastive term PLUS the distillation term's."""
    text_levels, video_levels = reference["text_levels"], reference["video_levels"]
    with torch.no_grad():
        sims = [weighted_token_interaction(t, v) for t, v in zip(text_levels, video_levels)]
    leaves = [s.clone().requires_grad_() for s in sims]
    loss, _ = model.hbi_loss(leaves, text_levels, video_levels)
    grads = torch.autograd.grad(loss, leaves)

    scale = math.exp(model.logit_scale.item())
    weight = model.config.distillation_kl_weight
    values = [s.tolist() for s in sims]

    def similarity_part(levels):  # the Banzhaf terms do not depend on these matrices
        contrastive = sum(loop_symmetric_info_nce(level, scale) for level in levels)
        return contrastive + weight * loop_distillation(levels)

    expected = finite_difference_of_matrices(similarity_part, values)
    for index in range(3):
        torch.testing.assert_close(grads[index], expected[index], rtol=1e-3, atol=2e-6)

    # Had the targets been detached, the entity gradient would be the contrastive part alone.
    detached = finite_difference_of_matrices(lambda levels: loop_symmetric_info_nce(levels[0], scale), values[:1])[0]
    distillation_share = (expected[0] - detached).abs().max().item()
    assert distillation_share > 1e-4
    assert (grads[0] - detached).abs().max().item() > 0.5 * distillation_share


def test_banzhaf_terms_train_the_encoders_through_the_student_input(model, reference):
    # The student's input map is not detached: with the similarity matrices held fixed, the loss
    # still has a gradient w.r.t. every level's text and video tokens (through the students only).
    text_levels, video_levels = reference["text_levels"], reference["video_levels"]
    with torch.no_grad():
        sims = [weighted_token_interaction(t, v) for t, v in zip(text_levels, video_levels)]
    text_leaves = [LevelTokens(t.tokens.clone().requires_grad_(), t.weights, t.mask) for t in text_levels]
    video_leaves = [LevelTokens(v.tokens.clone().requires_grad_(), v.weights, v.mask) for v in video_levels]
    loss, _ = model.hbi_loss(sims, text_leaves, video_leaves)
    tokens = [t.tokens for t in text_leaves] + [v.tokens for v in video_leaves]
    grads = torch.autograd.grad(loss, tokens)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # At the entity level the maps are masked: padding words and frames get no gradient from them.
    entity_text_grad, entity_video_grad = grads[0], grads[3]
    assert (entity_text_grad[text_levels[0].mask == 0] == 0).all()
    assert (entity_video_grad[video_levels[0].mask == 0] == 0).all()
