"""The Banzhaf interaction estimator network (docs/banzhaf.md) against explicit loops."""

import math

import pytest
import torch
from torch import nn

from hbi_transformers.models.hbi.banzhaf_estimator import BanzhafEstimator

DTYPE = torch.float64


def loop_conv3x3(channels_in, weight, bias, height, width):
    """channels_in[c][t][v] -> out[o][t][v] = bias[o] + sum_c sum_{dt, dv in -1..1}
    weight[o][c][dt + 1][dv + 1] * in[c][t + dt][v + dv], zero outside the map."""
    out = []
    for o in range(len(weight)):
        plane = []
        for t in range(height):
            row = []
            for v in range(width):
                total = bias[o]
                for c in range(len(channels_in)):
                    for dt in (-1, 0, 1):
                        for dv in (-1, 0, 1):
                            if 0 <= t + dt < height and 0 <= v + dv < width:
                                total += weight[o][c][dt + 1][dv + 1] * channels_in[c][t + dt][v + dv]
                row.append(total)
            plane.append(row)
        out.append(plane)
    return out


def loop_estimator(module: BanzhafEstimator, similarity_map: torch.Tensor) -> torch.Tensor:
    """conv3x3(1 -> W) -> ReLU -> softmax((x Q)(x K)^T) (x V) over the T*V positions (unscaled),
    residual -> conv3x3(W -> 1)."""
    width = module.width
    w_in, b_in = module.conv_in.weight.tolist(), module.conv_in.bias.tolist()
    w_out, b_out = module.conv_out.weight.tolist(), module.conv_out.bias.tolist()
    q_mat, k_mat, v_mat = module.query.tolist(), module.key.tolist(), module.value.tolist()
    outputs = []
    for item in similarity_map.tolist():
        height, frames = len(item), len(item[0])
        hidden = loop_conv3x3([item], w_in, b_in, height, frames)
        hidden = [[[max(x, 0.0) for x in row] for row in plane] for plane in hidden]
        positions = [(t, v) for t in range(height) for v in range(frames)]  # row-major: t * V + v
        vectors = [[hidden[c][t][v] for c in range(width)] for t, v in positions]

        def project(x, matrix):
            return [sum(x[c] * matrix[c][e] for c in range(width)) for e in range(width)]

        queries = [project(x, q_mat) for x in vectors]
        keys = [project(x, k_mat) for x in vectors]
        values = [project(x, v_mat) for x in vectors]
        attended = []
        for query in queries:
            logits = [sum(query[e] * key[e] for e in range(width)) for key in keys]
            top = max(logits)
            exps = [math.exp(l - top) for l in logits]
            total = sum(exps)
            attended.append([sum(exps[p] / total * values[p][e] for p in range(len(values))) for e in range(width)])
        for p, (t, v) in enumerate(positions):
            for c in range(width):
                hidden[c][t][v] += attended[p][c]
        outputs.append(loop_conv3x3(hidden, w_out, b_out, height, frames)[0])
    return torch.tensor(outputs, dtype=DTYPE)


def make_estimator(width, seed):
    torch.manual_seed(seed)
    module = BanzhafEstimator(width)
    # Constructed alone, Q/K/V are uninitialised: give them the official xavier init; the convs
    # keep torch's defaults.
    for matrix in (module.query, module.key, module.value):
        nn.init.xavier_uniform_(matrix, gain=1.414)
    return module.to(DTYPE)


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 5, 2), (3, 1, 1), (1, 2, 6)])
def test_estimator_matches_loop(shape):
    module = make_estimator(4, 0)
    similarity_map = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    with torch.no_grad():
        got = module(similarity_map)
    assert got.shape == shape
    torch.testing.assert_close(got, loop_estimator(module, similarity_map), rtol=1e-10, atol=1e-10)


def test_estimator_attention_is_unscaled():
    # Large Q/K make unscaled logits sharp; a 1/sqrt(width) scaling would give another answer.
    module = make_estimator(6, 2)
    with torch.no_grad():
        module.query.mul_(3.0)
        module.key.mul_(3.0)
    similarity_map = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(3), dtype=DTYPE) * 2
    with torch.no_grad():
        got = module(similarity_map)
        expected = loop_estimator(module, similarity_map)
        module.query.mul_(6**-0.5)
        scaled = loop_estimator(module, similarity_map)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert (got - scaled).abs().max() > 1e-3


def test_estimator_items_are_independent():
    module = make_estimator(4, 4)
    maps = torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    with torch.no_grad():
        together = module(maps)
        separately = torch.cat([module(maps[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, separately, rtol=1e-12, atol=1e-12)


def test_estimator_float32_and_gradient():
    module = make_estimator(8, 6).float()
    similarity_map = torch.randn(2, 4, 3, requires_grad=True)
    module(similarity_map).sum().backward()
    assert similarity_map.grad is not None and similarity_map.grad.abs().sum() > 0
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, name


@pytest.mark.parametrize("shape", [(4, 3), (2, 1, 3, 4), (5,)])
def test_estimator_rejects_other_ranks(shape):
    module = make_estimator(4, 0)
    with pytest.raises(ValueError):
        module(torch.zeros(shape, dtype=DTYPE))


def test_estimator_has_no_batch_norm():
    module = BanzhafEstimator(4)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    assert module.conv_in.kernel_size == (3, 3) and module.conv_in.padding == (1, 1)
    assert module.conv_out.kernel_size == (3, 3) and module.conv_out.padding == (1, 1)
    assert module.query.shape == module.key.shape == module.value.shape == (4, 4)


def test_estimator_gradients_match_the_explicit_softmax():
    module = make_estimator(8, 7).float()
    similarity_map = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(8))
    weights = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(9))

    def explicit(maps):
        hidden = module.activation(module.conv_in(maps[:, None]))
        positions = hidden.flatten(2).transpose(1, 2)
        query, key, value = positions @ module.query, positions @ module.key, positions @ module.value
        attended = torch.softmax(query @ key.transpose(1, 2), dim=-1) @ value
        return module.conv_out(hidden + attended.transpose(1, 2).reshape(hidden.shape))[:, 0]

    results = []
    for forward in (module, explicit):
        leaf = similarity_map.clone().requires_grad_()
        module.zero_grad()
        output = forward(leaf)
        (output * weights).sum().backward()
        results.append([output, leaf.grad] + [p.grad.clone() for p in module.parameters()])
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
