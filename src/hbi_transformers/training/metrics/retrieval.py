"""Text-video retrieval metrics: recall at K, median and mean rank, both directions.

The input is a similarity matrix `[n_text, n_video]` and, for each caption, the index of its
video (`text_to_video`; `None` means caption `i` belongs to video `i`). A video may have several
captions, in any order; a video with none is only a distractor.

Ranks are 1-based.

- Text to video: each caption is a query over all videos; its rank is 1 + the number of videos
  scoring strictly higher than its own video.
- Video to text: each video with at least one caption is a query. The captions are grouped by
  video and each group scores with its best caption; the rank is 1 + the number of other groups
  whose best caption beats the video's own best caption. With one caption per video this is plain
  ranking over captions. It does not rank the individual captions, so several captions of one
  wrong video count once.

Both rules are those of the official multi-sentence evaluation (HBI's `metrics.py`, from
CLIP4Clip: captions padded per video with -inf, `tensor_text_to_video_metrics` for t2v,
`compute_metrics(tensor_video_to_text_sim(...))` for v2t). HBI's own `eval_epoch` never takes that
path: its test sets (MSR-VTT 1k-A, ActivityNet and DiDeMo paragraphs) have one text per video and
it calls `compute_metrics` on the square matrix, which the rules above reduce to.

Ties (exact equal scores): `tie_rule="optimistic"` (default) puts the correct item ahead of
every candidate with the same score, `"pessimistic"` behind them. Without ties both match HBI's
`compute_metrics` exactly. With ties, `compute_metrics` adds one rank per tied position (a query
tied with k-1 others counts k times, with ranks r..r+k-1, which changes the number of queries) and
the argsort-based `tensor_text_to_video_metrics` orders tied items arbitrarily; neither is
reproduced. `*_num_tied_queries` counts the queries whose rank depends on the rule, so a degenerate
model (constant scores, which the optimistic rule ranks as perfect) cannot go unnoticed.

Median rank is the numpy median (mean of the two middle ranks for an even count), as HBI's
`compute_metrics` reports it (`tensor_text_to_video_metrics` takes the lower middle rank).
"""

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

RECALL_CUTOFFS = (1, 5, 10, 50)
TIE_RULES = ("optimistic", "pessimistic")
DIRECTIONS = ("t2v", "v2t")
DUAL_SOFTMAX_PREFIX = "dsl_"
# The directory name must equal the script's name for `evaluate.load(directory)`.
EVALUATE_MODULE_PATH = Path(__file__).with_name("retrieval_metric")
# Upper bound on the matrix entries handled at once (64 MiB of float32), so the temporary
# copies and comparison masks of a 10^4 x 10^4 or larger evaluation stay small.
DEFAULT_MAX_CHUNK_ELEMENTS = 2**24


def retrieval_metrics(
    similarity: torch.Tensor | np.ndarray,
    text_to_video: torch.Tensor | np.ndarray | list[int] | None = None,
    *,
    tie_rule: str = "optimistic",
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> dict[str, float | int]:
    """Text-to-video and video-to-text R@1/5/10/50 (percent), median and mean rank.

    Args:
        similarity: `[n_text, n_video]` scores, higher is better (torch on any device, or numpy).
        text_to_video: `[n_text]` index of each caption's video; `None` when the matrix is square
            with caption `i` describing video `i`.
        tie_rule: `"optimistic"` or `"pessimistic"`, see the module docstring.
        max_chunk_elements: how many matrix entries to compare at once.

    Returns:
        `{direction}_R@{k}`, `{direction}_MdR`, `{direction}_MnR`, `{direction}_num_queries` and
        `{direction}_num_tied_queries` for `direction` in `t2v`, `v2t`.
    """
    similarity, text_to_video = _validated_inputs(similarity, text_to_video, tie_rule)
    return {
        **_summary("t2v", *_text_to_video_ranks(similarity, text_to_video, tie_rule, max_chunk_elements)),
        **_summary("v2t", *_video_to_text_ranks(similarity, text_to_video, tie_rule, max_chunk_elements)),
    }


def dual_softmax(
    similarity: torch.Tensor | np.ndarray,
    temperature: float = 1.0,
    dim: int = 0,
    *,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Dual-softmax (DSL) re-weighting: `similarity * softmax(similarity / temperature, dim)`.

    The official HBI code has no such step; this is the common inference trick from CAMoE, used by
    many text-video retrieval repositories. The softmax runs over the query axis: with `dim=0`
    (over captions, for each video) it is the prior for text-to-video ranking along a row. A video
    that scores high with every caption gets a flat softmax, so it is down-weighted. `dim=1` is the
    prior for video-to-text ranking.

    `temperature=1` suits the model's `logits_per_text`, which are already multiplied by
    `exp(logit_scale)` (about 100). For raw cosine similarities pass about 0.01.

    Returns a torch tensor on the input's device, at least float32.
    """
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 or 1 for a [n_text, n_video] matrix, got {dim}")
    similarity = torch.as_tensor(similarity)
    similarity = similarity.to(torch.promote_types(similarity.dtype, torch.float32))
    reweighted = torch.empty_like(similarity)
    # Every softmax is taken along `dim`, so the matrix splits into independent slices across it.
    # Working on the transposed views for dim=1 keeps one loop for both axes.
    source = similarity if dim == 0 else similarity.T
    target = reweighted if dim == 0 else reweighted.T
    step = _chunk_length(source.shape[0], max_chunk_elements)
    for start in range(0, source.shape[1], step):
        block = source[:, start : start + step]
        target[:, start : start + step] = block * torch.softmax(block / temperature, dim=0)
    return reweighted


def dual_softmax_retrieval_metrics(
    similarity: torch.Tensor | np.ndarray,
    text_to_video: torch.Tensor | np.ndarray | list[int] | None = None,
    *,
    temperature: float = 1.0,
    tie_rule: str = "optimistic",
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> dict[str, float | int]:
    """The metrics of `retrieval_metrics` after dual-softmax re-ranking, keys prefixed `dsl_`.

    Each direction uses its own prior: text-to-video ranks `dual_softmax(dim=0)`, video-to-text
    ranks `dual_softmax(dim=1)`. Merge with the plain set for a report:
    `{**retrieval_metrics(s, ids), **dual_softmax_retrieval_metrics(s, ids)}`.
    """
    similarity, text_to_video = _validated_inputs(similarity, text_to_video, tie_rule)
    if not torch.isfinite(similarity).all():
        raise ValueError("dual softmax needs finite similarities (an infinite score turns into NaN)")
    text_query_scores = dual_softmax(similarity, temperature, dim=0, max_chunk_elements=max_chunk_elements)
    t2v = _summary("t2v", *_text_to_video_ranks(text_query_scores, text_to_video, tie_rule, max_chunk_elements))
    del text_query_scores  # only one re-weighted copy of the matrix alive at a time
    video_query_scores = dual_softmax(similarity, temperature, dim=1, max_chunk_elements=max_chunk_elements)
    v2t = _summary("v2t", *_video_to_text_ranks(video_query_scores, text_to_video, tie_rule, max_chunk_elements))
    return {f"{DUAL_SOFTMAX_PREFIX}{name}": value for name, value in {**t2v, **v2t}.items()}


def format_metrics_table(metrics: Mapping[str, float | int] | Mapping[str, Mapping[str, float | int]]) -> str:
    """A text table: one row per direction (dual-softmax rows too when present), columns R@1 R@5
    R@10 R@50 MdR MnR.

    Pass one metrics dict, or `{model_name: metrics}` to compare models, e.g.
    `format_metrics_table({"untrained": m1, "trained": m2})`. Rows are grouped by direction, so
    the models' numbers for one direction sit on adjacent lines.
    """
    is_comparison = bool(metrics) and all(isinstance(value, Mapping) for value in metrics.values())
    models = dict(metrics) if is_comparison else {"": metrics}
    columns = [f"R@{k}" for k in RECALL_CUTOFFS] + ["MdR", "MnR"]
    directions = [
        prefix + direction
        for prefix in ("", DUAL_SOFTMAX_PREFIX)
        for direction in DIRECTIONS
        if any(f"{prefix}{direction}_R@1" in model_metrics for model_metrics in models.values())
    ]
    header = (["model"] if is_comparison else []) + ["direction"] + columns
    rows = [
        ([name] if is_comparison else [])
        + [direction]
        + [_format_value(model_metrics.get(f"{direction}_{column}")) for column in columns]
        for direction in directions
        for name, model_metrics in models.items()
    ]
    label_count = len(header) - len(columns)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i < label_count else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def load_retrieval_metric():
    """The package's local `evaluate` module wrapping `retrieval_metrics` (no hub access).

    Use `metric.add_batch(predictions=similarity_rows, references=video_indices)` then
    `metric.compute()`, or `metric.compute(predictions=..., references=...)`. Optional compute
    arguments: `tie_rule` and `dual_softmax_temperature` (adds the `dsl_` set).
    """
    try:
        import evaluate
    except ImportError as error:
        raise ImportError(
            "load_retrieval_metric needs the `evaluate` library: pip install evaluate==0.4.6 "
            "(retrieval_metrics itself works without it)"
        ) from error
    return evaluate.load(str(EVALUATE_MODULE_PATH))


def _validated_inputs(similarity, text_to_video, tie_rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    if tie_rule not in TIE_RULES:
        raise ValueError(f"tie_rule must be one of {TIE_RULES}, got {tie_rule!r}")
    similarity = torch.as_tensor(similarity)
    if similarity.ndim != 2 or similarity.shape[0] == 0 or similarity.shape[1] == 0:
        raise ValueError(f"similarity must be a non-empty [n_text, n_video] matrix, got {tuple(similarity.shape)}")
    if torch.isnan(similarity).any():
        # A NaN compares false with everything and would silently get the best rank.
        raise ValueError("similarity contains NaN")
    n_text, n_video = similarity.shape
    if text_to_video is None:
        if n_text != n_video:
            raise ValueError(
                f"a {n_text} x {n_video} similarity matrix needs text_to_video (the video index of each caption)"
            )
        return similarity, torch.arange(n_text, device=similarity.device)
    text_to_video = torch.as_tensor(text_to_video, device=similarity.device)
    if text_to_video.shape != (n_text,) or text_to_video.is_floating_point():
        raise ValueError(
            f"text_to_video must hold {n_text} integer video indices, got shape {tuple(text_to_video.shape)}"
        )
    if text_to_video.min() < 0 or text_to_video.max() >= n_video:
        raise ValueError(f"text_to_video must index the {n_video} videos")
    return similarity, text_to_video.long()


def _chunk_length(entries_per_slice: int, max_chunk_elements: int) -> int:
    return max(1, max_chunk_elements // entries_per_slice)


def _rank_against(
    scores: torch.Tensor, correct_scores: torch.Tensor, tie_rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of `correct_scores[q]` within `scores[q, :]` (which contains it once), and tie flags."""
    higher = (scores > correct_scores[:, None]).sum(dim=1)
    tied_others = (scores == correct_scores[:, None]).sum(dim=1) - 1
    ranks = 1 + higher + (tied_others if tie_rule == "pessimistic" else 0)
    return ranks.cpu(), (tied_others > 0).cpu()


def _text_to_video_ranks(similarity, text_to_video, tie_rule, max_chunk_elements):
    n_text, n_video = similarity.shape
    step = _chunk_length(n_video, max_chunk_elements)
    ranks, tied = [], []
    for start in range(0, n_text, step):
        scores = similarity[start : start + step]
        correct = scores.gather(1, text_to_video[start : start + step, None]).squeeze(1)
        chunk_ranks, chunk_tied = _rank_against(scores, correct, tie_rule)
        ranks.append(chunk_ranks)
        tied.append(chunk_tied)
    return torch.cat(ranks), torch.cat(tied)


def _video_to_text_ranks(similarity, text_to_video, tie_rule, max_chunk_elements):
    # Group g holds the captions of video captioned_videos[g]; videos without captions are not
    # queries and have no group.
    captioned_videos, group_of_text = torch.unique(text_to_video, sorted=True, return_inverse=True)
    n_groups = len(captioned_videos)
    step = _chunk_length(similarity.shape[0], max_chunk_elements)  # n_text >= n_groups rows per column
    ranks, tied = [], []
    for start in range(0, n_groups, step):
        query_videos = captioned_videos[start : start + step]
        caption_scores = similarity[:, query_videos]  # [n_text, queries]
        # Best caption of each group for each query video: [n_groups, queries]. Every group has a
        # caption, so every entry of the uninitialised tensor is written.
        group_scores = torch.empty(
            (n_groups, len(query_videos)), dtype=similarity.dtype, device=similarity.device
        ).scatter_reduce_(
            0,
            group_of_text[:, None].expand_as(caption_scores),
            caption_scores,
            reduce="amax",
            include_self=False,
        )
        # Query video captioned_videos[start + j] owns group start + j.
        own_groups = torch.arange(start, start + len(query_videos), device=similarity.device)
        correct = group_scores[own_groups, torch.arange(len(query_videos), device=similarity.device)]
        chunk_ranks, chunk_tied = _rank_against(group_scores.T, correct, tie_rule)
        ranks.append(chunk_ranks)
        tied.append(chunk_tied)
    return torch.cat(ranks), torch.cat(tied)


def _summary(direction: str, ranks: torch.Tensor, tied: torch.Tensor) -> dict[str, float | int]:
    ranks = ranks.numpy().astype(np.float64)
    summary: dict[str, float | int] = {
        f"{direction}_R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_CUTOFFS
    }
    summary[f"{direction}_MdR"] = float(np.median(ranks))
    summary[f"{direction}_MnR"] = float(np.mean(ranks))
    summary[f"{direction}_num_queries"] = len(ranks)
    summary[f"{direction}_num_tied_queries"] = int(tied.sum())
    return summary


def _format_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
