"""Searching an index: the full HBI score of every entry (or, in two stages, of the best entries by
pooled embeddings) for each query, in batches with a running top-k, and each hit's
best-matching moment."""

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from ...models.hbi.configuration_hbi import LEVEL_NAMES
from ...models.hbi.modeling_hbi import HBITextOutput
from ...models.hbi.wti import LevelTokens, matched_word_frame_similarity
from .identity import fixed_merge_noise, pooled_embeddings
from .index import SEARCH_COLUMNS, VideoIndex
from .results import SearchHit

DEFAULT_CHUNK_SIZE = 1024
# Partitions scanned (None: every one), and approximate neighbours re-ranked on the exact pooled
# vectors per candidate kept (none: at 10^6 entries, 4-bit codes alone kept 97.2% recall@10 with
# 100 candidates; re-ranking 2 per candidate cost 8 ms a query for 97.8%; benchmarks/bench_search.py).
DEFAULT_NPROBES, DEFAULT_REFINE_FACTOR = None, None


class _RunningTopK:
    """The k best (score, entry id) per query over blocks seen so far."""

    def __init__(self, num_queries: int, k: int, device):
        self.k = k
        self.scores = torch.empty(num_queries, 0, device=device)
        self.ids = torch.empty(num_queries, 0, dtype=torch.long, device=device)

    def update(self, scores: torch.Tensor, ids: torch.Tensor) -> None:
        # NaN (a damaged or degenerate entry) ranks after every real score, before -inf (not a
        # candidate of this query).
        scores = scores.float()
        scores = torch.where(scores.isnan(), torch.finfo(torch.float32).min, scores)
        scores = torch.cat([self.scores, scores], dim=1)
        ids = torch.cat([self.ids, ids.expand(scores.shape[0], -1) if ids.dim() == 1 else ids], dim=1)
        best = scores.topk(min(self.k, scores.shape[1]), dim=1).indices
        self.scores, self.ids = scores.gather(1, best), ids.gather(1, best)


def search(
    index_dir: str | os.PathLike,
    queries: str | Sequence[str],
    model,
    processor,
    top_k: int = 10,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    candidates: int | None = None,
    progress: bool = False,
    nprobes: int | None = DEFAULT_NPROBES,
    refine_factor: int | None = DEFAULT_REFINE_FACTOR,
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
            The pool comes from the engine's vector search: its RaBitQ index when the index
            has one (`nprobes` of its partitions scanned, None: all; with a `refine_factor`,
            `refine_factor` x `candidates` approximate neighbours re-ranked on the exact
            vectors), else an exact scan; with an exact scan a pool covering the index gives
            exactly the exhaustive ranking.
        progress: show a progress bar over the batches of an exhaustive search.

    Returns:
        For each query, its hits, best first (fewer than `top_k` when the index is smaller). Each
        hit's time window is the one around its best-matching frame, see `best_matching_frames`.
    """
    queries = [queries] if isinstance(queries, str) else list(queries)
    index = VideoIndex.open(index_dir)
    tokens = processor(text=queries, return_tensors="pt")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            text_outputs = model.get_text_features(
                tokens["input_ids"].to(model.device), tokens["attention_mask"].to(model.device)
            )
        return _rank(index, text_outputs, model, top_k, chunk_size, candidates, (nprobes, refine_factor), progress)
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
    nprobes: int | None = DEFAULT_NPROBES,
    refine_factor: int | None = DEFAULT_REFINE_FACTOR,
) -> list[list[SearchHit]]:
    """`search` for queries already encoded with `model.get_text_features` (model in eval mode)."""
    if not isinstance(index, VideoIndex):
        index = VideoIndex.open(index)
    return _rank(index, text_outputs, model, top_k, chunk_size, candidates, (nprobes, refine_factor), progress)


@torch.no_grad()
def _rank(index: VideoIndex, text_outputs: HBITextOutput, model, top_k, chunk_size, candidates, first_stage, progress):
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if candidates is not None and candidates < top_k:
        raise ValueError(f"candidates ({candidates}) must be at least top_k ({top_k})")
    for name, value in zip(("nprobes", "refine_factor"), first_stage):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    num_queries = text_outputs.text_embeds.shape[0]
    device, dtype = text_outputs.text_embeds.device, text_outputs.text_embeds.dtype
    pending_pool = None
    with ThreadPoolExecutor(max_workers=1) as first_stage_thread:
        if candidates is not None:
            # The engine's vector search runs outside the GIL: the query's merged levels are
            # computed meanwhile (6 of about 50 ms a query at 10^6 entries). The entity level needs
            # no merging, so no clustering noise.
            entity = model.text_levels(text_outputs.text_embeds, text_outputs.attention_mask, num_levels=1)[0]
            pending_pool = first_stage_thread.submit(_first_stage_pool, index, entity, candidates, *first_stage)
        # Checked meanwhile (a walk over the model's tensors, 2 ms a query in benchmarks/bench_search.py):
        # the scan only reads.
        index.check_model(model)
        # All queries are merged as one batch (compute_similarity uses groups of 32): the batch only
        # matters to items with fewer valid tokens than cluster_num_neighbors (3 officially), and a
        # caption has at least 3 (start, a word, end).
        with fixed_merge_noise(device):
            text_levels = model.text_levels(text_outputs.text_embeds, text_outputs.attention_mask)
        pool, in_pool = pending_pool.result() if pending_pool is not None else (None, None)
    best = _RunningTopK(num_queries, top_k, device)
    # Ranking needs the levels up to the last one the fusion weighs (only the entity level with the
    # official retrieval weights); every level's score is computed for the hits alone.
    weighted = [level for level, weight in enumerate(model.config.level_weights) if weight]
    ranking_levels = weighted[-1] + 1 if weighted else 1

    def score(rows, first_id, in_pool=None):
        video_levels = index.levels(rows, device=device, dtype=dtype, num_levels=ranking_levels)
        scores = model.similarity_from_levels(text_levels[:ranking_levels], video_levels, chunk_size).logits_per_text
        if in_pool is not None:
            scores = scores.masked_fill(~in_pool, float("-inf"))
        best.update(scores, first_id + torch.arange(scores.shape[1], device=device))

    if candidates is None:
        position = 0
        for rows in tqdm(index.scan(chunk_size, SEARCH_COLUMNS), desc="scoring entries", disable=not progress):
            score(rows, position)
            position += rows.num_rows

        def hit_rows(ids):
            return index.take(ids)
    else:
        if pool.num_rows:
            score(pool, 0, in_pool.to(device))

        def hit_rows(ids):
            return pool.take(pa.array(ids, pa.int64()))
    return _hits(index, model, text_levels, best, hit_rows, chunk_size)


def _first_stage_pool(index: VideoIndex, text_entity: LevelTokens, candidates: int, nprobes: int | None,
                      refine_factor: int | None):
    """The rows some query keeps among its `candidates` best by pooled embeddings (through the
    engine's vector search), each read once however many pools it is in, and `[queries, rows]`
    flags of whose pool each row is in."""
    query_vectors = pooled_embeddings(text_entity).float().cpu().numpy()
    pools = [index.nearest_ids(vector, candidates, nprobes, refine_factor) for vector in query_vectors]
    position_of = {}
    for row_ids in pools:
        for row_id in row_ids:
            position_of.setdefault(row_id, len(position_of))
    in_pool = torch.zeros(len(pools), len(position_of), dtype=torch.bool)
    for query, row_ids in enumerate(pools):
        in_pool[query, [position_of[row_id] for row_id in row_ids]] = True
    return index.take_rows(list(position_of)), in_pool


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


def _hits(index: VideoIndex, model, text_levels: list[LevelTokens], best: _RunningTopK, hit_rows,
          chunk_size: int) -> list[list[SearchHit]]:
    # Scores are sorted, and -inf only where a query's pool held fewer entries than top_k.
    num_found = (best.scores > float("-inf")).sum(dim=1).tolist()
    ranked = [best.ids[query, :count].tolist() for query, count in enumerate(num_found)]
    ids = sorted({entry_id for entry_ids in ranked for entry_id in entry_ids})
    rows = hit_rows(ids)
    row_of = {entry_id: row for row, entry_id in enumerate(ids)}
    entries = rows.select(["file", "start", "end", "timestamps", "duration"]).to_pylist()
    pairs = [(query, row_of[entry_id]) for query, entry_ids in enumerate(ranked) for entry_id in entry_ids]
    device = text_levels[0].tokens.device
    video_levels = index.levels(rows, device=device, dtype=text_levels[0].tokens.dtype) if pairs else None
    frame_of = _best_frames(text_levels[0], video_levels, pairs)
    level_scores = _level_scores(model, text_levels, video_levels, ranked, row_of, chunk_size)
    file_root = index.video_dir
    lowest = torch.finfo(torch.float32).min
    results = []
    for query, entry_ids in enumerate(ranked):
        hits = []
        for position, entry_id in enumerate(entry_ids):
            entry = entries[row_of[entry_id]]
            window = _window_around(entry, frame_of[(query, row_of[entry_id])])
            value = float(best.scores[query, position])
            hits.append(
                SearchHit(
                    rank=position + 1,
                    score=float("nan") if value == lowest else value,
                    file=entry["file"],
                    path=entry["file"] if file_root is None else str(Path(file_root, entry["file"])),
                    segment_start=entry["start"],
                    segment_end=entry["end"],
                    window_start=window[0],
                    window_end=window[1],
                    best_frame_time=window[2],
                    level_scores=dict(zip(LEVEL_NAMES, level_scores[query][position])),
                )
            )
        results.append(hits)
    return results


def _best_frames(text_entity: LevelTokens, video_levels: list[LevelTokens] | None, pairs) -> dict:
    """The best-matching frame of each (query, row) pair."""
    if not pairs:
        return {}
    device = text_entity.tokens.device
    video_entity = video_levels[0]
    queries = torch.tensor([query for query, _ in pairs], device=device)
    positions = torch.tensor([row for _, row in pairs], device=device)
    shares = best_matching_frames(text_entity[queries], video_entity[positions])
    shares = shares.masked_fill(video_entity.mask[positions] == 0, float("-inf"))
    return dict(zip(pairs, shares.nan_to_num(nan=float("-inf")).argmax(dim=1).tolist()))


def _level_scores(model, text_levels, video_levels, ranked, row_of, chunk_size) -> list[list[list[float]]]:
    """Each query's hits' scores at every level, scaled as the fused score is."""
    scores = []
    for query, entry_ids in enumerate(ranked):
        if not entry_ids:
            scores.append([])
            continue
        positions = torch.tensor([row_of[entry_id] for entry_id in entry_ids], device=text_levels[0].tokens.device)
        similarity = model.similarity_from_levels([level[query : query + 1] for level in text_levels],
                                                  [level[positions] for level in video_levels], chunk_size)
        scores.append(torch.stack(similarity.level_logits_per_text, dim=-1)[0].tolist())
    return scores


def _window_around(entry: dict, frame: int) -> tuple[float | None, float | None, float | None]:
    times = entry["timestamps"]
    if not times:
        return None, None, None
    start = entry["start"] if entry["start"] is not None else 0.0
    end = entry["end"] if entry["end"] is not None else entry["duration"]
    window_start = start if frame == 0 else (times[frame - 1] + times[frame]) / 2
    window_end = end if frame == len(times) - 1 else (times[frame] + times[frame + 1]) / 2
    return window_start, window_end, times[frame]
