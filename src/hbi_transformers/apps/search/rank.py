"""Searching an index: the full HBI score of every entry (or, in two stages, of the best entries by
pooled embeddings) for each query, one shard at a time with a running top-k, and each hit's
best-matching moment."""

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...models.hbi.configuration_hbi import LEVEL_NAMES
from ...models.hbi.modeling_hbi import HBITextOutput
from ...models.hbi.wti import LevelTokens, matched_word_frame_similarity
from .identity import fixed_merge_noise, pooled_embeddings
from .index import VideoIndex
from .results import SearchHit

DEFAULT_CHUNK_SIZE = 1024


class _RunningTopK:
    """The k best (score, entry id, extra values) per query over blocks seen so far."""

    def __init__(self, num_queries: int, k: int, num_extra: int, device):
        self.k = k
        self.scores = torch.empty(num_queries, 0, device=device)
        self.ids = torch.empty(num_queries, 0, dtype=torch.long, device=device)
        self.extra = torch.empty(num_queries, 0, num_extra, device=device)

    def update(self, scores: torch.Tensor, ids: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        scores = torch.cat([self.scores, scores.float()], dim=1)
        ids = torch.cat([self.ids, ids.expand(scores.shape[0], -1) if ids.dim() == 1 else ids], dim=1)
        if extra is None:
            extra = scores.new_empty(scores.shape[0], scores.shape[1] - self.scores.shape[1], self.extra.shape[2])
        extra = torch.cat([self.extra, extra.float()], dim=1)
        best = scores.topk(min(self.k, scores.shape[1]), dim=1).indices
        self.scores, self.ids = scores.gather(1, best), ids.gather(1, best)
        self.extra = extra.gather(1, best[..., None].expand(-1, -1, extra.shape[2]))


def search(
    index_dir: str | os.PathLike,
    queries: str | Sequence[str],
    model,
    processor,
    top_k: int = 10,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    candidates: int | None = None,
    progress: bool = False,
) -> list[list[SearchHit]]:
    """Ranks the entries of an index for each query with the full HBI score.

    Args:
        index_dir: an index written by `build_index`.
        queries: one caption or a list of them.
        model: the `HBIModel` that built the index (checked: another raises
            `IndexModelMismatchError`); its `config.level_weights` fuse the levels.
        processor: the `HBIProcessor` whose tokenizer reads the queries.
        top_k: hits per query.
        chunk_size: texts x videos per block of the word-frame interaction (bounds its memory).
        candidates: two-stage search: score with HBI only the `candidates` best entries of each
            query by pooled embeddings (see `pooled_embeddings`); None scores every entry.
            A pool covering the index gives exactly the exhaustive ranking.
        progress: show a progress bar over the shards.

    Returns:
        For each query, its hits, best first (fewer than `top_k` when the index is smaller). Each
        hit's time window is the one around its best-matching frame, see `best_matching_frames`.
    """
    queries = [queries] if isinstance(queries, str) else list(queries)
    index = VideoIndex.open(index_dir)
    index.check_model(model)
    tokens = processor(text=queries, return_tensors="pt")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            text_outputs = model.get_text_features(
                tokens["input_ids"].to(model.device), tokens["attention_mask"].to(model.device)
            )
        return _rank(index, text_outputs, model, top_k, chunk_size, candidates, progress)
    finally:
        model.train(was_training)


def search_by_text_features(
    index: VideoIndex | str | os.PathLike,
    text_outputs: HBITextOutput,
    model,
    top_k: int = 10,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    candidates: int | None = None,
    progress: bool = False,
) -> list[list[SearchHit]]:
    """`search` for queries already encoded with `model.get_text_features` (model in eval mode)."""
    if not isinstance(index, VideoIndex):
        index = VideoIndex.open(index)
    index.check_model(model)
    return _rank(index, text_outputs, model, top_k, chunk_size, candidates, progress)


@torch.no_grad()
def _rank(index: VideoIndex, text_outputs: HBITextOutput, model, top_k, chunk_size, candidates, progress):
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if candidates is not None and candidates < top_k:
        raise ValueError(f"candidates ({candidates}) must be at least top_k ({top_k})")
    num_queries = text_outputs.text_embeds.shape[0]
    device, dtype = text_outputs.text_embeds.device, text_outputs.text_embeds.dtype
    # All queries are merged as one batch (compute_similarity uses groups of 32): the batch only
    # matters to items with fewer valid tokens than cluster_num_neighbors (3 officially), and a
    # caption has at least 3 (start, a word, end).
    with fixed_merge_noise(device):
        text_levels = model.text_levels(text_outputs.text_embeds, text_outputs.attention_mask)
    pools = None if candidates is None else _first_stage_pools(index, text_levels[0], candidates)

    best = _RunningTopK(num_queries, top_k, len(LEVEL_NAMES), device)
    for shard in tqdm(range(len(index.shards)), desc="scoring shards", disable=not progress):
        rows, in_pool = (None, None) if pools is None else pools[shard]
        if rows is not None and len(rows) == 0:
            continue
        video_levels = index.load_levels(shard, rows, device=device, dtype=dtype)
        similarity = model.similarity_from_levels(text_levels, video_levels, chunk_size)
        scores = similarity.logits_per_text
        if in_pool is not None:
            scores = scores.masked_fill(~in_pool, float("-inf"))
        shard_rows = torch.arange(scores.shape[1], device=device) if rows is None else rows.to(device)
        best.update(scores, index.offsets[shard] + shard_rows, torch.stack(similarity.level_logits_per_text, dim=-1))
    return _hits(index, text_levels[0], best)


def _first_stage_pools(index: VideoIndex, text_entity: LevelTokens, candidates: int):
    """For each shard, the sorted rows some query keeps in its pool of `candidates` best entries by
    pooled embeddings, and `[queries, rows]` flags of whose pool each row is in."""
    device = text_entity.tokens.device
    query_vectors = pooled_embeddings(text_entity).float()
    best = _RunningTopK(query_vectors.shape[0], candidates, 0, device)
    for shard in range(len(index.shards)):
        pooled = index.load_pooled(shard, device=device)
        best.update(query_vectors @ pooled.T, index.offsets[shard] + torch.arange(pooled.shape[0], device=device))
    # One flag per (query, entry): a few bytes per entry and query, however large the pools.
    membership = torch.zeros(query_vectors.shape[0], len(index), dtype=torch.bool, device=device)
    membership.scatter_(1, best.ids, True)
    pools = []
    for shard in range(len(index.shards)):
        shard_membership = membership[:, index.offsets[shard] : index.offsets[shard + 1]]
        rows = shard_membership.any(dim=0).nonzero().flatten()
        pools.append((rows.cpu(), shard_membership[:, rows]))
    return pools


def best_matching_frames(text: LevelTokens, video: LevelTokens) -> torch.Tensor:
    """Each frame's share of the entity-level WTI score of matched text / video pairs:
    `[pairs, frames]`, summing over frames to the pair's (unscaled) entity similarity.

    With word-frame cosines `S[t, v]` and the weight heads' word and frame weights `w_t`, `w_v`,
    the entity score is `(sum_t w_t max_v S[t, v] + sum_v w_v max_t S[t, v]) / 2`. Frame v is
    credited with `w_t S[t, v]` for every word whose best frame it is, plus its own
    `w_v max_t S[t, v]`, halved. A search hit's best-matching frame is the valid frame with the
    largest share, and its time window runs from halfway to the previous sampled frame to halfway
    to the next (from the start of the entry for the first frame, to its end for the last).
    """
    similarity = matched_word_frame_similarity(text, video)  # [pairs, words, frames]
    best_per_word, best_frame_of_word = similarity.max(dim=2)
    text_to_video = torch.zeros_like(similarity[:, 0]).scatter_add_(1, best_frame_of_word, text.weights * best_per_word)
    video_to_text = video.weights * similarity.max(dim=1).values
    return (text_to_video + video_to_text) / 2


def _hits(index: VideoIndex, text_entity: LevelTokens, best: _RunningTopK) -> list[list[SearchHit]]:
    # Scores are sorted, and -inf only where a query's pool held fewer entries than top_k.
    num_found = torch.isfinite(best.scores).sum(dim=1).tolist()
    ranked = [best.ids[query, :count].tolist() for query, count in enumerate(num_found)]
    pairs = [(query, entry_id) for query, entry_ids in enumerate(ranked) for entry_id in entry_ids]
    window_of = _best_windows(index, text_entity, pairs)
    file_root = index.manifest["video_dir"]
    results = []
    for query, entry_ids in enumerate(ranked):
        hits = []
        for position, entry_id in enumerate(entry_ids):
            entry = index.entry(entry_id)
            window = window_of[(query, entry_id)]
            hits.append(
                SearchHit(
                    rank=position + 1,
                    score=float(best.scores[query, position]),
                    file=entry["file"],
                    path=entry["file"] if file_root is None else str(Path(file_root, entry["file"])),
                    segment_start=entry["start"],
                    segment_end=entry["end"],
                    window_start=window[0],
                    window_end=window[1],
                    best_frame_time=window[2],
                    level_scores=dict(zip(LEVEL_NAMES, best.extra[query, position].tolist())),
                )
            )
        results.append(hits)
    return results


def _best_windows(index: VideoIndex, text_entity: LevelTokens, pairs) -> dict:
    """(start, end, best frame time) of each (query, entry id) pair's best-matching moment."""
    windows = {}
    device = text_entity.tokens.device
    by_shard: dict[int, list[tuple[int, int, int]]] = {}
    for query, entry_id in pairs:
        shard, row = index.locate(entry_id)
        by_shard.setdefault(shard, []).append((query, entry_id, row))
    for shard, shard_pairs in by_shard.items():
        rows = torch.tensor(sorted({row for _, _, row in shard_pairs}))
        video_entity = index.load_levels(shard, rows, device=device, dtype=text_entity.tokens.dtype, num_levels=1)[0]
        position_of_row = {row: position for position, row in enumerate(rows.tolist())}
        queries = torch.tensor([query for query, _, _ in shard_pairs], device=device)
        positions = torch.tensor([position_of_row[row] for _, _, row in shard_pairs], device=device)
        shares = best_matching_frames(text_entity[queries], video_entity[positions])
        shares = shares.masked_fill(video_entity.mask[positions] == 0, float("-inf"))
        for (query, entry_id, _), frame in zip(shard_pairs, shares.argmax(dim=1).tolist()):
            windows[(query, entry_id)] = _window_around(index.entry(entry_id), index, frame)
    return windows


def _window_around(entry: dict, index: VideoIndex, frame: int) -> tuple[float | None, float | None, float | None]:
    times = entry["timestamps"]
    if not times:
        return None, None, None
    start = entry["start"] if entry["start"] is not None else 0.0
    end = entry["end"] if entry["end"] is not None else index.manifest["files"][entry["file"]]["duration"]
    window_start = start if frame == 0 else (times[frame - 1] + times[frame]) / 2
    window_end = end if frame == len(times) - 1 else (times[frame] + times[frame + 1]) / 2
    return window_start, window_end, times[frame]
