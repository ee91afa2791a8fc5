"""Token merging (docs/token_merging.md: DPC-KNN clustering, CTM, TCBlock) against explicit loops.

The references below are written with Python loops over items, tokens, token pairs, clusters,
heads and feature dimensions, on Python floats; none of them reuses the package's vectorised
code. Everything runs in float64 so that exact cluster assignments can be compared.
"""

import math

import pytest
import torch

from hbi_transformers.models.hbi.token_merging import (
    MergedTokenAttention,
    TokenClusterMerge,
    TokenMergeBlock,
    cluster_tokens_dpc_knn,
    convolve_by_stacked_taps,
    merge_clustered_tokens,
)

DTYPE = torch.float64


# ------------------------------------------------------------------------------------------------
# Loop references
# ------------------------------------------------------------------------------------------------
def loop_distances(tokens, mask):
    """Pairwise Euclidean distances / sqrt(D); distances TO padding tokens (columns) replaced by
    the maximum over the whole batch's raw distance matrices + 1."""
    x = tokens.tolist()
    batch, num, dim = len(x), len(x[0]), len(x[0][0])
    dist = [
        [
            [math.sqrt(sum((x[b][i][d] - x[b][j][d]) ** 2 for d in range(dim))) / math.sqrt(dim) for j in range(num)]
            for i in range(num)
        ]
        for b in range(batch)
    ]
    if mask is not None:
        fill = max(dist[b][i][j] for b in range(batch) for i in range(num) for j in range(num)) + 1
        for b in range(batch):
            for i in range(num):
                for j in range(num):
                    if mask[b][j] == 0:
                        dist[b][i][j] = fill
    return dist


def loop_density(dist, num_neighbors, mask, noise):
    batch, num = len(dist), len(dist[0])
    density = []
    for b in range(batch):
        row = []
        for i in range(num):
            nearest = sorted(dist[b][i])[: min(num_neighbors, num)]  # includes the token itself (0)
            value = math.exp(-sum(d * d for d in nearest) / len(nearest)) + noise[b][i]
            if mask is not None and mask[b][i] == 0:
                value = 0.0
            row.append(value)
        density.append(row)
    return density


def loop_dpc_knn(tokens, num_clusters, num_neighbors, mask=None, noise=None, with_details=False):
    """DPC-KNN as docs/token_merging.md describes it, one item, token and pair at a time."""
    batch, num = tokens.shape[0], tokens.shape[1]
    mask = None if mask is None else mask.tolist()
    noise = [[0.0] * num for _ in range(batch)] if noise is None else noise.tolist()
    dist = loop_distances(tokens, mask)
    density = loop_density(dist, num_neighbors, mask, noise)
    assignments, all_centres, all_scores = [], [], []
    for b in range(batch):
        max_distance = max(dist[b][i][j] for i in range(num) for j in range(num))  # this item, after the fill
        score = []
        for i in range(num):
            denser = [dist[b][i][j] for j in range(num) if density[b][j] > density[b][i]]
            delta = min(denser) if denser else max_distance
            score.append(delta * density[b][i])
        order = sorted(range(num), key=lambda i: score[i], reverse=True)
        centres = order[:num_clusters]
        assert all(score[centres[c]] > score[centres[c + 1]] for c in range(num_clusters - 1)), "score tie"
        cluster = []
        for t in range(num):
            if t in centres:
                cluster.append(centres.index(t))
                continue
            best = 0
            for c in range(1, num_clusters):  # row = centre, column = token; ties -> lowest c
                if dist[b][centres[c]][t] < dist[b][centres[best]][t]:
                    best = c
            cluster.append(best)
        assignments.append(cluster)
        all_centres.append(centres)
        all_scores.append(score)
    result = torch.tensor(assignments, dtype=torch.long)
    if with_details:
        return result, dict(centres=all_centres, density=density, score=all_scores, distances=dist)
    return result


def loop_merge(tokens, cluster_index, num_clusters, token_weight):
    x, idx, w = tokens.tolist(), cluster_index.tolist(), token_weight.tolist()
    batch, num, dim = len(x), len(x[0]), len(x[0][0])
    merged = []
    for b in range(batch):
        rows = []
        for c in range(num_clusters):
            members = [t for t in range(num) if idx[b][t] == c]
            total = sum(w[b][t] for t in members) + 1e-6
            rows.append([sum(w[b][t] / total * x[b][t][d] for t in members) for d in range(dim)])
        merged.append(rows)
    return torch.tensor(merged, dtype=DTYPE)


def loop_layer_norm(vector, weight, bias, eps):
    dim = len(vector)
    mean = sum(vector) / dim
    var = sum((v - mean) ** 2 for v in vector) / dim
    return [(vector[d] - mean) / math.sqrt(var + eps) * weight[d] + bias[d] for d in range(dim)]


def loop_linear(vector, weight, bias):
    return [sum(weight[o][i] * vector[i] for i in range(len(vector))) + (0.0 if bias is None else bias[o])
            for o in range(len(weight))]


def loop_ctm_features(module: TokenClusterMerge, tokens, mask):
    """x + Conv1d_k3(x) (zero padding at both ends, no bias), LayerNorm, score; padding -> -inf."""
    x = tokens.tolist()
    kernel = module.conv.weight.tolist()  # [out, in, 3]
    ln_w, ln_b, eps = module.norm.weight.tolist(), module.norm.bias.tolist(), module.norm.eps
    score_w, score_b = module.score.weight.tolist(), module.score.bias.tolist()
    batch, num, dim = len(x), len(x[0]), len(x[0][0])
    features, scores = [], []
    for b in range(batch):
        item_features, item_scores = [], []
        for t in range(num):
            conv = []
            for o in range(dim):
                total = 0.0
                for offset in range(3):
                    source = t + offset - 1
                    if 0 <= source < num:
                        total += sum(kernel[o][i][offset] * x[b][source][i] for i in range(dim))
                conv.append(x[b][t][o] + total)
            normed = loop_layer_norm(conv, ln_w, ln_b, eps)
            score = loop_linear(normed, score_w, score_b)[0]
            if mask is not None and mask[b, t] == 0:
                score = -math.inf
            item_features.append(normed)
            item_scores.append(score)
        features.append(item_features)
        scores.append(item_scores)
    return torch.tensor(features, dtype=DTYPE), torch.tensor(scores, dtype=DTYPE)


def loop_ctm(module: TokenClusterMerge, tokens, mask, noise):
    features, scores = loop_ctm_features(module, tokens, mask)
    num_clusters = max(math.ceil(tokens.shape[1] * module.merge_ratio), 1)
    cluster_index = loop_dpc_knn(features, num_clusters, module.num_neighbors, mask, noise)
    weights = torch.tensor([[math.exp(s) for s in row] for row in scores.tolist()], dtype=DTYPE)
    return loop_merge(features, cluster_index, num_clusters, weights), features, scores, cluster_index


def loop_attention(module: MergedTokenAttention, merged, keys, key_score):
    """Per item, head, query and key: shared LayerNorm, q / kv projections (first D outputs of
    key_value are keys, last D values), logits * head_dim^-0.5 + key score, softmax, out_proj,
    residual on the merged tokens."""
    heads, dim = module.num_heads, merged.shape[-1]
    head_dim = dim // heads
    ln = (module.norm.weight.tolist(), module.norm.bias.tolist(), module.norm.eps)
    wq, bq = module.query.weight.tolist(), module.query.bias.tolist()
    wkv, bkv = module.key_value.weight.tolist(), module.key_value.bias.tolist()
    wo, bo = module.out_proj.weight.tolist(), module.out_proj.bias.tolist()
    out = []
    for b in range(merged.shape[0]):
        queries = [loop_linear(loop_layer_norm(m, *ln), wq, bq) for m in merged[b].tolist()]
        key_values = [loop_linear(loop_layer_norm(k, *ln), wkv, bkv) for k in keys[b].tolist()]
        scores = key_score[b].tolist()
        rows = []
        for q_index, query in enumerate(queries):
            attended = [0.0] * dim
            for h in range(heads):
                lo, hi = h * head_dim, (h + 1) * head_dim
                logits = []
                for key_index, kv in enumerate(key_values):
                    dot = sum(query[d] * kv[d] for d in range(lo, hi))
                    logits.append(dot * head_dim**-0.5 + scores[key_index])
                top = max(logits)
                exps = [math.exp(l - top) for l in logits]  # exp(-inf) = 0: the key drops out
                total = sum(exps)
                for key_index, kv in enumerate(key_values):
                    p = exps[key_index] / total
                    for d in range(lo, hi):
                        attended[d] += p * kv[dim + d]
            projected = loop_linear(attended, wo, bo)
            rows.append([merged[b, q_index, d].item() + projected[d] for d in range(dim)])
        out.append(rows)
    return torch.tensor(out, dtype=DTYPE)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def make_mask(lengths, size):
    mask = torch.zeros(len(lengths), size, dtype=torch.long)
    for item, length in enumerate(lengths):
        mask[item, :length] = 1
    return mask


def noise_for(seed, shape):
    """The noise the package draws: seed torch, then rand(density.shape) * 1e-6."""
    torch.manual_seed(seed)
    return torch.rand(shape, dtype=DTYPE) * 1e-6


def seeded(seed, function, *args, **kwargs):
    torch.manual_seed(seed)
    return function(*args, **kwargs)


def randomize(module, seed):
    """Non-trivial values for every parameter (LayerNorm weights and biases included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.5)
    return module


# ------------------------------------------------------------------------------------------------
# DPC-KNN clustering
# ------------------------------------------------------------------------------------------------
CLUSTER_CASES = [
    # (batch, tokens, dim, lengths or None, clusters, k)
    (3, 8, 5, [8, 5, 6], 3, 3),
    (3, 8, 5, [8, 5, 6], 1, 3),
    (2, 7, 4, [7, 4], 4, 3),
    (2, 9, 3, [9, 6], 3, 2),
    (2, 6, 4, None, 2, 3),
    (4, 5, 6, None, 3, 4),
    (2, 6, 4, [6, 5], 2, 5),
]


@pytest.mark.parametrize("case", CLUSTER_CASES)
@pytest.mark.parametrize("data_seed", range(4))
def test_dpc_knn_matches_loop_with_same_noise(case, data_seed):
    batch, num, dim, lengths, clusters, k = case
    generator = torch.Generator().manual_seed(100 + data_seed)
    tokens = torch.randn(batch, num, dim, generator=generator, dtype=DTYPE)
    mask = None if lengths is None else make_mask(lengths, num)
    noise_seed = 1000 + data_seed
    expected = loop_dpc_knn(tokens, clusters, k, mask, noise_for(noise_seed, (batch, num)))
    got = seeded(noise_seed, cluster_tokens_dpc_knn, tokens, clusters, k, mask)
    assert got.dtype == torch.long and got.shape == (batch, num)
    assert torch.equal(got, expected), (got, expected)
    # Every cluster is used (each centre sits in its own cluster).
    for b in range(batch):
        assert set(got[b].tolist()) == set(range(clusters))


def test_dpc_knn_uses_all_tokens_when_fewer_than_k():
    # The official code fails when a level has fewer tokens than k; the package uses them all.
    tokens = torch.randn(2, 2, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(5))
    expected = loop_dpc_knn(tokens, 1, 3, None, noise_for(6, (2, 2)))
    assert torch.equal(seeded(6, cluster_tokens_dpc_knn, tokens, 1, 3), expected)


def well_separated_tokens():
    """Two items whose densities and centre scores are far apart (no noise can reorder them):
    groups of points with different spreads, then padding."""
    dim = 2
    item0 = [[0.0, 0.0], [0.1, 0.0], [0.0, 0.15], [3.0, 3.0], [3.4, 3.0], [3.0, 3.7], [-4.0, 1.0], [-4.0, 2.5]]
    item1 = [[1.0, 1.0], [1.2, 1.0], [5.0, -1.0], [5.5, -1.0], [5.0, 0.2], [0.0, 0.0], [9.0, 9.0], [-9.0, 9.0]]
    tokens = torch.tensor([item0, item1], dtype=DTYPE) * math.sqrt(dim)
    mask = make_mask([8, 6], 8)
    return tokens, mask


@pytest.mark.parametrize("clusters", [1, 2, 3, 4])
def test_dpc_knn_independent_of_noise_when_densities_are_separated(clusters):
    tokens, mask = well_separated_tokens()
    noiseless = loop_dpc_knn(tokens, clusters, 3, mask)
    for seed in range(5):
        assert torch.equal(seeded(seed, cluster_tokens_dpc_knn, tokens, clusters, 3, mask), noiseless)


def test_dpc_knn_details_on_a_hand_checked_example():
    # Item 0: the tight group around the origin is densest; its densest token gets the item's
    # whole-matrix max distance, so it is the first centre; the next centre is in another group.
    tokens, mask = well_separated_tokens()
    _, details = loop_dpc_knn(tokens, 3, 3, mask, with_details=True)
    density, score, centres = details["density"], details["score"], details["centres"]
    densest = max(range(8), key=lambda i: density[0][i])
    assert densest in (0, 1, 2)
    assert centres[0][0] == densest
    assert {c // 3 for c in centres[0][:2]} == {0, 1}
    # Padding tokens have density 0, hence score 0.
    assert density[1][6] == density[1][7] == 0.0 and score[1][6] == score[1][7] == 0.0
    got = seeded(0, cluster_tokens_dpc_knn, tokens, 3, 3, mask)
    # Tokens of one group share the cluster of their centre.
    assert centres[0] == [0, 3, 5]
    assert got[0].tolist() == [0, 0, 0, 1, 1, 2, 0, 0]
    # Padding tokens are at the fill distance from every centre: the tie goes to centre 0.
    assert got[1, 6] == got[1, 7] == 0


SHORT_ITEM = [[0.0, 0.0], [0.5, 0.0], [2.0, 0.0], [0.5, 0.5], [1.0, 0.2], [1.5, -0.4]]  # 3 real + 3 padding
FULL_ITEM = [[0.0, 0.0], [0.2, 0.0], [0.0, 0.3], [1.0, 1.0], [1.3, 1.1], [0.6, 0.6]]  # 5 real + 1 padding
PARTNER = [[0.0, 0.0], [0.3, 0.0], [0.0, 0.4], [1.0, 1.0], [1.3, 1.0], [1.5, -0.3]]  # all distances < 2


def batch_with_partner(item, item_length, partner_scale):
    """`item` next to a 6-token partner scaled by `partner_scale`: the partner's largest distance
    sets the batch-wide fill of `item`'s padding columns (at scale 1 it stays below `item`'s own
    largest distance, 2, so the fill is unchanged)."""
    dim = 2
    tokens = torch.stack([torch.tensor(item, dtype=DTYPE), torch.tensor(PARTNER, dtype=DTYPE) * partner_scale])
    return tokens * math.sqrt(dim), make_mask([item_length, 6], 6)


def test_dpc_knn_short_item_depends_on_the_batch_through_the_fill():
    # 3 real tokens < k = 4: each density's k nearest distances include one fill distance.
    k, clusters = 4, 2
    small, small_mask = batch_with_partner(SHORT_ITEM, 3, 1.0)
    large, large_mask = batch_with_partner(SHORT_ITEM, 3, 1000.0)
    alone, alone_mask = small[:1], small_mask[:1]
    # Alone, or beside a partner that leaves the fill as it is, the result is the same whatever
    # the noise.
    results = [seeded(seed, cluster_tokens_dpc_knn, alone, clusters, k, alone_mask)[0] for seed in range(8)]
    results += [seeded(seed, cluster_tokens_dpc_knn, small, clusters, k, small_mask)[0] for seed in range(8)]
    assert all(torch.equal(result, results[0]) for result in results)
    assert torch.equal(results[0], loop_dpc_knn(alone, clusters, k, alone_mask)[0])
    # Centres: token 1 (densest: the item's whole-matrix max distance), then token 2.
    assert results[0].tolist() == [0, 0, 1, 0, 0, 0]

    # Beside a partner with large distances, the fill (batch max + 1) dominates the short item's
    # k nearest distances, its densities shrink below the 1e-6 noise and the centres become
    # noise-driven: the result now depends on the other item.
    beside_large = []
    for seed in range(8):
        got = seeded(seed, cluster_tokens_dpc_knn, large, clusters, k, large_mask)
        expected = loop_dpc_knn(large, clusters, k, large_mask, noise_for(seed, large.shape[:2]))
        assert torch.equal(got, expected)  # the reference, with the same noise, agrees
        beside_large.append(got[0])
    assert any(not torch.equal(result, results[0]) for result in beside_large)

    # The reference shows why: the short item's densities carry the factor exp(-fill^2 / k).
    _, small_details = loop_dpc_knn(small, clusters, k, small_mask, with_details=True)
    _, large_details = loop_dpc_knn(large, clusters, k, large_mask, noise_for(0, (2, 6)), with_details=True)
    assert min(small_details["density"][0][:3]) > 1e-2
    assert max(large_details["density"][0][:3]) <= 1e-6  # nothing left but the noise
    fill = small_details["distances"][0][0][5]
    assert fill == pytest.approx(2.0 + 1.0)


def test_dpc_knn_item_with_k_valid_tokens_is_independent_of_the_batch():
    # 5 real tokens >= k = 3: no fill distance among the k nearest, so the partner has no say.
    k, clusters = 3, 2
    small, small_mask = batch_with_partner(FULL_ITEM, 5, 1.0)
    large, large_mask = batch_with_partner(FULL_ITEM, 5, 1000.0)
    alone, alone_mask = small[:1], small_mask[:1]
    results = []
    for seed in range(6):
        results.append(seeded(seed, cluster_tokens_dpc_knn, alone, clusters, k, alone_mask)[0])
        results.append(seeded(seed, cluster_tokens_dpc_knn, small, clusters, k, small_mask)[0])
        results.append(seeded(seed, cluster_tokens_dpc_knn, large, clusters, k, large_mask)[0])
    assert all(torch.equal(result, results[0]) for result in results)
    assert torch.equal(results[0], loop_dpc_knn(alone, clusters, k, alone_mask)[0])
    assert results[0].tolist()[:5] == [0, 0, 0, 1, 1]


# ------------------------------------------------------------------------------------------------
# Merging
# ------------------------------------------------------------------------------------------------
def test_merge_clustered_tokens_matches_loop():
    generator = torch.Generator().manual_seed(21)
    tokens = torch.randn(2, 7, 4, generator=generator, dtype=DTYPE)
    cluster_index = torch.tensor([[0, 1, 2, 1, 0, 2, 2], [3, 3, 0, 1, 1, 0, 3]])  # item 1: cluster 2 empty
    weights = torch.rand(2, 7, generator=generator, dtype=DTYPE)
    weights[1, 6] = 0.0  # a padding token
    got = merge_clustered_tokens(tokens, cluster_index, 4, weights)
    expected = loop_merge(tokens, cluster_index, 4, weights)
    assert got.shape == (2, 4, 4)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert (got[1, 2] == 0).all() and (got[0, 3] == 0).all()  # empty clusters


def test_merge_clustered_tokens_epsilon_in_the_denominator():
    # One token of weight w in its cluster: merged = w / (w + 1e-6) * x, not x.
    tokens = torch.tensor([[[2.0, -4.0]]], dtype=DTYPE)
    weight = torch.tensor([[1e-6]], dtype=DTYPE)
    got = merge_clustered_tokens(tokens, torch.zeros(1, 1, dtype=torch.long), 1, weight)
    torch.testing.assert_close(got, tokens * 0.5, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, loop_merge(tokens, torch.zeros(1, 1, dtype=torch.long), 1, weight))


# ------------------------------------------------------------------------------------------------
# CTM
# ------------------------------------------------------------------------------------------------
def make_ctm(dim=6, ratio=0.4, k=3, seed=0):
    torch.manual_seed(seed)
    return randomize(TokenClusterMerge(dim, ratio, k).to(DTYPE), seed + 1)


@pytest.mark.parametrize("stacked_taps", [False, True])
@pytest.mark.parametrize("masked", [True, False])
def test_token_cluster_merge_matches_loop(masked, stacked_taps):
    # stacked_taps: the gallery's convolution, one matrix product with the taps side by side.
    module = make_ctm()
    generator = torch.Generator().manual_seed(31)
    tokens = torch.randn(3, 8, 6, generator=generator, dtype=DTYPE)
    mask = make_mask([8, 4, 6], 8) if masked else None
    with torch.no_grad():
        merged, features, score, cluster_index = seeded(7, module, tokens, mask, stacked_taps=stacked_taps)
    expected_merged, expected_features, expected_score, expected_index = loop_ctm(module, tokens, mask, noise_for(7, (3, 8)))
    assert merged.shape == (3, math.ceil(8 * 0.4), 6)
    assert torch.equal(cluster_index, expected_index)
    torch.testing.assert_close(features, expected_features, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(score, expected_score, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(merged, expected_merged, rtol=1e-10, atol=1e-10)
    if masked:
        assert torch.isneginf(score[mask == 0]).all() and torch.isfinite(score[mask == 1]).all()


@pytest.mark.parametrize("masked", [True, False])
def test_token_cluster_merge_lookahead_reads_the_last_position_only_through_the_conv(masked):
    module = make_ctm()
    tokens = torch.randn(3, 8, 6, generator=torch.Generator().manual_seed(37), dtype=DTYPE)
    mask = make_mask([8, 4, 6], 8) if masked else None
    with torch.no_grad():
        features, score = seeded(7, module, tokens, mask, lookahead=True)[1:3]
    expected_features, expected_score = loop_ctm_features(module, tokens, mask)
    torch.testing.assert_close(features, expected_features[:, :7], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(score, expected_score[:, :7], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("num_tokens", [1, 2, 3, 7])
def test_convolution_by_stacked_taps_matches_torch_at_every_width(num_tokens):
    generator = torch.Generator().manual_seed(num_tokens)
    weight = torch.randn(5, 4, 3, generator=generator, dtype=DTYPE)
    tokens = torch.randn(2, num_tokens, 4, generator=generator, dtype=DTYPE)
    expected = torch.nn.functional.conv1d(tokens.transpose(1, 2), weight, padding=1).transpose(1, 2)
    torch.testing.assert_close(convolve_by_stacked_taps(tokens, weight), expected, rtol=1e-12, atol=1e-12)
    looked = convolve_by_stacked_taps(tokens, weight, lookahead=True)
    assert looked.shape == (2, num_tokens - 1, 5)
    torch.testing.assert_close(looked, expected[:, :-1], rtol=1e-12, atol=1e-12)


def test_token_cluster_merge_padding_leaks_into_its_neighbour_through_the_conv():
    module = make_ctm()
    generator = torch.Generator().manual_seed(41)
    tokens = torch.randn(2, 8, 6, generator=generator, dtype=DTYPE)
    mask = make_mask([8, 5], 8)
    changed = tokens.clone()
    changed[1, 5] += 3.0  # the padding token right after item 1's last real token (4)
    with torch.no_grad():
        merged, features, score, _ = seeded(3, module, tokens, mask)
        merged_changed, features_changed, score_changed, _ = seeded(3, module, changed, mask)
    # The real token 4 sees padding token 5 through the kernel-3 conv ...
    assert (features_changed[1, 4] - features[1, 4]).abs().max() > 1e-3
    assert torch.equal(features_changed[1, :4], features[1, :4]) and torch.equal(features_changed[0], features[0])
    assert score_changed[1, 4] != score[1, 4]
    # ... so item 1's merged tokens change, though the padding token itself has weight 0.
    assert (merged_changed[1] - merged[1]).abs().max() > 1e-4
    assert torch.isneginf(score_changed[1, 5:]).all()
    # The loop reference agrees on the changed input.
    expected, _, _, _ = loop_ctm(module, changed, mask, noise_for(3, (2, 8)))
    torch.testing.assert_close(merged_changed, expected, rtol=1e-10, atol=1e-10)


def test_token_cluster_merge_far_padding_does_not_enter_the_merged_tokens():
    # A padding token two positions away from any real token reaches no real token through the
    # conv and has weight exp(-inf) = 0, so (for an item with >= k real tokens) nothing changes.
    module = make_ctm()
    generator = torch.Generator().manual_seed(43)
    tokens = torch.randn(2, 8, 6, generator=generator, dtype=DTYPE)
    mask = make_mask([8, 4], 8)
    changed = tokens.clone()
    changed[1, 7] += 3.0
    with torch.no_grad():
        merged, _, _, _ = seeded(3, module, tokens, mask)
        merged_changed, _, _, _ = seeded(3, module, changed, mask)
    torch.testing.assert_close(merged_changed, merged, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "num_tokens, ratio, expected",
    [(24, 0.25, 6), (6, 0.5, 3), (12, 0.25, 3), (3, 0.5, 2), (32, 0.125, 4), (10, 0.25, 3), (3, 0.25, 1),
     (2, 0.1, 1), (1, 0.5, 1), (8, 1.0, 8)],
)
def test_number_of_clusters(num_tokens, ratio, expected):
    assert max(math.ceil(num_tokens * ratio), 1) == expected
    module = TokenClusterMerge(8, ratio, 3)
    assert module.num_clusters(num_tokens) == expected
    with torch.no_grad():
        merged, features, score, cluster_index = seeded(0, module, torch.randn(2, num_tokens, 8), None)
    assert merged.shape == (2, expected, 8)
    assert cluster_index.shape == (2, num_tokens) and 0 <= cluster_index.min() and cluster_index.max() < expected
    assert features.shape == (2, num_tokens, 8) and score.shape == (2, num_tokens)


# ------------------------------------------------------------------------------------------------
# TCBlock attention
# ------------------------------------------------------------------------------------------------
def make_attention(dim=8, heads=2, seed=0):
    torch.manual_seed(seed)
    return randomize(MergedTokenAttention(dim, heads).to(DTYPE), seed + 1)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_merged_token_attention_matches_loop(heads):
    module = make_attention(heads=heads)
    generator = torch.Generator().manual_seed(51)
    merged = torch.randn(2, 3, 8, generator=generator, dtype=DTYPE)
    keys = torch.randn(2, 5, 8, generator=generator, dtype=DTYPE)
    key_score = torch.randn(2, 5, generator=generator, dtype=DTYPE)
    with torch.no_grad():
        got = module(merged, keys, key_score)
    torch.testing.assert_close(got, loop_attention(module, merged, keys, key_score), rtol=1e-10, atol=1e-10)


def test_merged_token_attention_minus_inf_scores_remove_keys():
    module = make_attention(heads=2)
    generator = torch.Generator().manual_seed(53)
    merged = torch.randn(2, 3, 8, generator=generator, dtype=DTYPE)
    keys = torch.randn(2, 6, 8, generator=generator, dtype=DTYPE)
    key_score = torch.randn(2, 6, generator=generator, dtype=DTYPE)
    key_score[0, 4:] = -math.inf
    key_score[1, 1] = -math.inf
    with torch.no_grad():
        got = module(merged, keys, key_score)
        # Same as dropping those keys altogether (and their values have no say).
        only_0 = module(merged[:1], keys[:1, :4], key_score[:1, :4])
        kept = [0, 2, 3, 4, 5]
        only_1 = module(merged[1:], keys[1:, kept], key_score[1:, kept])
        scrambled_keys = keys.clone()
        scrambled_keys[0, 4:] = 100.0
        scrambled = module(merged, scrambled_keys, key_score)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, loop_attention(module, merged, keys, key_score), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[:1], only_0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1:], only_1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scrambled, got, rtol=1e-12, atol=1e-12)


def test_merged_token_attention_key_score_is_an_additive_bias():
    # Adding the same constant to every key score changes nothing; changing one key's score does.
    module = make_attention(heads=2)
    generator = torch.Generator().manual_seed(55)
    merged = torch.randn(1, 2, 8, generator=generator, dtype=DTYPE)
    keys = torch.randn(1, 4, 8, generator=generator, dtype=DTYPE)
    key_score = torch.randn(1, 4, generator=generator, dtype=DTYPE)
    with torch.no_grad():
        base = module(merged, keys, key_score)
        shifted = module(merged, keys, key_score + 5.0)
        bumped = module(merged, keys, key_score + torch.tensor([[0.0, 2.0, 0.0, 0.0]], dtype=DTYPE))
    torch.testing.assert_close(shifted, base, rtol=1e-10, atol=1e-10)
    assert (bumped - base).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------
# Whole block
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("masked", [True, False])
def test_token_merge_block_matches_composed_loops(masked):
    torch.manual_seed(0)
    block = TokenMergeBlock(8, 0.5, 3, 2).to(DTYPE)
    randomize(block, 61)
    generator = torch.Generator().manual_seed(63)
    tokens = torch.randn(3, 7, 8, generator=generator, dtype=DTYPE)
    mask = make_mask([7, 3, 5], 7) if masked else None
    with torch.no_grad():
        got = seeded(9, block, tokens, mask)
    merged, features, scores, _ = loop_ctm(block.merge, tokens, mask, noise_for(9, (3, 7)))
    expected = loop_attention(block.attention, merged, features, scores)
    assert got.shape == (3, 4, 8)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(got).all()


def test_token_merge_blocks_chain_like_the_hierarchy():
    # Entity -> action -> event on 12 tokens with ratios 0.25 then 0.5: 12 -> 3 -> 2; the second
    # block runs unmasked over the first block's output, in the centres' order.
    torch.manual_seed(0)
    first, second = TokenMergeBlock(8, 0.25, 3, 2).to(DTYPE), TokenMergeBlock(8, 0.5, 3, 2).to(DTYPE)
    randomize(first, 71)
    randomize(second, 72)
    tokens = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(73), dtype=DTYPE)
    mask = make_mask([12, 7], 12)
    torch.manual_seed(11)
    with torch.no_grad():
        action = first(tokens, mask)
        event = second(action, None)
    noise_first = noise_for(11, (2, 12))
    noise_second = torch.rand((2, 3), dtype=DTYPE) * 1e-6  # the next draw of the same stream
    merged, features, scores, _ = loop_ctm(first.merge, tokens, mask, noise_first)
    expected_action = loop_attention(first.attention, merged, features, scores)
    merged, features, scores, _ = loop_ctm(second.merge, expected_action, None, noise_second)
    expected_event = loop_attention(second.attention, merged, features, scores)
    assert action.shape == (2, 3, 8) and event.shape == (2, 2, 8)
    torch.testing.assert_close(action, expected_action, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(event, expected_event, rtol=1e-10, atol=1e-10)


def test_token_merge_block_on_trimmed_tokens_matches_the_padded_ones(monkeypatch):
    # Items with at least max(k, clusters) valid tokens: cutting the trailing padding down to one
    # position past the longest item (the convolution reads it) changes nothing, provided the
    # cluster count still comes from the padded length. 30 tokens: torch computes the distances
    # by matrix products there, and must at the trimmed length too. Noise off: its draws have
    # the tokens' shape.
    monkeypatch.setattr(torch, "rand", lambda shape, **kwargs: torch.zeros(shape, **kwargs))
    cdist_modes = []
    cdist = torch.cdist
    monkeypatch.setattr(
        torch, "cdist", lambda *args, **kwargs: cdist_modes.append(kwargs["compute_mode"]) or cdist(*args, **kwargs)
    )
    torch.manual_seed(0)
    block = randomize(TokenMergeBlock(8, 0.25, 3, 2).to(DTYPE), 81)
    tokens = torch.randn(4, 30, 8, generator=torch.Generator().manual_seed(83), dtype=DTYPE)
    mask = make_mask([12, 9, 8, 8], 30)
    with torch.no_grad():
        padded, padded_index = block.merge_tokens(tokens, mask)
        trimmed, trimmed_index = block.merge_tokens(tokens[:, :13], mask[:, :13], padded_length=30)
        unrecounted, _ = block.merge_tokens(tokens[:, :13], mask[:, :13])
        # Position 12 read by the convolution only: no output for it.
        looked, looked_index = block.merge_tokens(tokens[:, :13], mask[:, :13], padded_length=30, lookahead=True)
        padded_features = block.merge(tokens, mask)[1]
        looked_features = block.merge(tokens[:, :13], None, lookahead=True)[1]
    assert padded.shape == trimmed.shape == looked.shape == (4, 8, 8)
    torch.testing.assert_close(trimmed, padded, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(looked, padded, rtol=1e-10, atol=1e-10)
    assert torch.equal(trimmed_index[mask[:, :13] > 0], padded_index[mask > 0])
    assert looked_index.shape == (4, 12) and torch.equal(looked_index[mask[:, :12] > 0], padded_index[mask > 0])
    torch.testing.assert_close(looked_features, padded_features[:, :12], rtol=1e-10, atol=1e-10)
    assert unrecounted.shape == (4, 4, 8)
    by_matmul, direct = "use_mm_for_euclid_dist", "donot_use_mm_for_euclid_dist"
    assert cdist_modes == [by_matmul, by_matmul, direct, by_matmul, by_matmul, direct]


def test_merged_token_attention_gradients_match_the_explicit_softmax():
    # float32, as in training, where sdpa may pick a fused kernel: the key scores (learned through
    # the merge score) must get the gradient of the explicit softmax, and so must everything else.
    module = make_attention(dim=16, heads=4).float()
    generator = torch.Generator().manual_seed(57)
    inputs = [torch.randn(3, 4, 16, generator=generator), torch.randn(3, 9, 16, generator=generator),
              torch.randn(3, 9, generator=generator)]
    inputs[2][0, 6:] = -math.inf
    weights = torch.randn(3, 4, 16, generator=generator)

    def explicit(merged, keys, key_score):
        heads, width = module.num_heads, module.head_dim
        query = module.query(module.norm(merged)).view(3, 4, heads, width).transpose(1, 2)
        key, value = module.key_value(module.norm(keys)).view(3, 9, 2, heads, width).permute(2, 0, 3, 1, 4)
        logits = (query * module.scale) @ key.transpose(-2, -1) + key_score[:, None, None, :]
        return merged + module.out_proj((logits.softmax(-1) @ value).transpose(1, 2).reshape(3, 4, 16))

    results = []
    for forward in (module, explicit):
        leaves = [tensor.clone().requires_grad_() for tensor in inputs]
        module.zero_grad()
        output = forward(*leaves)
        (output * weights).sum().backward()
        results.append([output] + [leaf.grad for leaf in leaves] + [p.grad.clone() for p in module.parameters()])
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
