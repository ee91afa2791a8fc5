"""Loss terms (spec sections 4-5) against loops over rows and elements with math.log / math.exp,
and their gradients against central finite differences of those loops."""

import math

import pytest
import torch

from hbi_transformers.models.hbi.losses import banzhaf_kl, info_nce, kl_divergence, symmetric_info_nce

DTYPE = torch.float64


# ------------------------------------------------------------------------------------------------
# Loop references (plain Python floats)
# ------------------------------------------------------------------------------------------------
def log_sum_exp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def loop_info_nce(logits):
    rows = logits.tolist()
    n = len(rows)
    return sum(-(rows[i][i] - log_sum_exp(rows[i])) for i in range(n)) / n


def loop_info_nce_columns(logits):
    rows = logits.tolist()
    n = len(rows)
    total = 0.0
    for j in range(n):
        column = [rows[i][j] for i in range(n)]
        total += -(rows[j][j] - log_sum_exp(column))
    return total / n


def loop_symmetric_info_nce(logits):
    return (loop_info_nce(logits) + loop_info_nce_columns(logits)) / 2


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
    batch, words, frames = student.shape
    s, t = student.tolist(), teacher.tolist()
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
