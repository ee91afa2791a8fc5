"""Search your own videos by text: index a folder of videos with an HBI model, then rank them
against a caption with the full HBI score.

    report = build_index("videos/", model, processor, "videos.index")      # or: hbi-index
    hits = search("videos.index", ["a man is cooking pasta"], model, processor, top_k=10)
    hits[0][0].file, hits[0][0].score, hits[0][0].window_start, hits[0][0].window_end

The index is a folder (`index`):
- `manifest.json`: the model's identity (name, a hash of the architecture settings, a
  fingerprint of the weights; `identity`), the video processing settings, the segment length,
  the indexed files (size, modification time, optional content hash, duration), the files that
  failed to decode (with the reason), and the shards, each listing its entries in row order
  (file, segment start / end, timestamps of the sampled frames).
- `shard-NNNNNN.safetensors`: `video_embeds` `[n, frames, D]` (the model's frame embeddings after
  the temporal module, float32) and `video_mask` `[n, frames]`; what the model derives from them
  without the query, computed once here instead of at every search: each level's token weights
  (`entity_weights`, `action_weights`, `event_weights`) and the merged, L2-normalised tokens of the
  levels above the entity level (`action_tokens`, `event_tokens`), from `HBIModel.video_levels`;
  and `pooled_embeds` `[n, D]`, the first-stage vectors of the two-stage search.

An entry is a whole video, or with `segment_seconds` one fixed window of it, so that a hit
points at a moment (`build`). Videos are decoded and encoded through the project's corpus
encoder, `hbi_transformers.training.evaluation.encode_clips`. Re-running `build_index` on the
same folder encodes only new and changed files, drops the entries of deleted ones and rewrites
only the shards that lost entries. Every change is written to new files first and becomes
visible when the manifest is replaced, so an interrupted run leaves a usable index (the next run
finishes the job). One writer at a time.

Searching (`rank`) computes the full HBI score as `HBIModel.compute_similarity` does (every
level's weighted token-wise interaction, fused with `config.level_weights` and scaled by the
model), from the stored video levels: a search is matrix products only, where
`compute_similarity` would merge every video's tokens again (milliseconds per video on a CPU,
most of its time). It goes one shard at a time with a running top-k, so memory is bounded by the
shard size whatever the size of the index. With `candidates=N` a first stage ranks the pooled
vectors (one dot product per entry) and only its N best entries per query are scored with HBI.
`results` holds what both return (`IndexReport`, `SearchHit`) and their JSON and table forms.

Videos whose clip holds fewer frames than `config.cluster_num_neighbors` (under 3 s at 1 frame
per second) get merged tokens that depend on the batch they were encoded in and on tie-breaking
noise (docs/token_merging.md; the same holds in evaluation), so their action / event scores are not exactly
those of an evaluation; every other entry's are.

The command lines are `hbi-index` and `hbi-search` (`hbi_transformers.cli.index`,
`hbi_transformers.cli.search`).
"""

from .build import build_index, index_from_features
from ...training.model_identity import model_identity
from .identity import IndexModelMismatchError, pooled_embeddings
from .index import INFO_NAME, IndexBusyError, IndexDamagedError, OldIndexFormatError, VideoIndex
from .rank import best_matching_frames, search, search_by_text_features
from .results import IndexReport, SearchHit, format_search_results, search_results_to_json

__all__ = [
    "INFO_NAME",
    "IndexBusyError",
    "IndexDamagedError",
    "IndexModelMismatchError",
    "IndexReport",
    "OldIndexFormatError",
    "SearchHit",
    "VideoIndex",
    "best_matching_frames",
    "build_index",
    "format_search_results",
    "index_from_features",
    "model_identity",
    "pooled_embeddings",
    "search",
    "search_by_text_features",
    "search_results_to_json",
]
