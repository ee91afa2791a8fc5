import math
import statistics
import sys

import numpy as np
import pytest
import torch

from hbi_transformers.training.metrics.retrieval import (
    dual_softmax,
    dual_softmax_retrieval_metrics,
    format_metrics_table,
    load_retrieval_metric,
    retrieval_metrics,
)

CUTOFFS = (1, 5, 10, 50)


def brute_force_rank(candidate_scores: list[float], correct_index: int, tie_rule: str) -> tuple[int, bool]:
    correct = candidate_scores[correct_index]
    higher = sum(1 for score in candidate_scores if score > correct)
    tied_others = sum(1 for index, score in enumerate(candidate_scores) if score == correct and index != correct_index)
    return 1 + higher + (tied_others if tie_rule == "pessimistic" else 0), tied_others > 0


def brute_force_summary(direction: str, ranks: list[int], tied: list[bool]) -> dict:
    summary = {f"{direction}_R@{k}": 100.0 * sum(1 for rank in ranks if rank <= k) / len(ranks) for k in CUTOFFS}
    summary[f"{direction}_MdR"] = float(statistics.median(ranks))
    summary[f"{direction}_MnR"] = sum(ranks) / len(ranks)
    summary[f"{direction}_num_queries"] = len(ranks)
    summary[f"{direction}_num_tied_queries"] = sum(tied)
    return summary


def brute_force_metrics(similarity, text_to_video, tie_rule="optimistic") -> dict:
    """Every caption ranks all videos; every captioned video ranks the caption groups, each group
    scored by its best caption for that video."""
    rows = np.asarray(similarity).tolist()
    t2v_results = [brute_force_rank(rows[text], text_to_video[text], tie_rule) for text in range(len(rows))]
    captioned_videos = sorted(set(text_to_video))
    v2t_results = []
    for video in captioned_videos:
        group_scores = [
            max(rows[text][video] for text in range(len(rows)) if text_to_video[text] == group)
            for group in captioned_videos
        ]
        v2t_results.append(brute_force_rank(group_scores, captioned_videos.index(video), tie_rule))
    return {
        **brute_force_summary("t2v", *map(list, zip(*t2v_results))),
        **brute_force_summary("v2t", *map(list, zip(*v2t_results))),
    }


def assert_metrics_equal(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-9), name


def uneven_multi_caption_case(seed: int, n_video: int = 70):
    """1 to 4 captions per video (uneven), in shuffled order, and 5 distractor videos with no
    caption at all."""
    rng = np.random.default_rng(seed)
    captioned = np.arange(n_video - 5)
    text_to_video = rng.permutation(np.repeat(captioned, rng.integers(1, 5, len(captioned))))
    similarity = rng.normal(size=(len(text_to_video), n_video))
    similarity[np.arange(len(text_to_video)), text_to_video] += 1.0  # retrieval better than chance
    return similarity, text_to_video.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tie_rule", ["optimistic", "pessimistic"])
def test_multi_caption_random_matches_brute_force(seed, tie_rule):
    similarity, text_to_video = uneven_multi_caption_case(seed)
    expected = brute_force_metrics(similarity, text_to_video, tie_rule)
    # A tiny chunk budget runs many chunks, including a last partial one.
    for max_chunk_elements in (2**24, 1000):
        actual = retrieval_metrics(similarity, text_to_video, tie_rule=tie_rule, max_chunk_elements=max_chunk_elements)
        assert_metrics_equal(actual, expected)
    assert expected["v2t_num_queries"] == 65 and expected["t2v_num_queries"] == len(text_to_video)


@pytest.mark.parametrize("tie_rule", ["optimistic", "pessimistic"])
def test_exact_ties_match_brute_force(tie_rule):
    # Scores from {0, 1, 2, 3}: nearly every query ties with other candidates.
    rng = np.random.default_rng(3)
    text_to_video = rng.permutation(np.repeat(np.arange(30), rng.integers(1, 4, 30))).tolist()
    similarity = rng.integers(0, 4, size=(len(text_to_video), 30)).astype(np.float32)
    expected = brute_force_metrics(similarity, text_to_video, tie_rule)
    assert expected["t2v_num_tied_queries"] > 0 and expected["v2t_num_tied_queries"] > 0
    assert_metrics_equal(
        retrieval_metrics(torch.from_numpy(similarity), text_to_video, tie_rule=tie_rule, max_chunk_elements=64),
        expected,
    )


def test_tie_rules_on_a_hand_example():
    # Caption 0 ties its video with video 1; caption 1 is behind video 0 and tied with video 2.
    similarity = [[0.5, 0.5, 0.1], [0.9, 0.3, 0.3], [0.0, 0.1, 0.7]]
    optimistic = retrieval_metrics(np.array(similarity))
    pessimistic = retrieval_metrics(np.array(similarity), tie_rule="pessimistic")
    # t2v ranks: optimistic 1, 2, 1; pessimistic 2, 3, 1.
    assert optimistic["t2v_MnR"] == pytest.approx(4 / 3) and pessimistic["t2v_MnR"] == pytest.approx(2)
    assert optimistic["t2v_R@1"] == pytest.approx(200 / 3) and pessimistic["t2v_R@1"] == pytest.approx(100 / 3)
    assert optimistic["t2v_num_tied_queries"] == pessimistic["t2v_num_tied_queries"] == 2


def test_constant_scores_are_flagged_as_ties():
    similarity = torch.zeros(8, 8)
    optimistic = retrieval_metrics(similarity)
    pessimistic = retrieval_metrics(similarity, tie_rule="pessimistic")
    assert optimistic["t2v_R@1"] == 100.0 and pessimistic["t2v_MdR"] == 8.0
    assert optimistic["t2v_num_tied_queries"] == optimistic["v2t_num_tied_queries"] == 8


def test_video_to_text_counts_a_wrong_video_once_however_many_captions_beat_it():
    # Video 1 has three captions, all closer to video 0 than video 0's own caption. Video 0 still
    # ranks second: video 1's caption group counts once.
    similarity = np.array([[0.5, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    metrics = retrieval_metrics(similarity, [0, 1, 1, 1])
    assert metrics["v2t_num_queries"] == 2
    assert metrics["v2t_MnR"] == pytest.approx((2 + 1) / 2)  # video 0 rank 2, video 1 rank 1
    assert metrics["t2v_MnR"] == pytest.approx((1 + 2 + 2 + 2) / 4)


def test_identity_mapping_is_the_default():
    rng = np.random.default_rng(4)
    similarity = rng.normal(size=(60, 60))
    expected = brute_force_metrics(similarity, list(range(60)))
    assert_metrics_equal(retrieval_metrics(similarity), expected)
    assert_metrics_equal(retrieval_metrics(torch.from_numpy(similarity), torch.arange(60)), expected)


def test_perfect_and_worst_retrieval():
    n = 60  # more than 50, so the worst rank misses R@50
    perfect = retrieval_metrics(torch.eye(n))
    worst = retrieval_metrics(-torch.eye(n))
    for direction in ("t2v", "v2t"):
        assert [perfect[f"{direction}_R@{k}"] for k in CUTOFFS] == [100.0] * 4
        assert perfect[f"{direction}_MdR"] == perfect[f"{direction}_MnR"] == 1.0
        assert [worst[f"{direction}_R@{k}"] for k in CUTOFFS] == [0.0] * 4
        assert worst[f"{direction}_MdR"] == worst[f"{direction}_MnR"] == float(n)


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="text_to_video"):
        retrieval_metrics(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="index"):
        retrieval_metrics(torch.zeros(3, 2), [0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="tie_rule"):
        retrieval_metrics(torch.eye(2), tie_rule="average")
    with pytest.raises(ValueError, match="finite"):
        dual_softmax_retrieval_metrics(torch.tensor([[1.0, float("-inf")], [0.0, 1.0]]))


def brute_force_dual_softmax(similarity, temperature, dim):
    rows = np.asarray(similarity).tolist()
    n_text, n_video = len(rows), len(rows[0])
    result = [[0.0] * n_video for _ in range(n_text)]
    for text in range(n_text):
        for video in range(n_video):
            if dim == 0:
                normaliser = sum(math.exp(rows[other][video] / temperature) for other in range(n_text))
            else:
                normaliser = sum(math.exp(rows[text][other] / temperature) for other in range(n_video))
            score = rows[text][video]
            result[text][video] = score * math.exp(score / temperature) / normaliser
    return np.array(result)


@pytest.mark.parametrize("dim", [0, 1])
def test_dual_softmax_matches_loop(dim):
    similarity = np.random.default_rng(5).normal(size=(13, 9))
    expected = brute_force_dual_softmax(similarity, temperature=0.5, dim=dim)
    for max_chunk_elements in (2**24, 20):
        actual = dual_softmax(similarity, temperature=0.5, dim=dim, max_chunk_elements=max_chunk_elements)
        np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-12)


def test_dual_softmax_metrics_rank_each_direction_with_its_own_prior():
    similarity, text_to_video = uneven_multi_caption_case(6, n_video=40)
    metrics = dual_softmax_retrieval_metrics(similarity, text_to_video, temperature=0.3)
    t2v = brute_force_metrics(brute_force_dual_softmax(similarity, 0.3, dim=0), text_to_video)
    v2t = brute_force_metrics(brute_force_dual_softmax(similarity, 0.3, dim=1), text_to_video)
    expected = {f"dsl_{name}": value for name, value in t2v.items() if name.startswith("t2v")}
    expected |= {f"dsl_{name}": value for name, value in v2t.items() if name.startswith("v2t")}
    assert_metrics_equal(metrics, expected)


def test_table_renders_one_model_and_a_comparison():
    trained = {**retrieval_metrics(torch.eye(4)), **dual_softmax_retrieval_metrics(torch.eye(4))}
    untrained = retrieval_metrics(-torch.eye(4))
    single = format_metrics_table(trained).splitlines()
    assert single[0].split() == ["direction", "R@1", "R@5", "R@10", "R@50", "MdR", "MnR"]
    assert [line.split()[0] for line in single[1:]] == ["t2v", "v2t", "dsl_t2v", "dsl_v2t"]
    assert single[1].split()[1:] == ["100.0", "100.0", "100.0", "100.0", "1.0", "1.0"]

    comparison = format_metrics_table({"untrained": untrained, "trained": trained}).splitlines()
    assert comparison[0].split()[:2] == ["model", "direction"]
    assert [line.split()[:2] for line in comparison[1:3]] == [["untrained", "t2v"], ["trained", "t2v"]]
    assert comparison[1].split()[2:] == ["0.0", "100.0", "100.0", "100.0", "4.0", "4.0"]
    # The untrained model has no dual-softmax set: its cells are dashes.
    assert comparison[5].split() == ["untrained", "dsl_t2v"] + ["-"] * 6


def test_evaluate_module_loads_offline_and_matches():
    pytest.importorskip("evaluate")  # conftest sets HF_HUB_OFFLINE: loading by path needs no hub
    similarity, text_to_video = uneven_multi_caption_case(7, n_video=30)
    metric = load_retrieval_metric()
    assert metric.compute(predictions=similarity, references=text_to_video) == retrieval_metrics(
        similarity, text_to_video
    )
    for start in range(0, len(text_to_video), 16):
        metric.add_batch(predictions=similarity[start : start + 16], references=text_to_video[start : start + 16])
    with_dual_softmax = metric.compute(tie_rule="pessimistic", dual_softmax_temperature=0.5)
    assert with_dual_softmax == {
        **retrieval_metrics(similarity, text_to_video, tie_rule="pessimistic"),
        **dual_softmax_retrieval_metrics(similarity, text_to_video, temperature=0.5, tie_rule="pessimistic"),
    }


def test_loading_the_evaluate_module_without_evaluate_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "evaluate", None)  # makes `import evaluate` fail
    with pytest.raises(ImportError, match="pip install evaluate"):
        load_retrieval_metric()
