"""Search your own videos by text: index a folder of videos with an HBI model, then rank them
against a caption with the full HBI score.

    report = build_index("videos/", model, processor, "videos.index")      # or: hbi-index
    hits = search("videos.index", ["a man is cooking pasta"], model, processor, top_k=10)
    hits[0][0].file, hits[0][0].score, hits[0][0].window_start, hits[0][0].window_end

The index is a folder (`index`) holding a LanceDB database (why LanceDB: README, "Search your
own videos"):
- `index.json`: the model's identity (name, a hash of the architecture settings, a fingerprint
  of the weights; `identity`), the video processing settings, the segment length, the storage
  dtype and the shapes of the stored outputs, and the files that failed to decode (with the
  reason). Written atomically (temporary file, then rename).
- `entries.lance`: the table, one row per indexed window: the file (relative path, size,
  modification time, optional content hash, duration), the window (`start`, `end`, timestamps of
  the sampled frames), `pooled`, the first-stage vector, `outputs`, the model's outputs packed
  as bytes in one column (`index.output_layout`): the frame embeddings after the temporal module
  (`video_embeds`, `video_mask`) and what the model derives from them without the query,
  computed once here instead of at every search (each level's token weights and the merged,
  L2-normalised tokens of the levels above the entity level, from `HBIModel.video_levels`), and
  `checksum`, a digest of the row that every read checks. From `DEFAULT_ANN_MIN_ROWS` rows on
  the table carries a vector index over `pooled`: 4-bit RaBitQ codes of every row
  (`writing.create_ann_index`), in segments of about 500,000 rows that a search scans in parallel,
  one per core; one of an earlier release's kind (HNSW) is searched exactly, with a warning, and
  rebuilt by the next `build_index`.
- `write.lock`: the write lock (`fcntl`), held by the one process changing the index.

An entry is a whole video, or with `segment_seconds` one fixed window of it, so that a hit
points at a moment (`build`). Videos are decoded and encoded through the project's corpus
encoder, `hbi_transformers.training.evaluation.encode_clips`. Re-running `build_index` on the
same folder encodes only new and changed files and deletes the rows of deleted and changed ones.
The index is read by `index.VideoIndex` and changed by `writing.IndexWriter`. Every commit (a
batch of whole files, or a deletion) is one atomic version of the table, so a
reader, or the next run after a crash, sees the last commit whole; a second writer is refused
(`IndexBusyError`). Opening an index checks that every file it refers to is inside the folder,
present and of its recorded size, and every row read is checked against its checksum; what fails
raises `IndexDamagedError` naming the command that rebuilds the index. An index of the earlier
format (safetensors shards and `manifest.json`) is refused (`OldIndexFormatError`) with that
command.

Searching (`rank`) computes the full HBI score as `HBIModel.compute_similarity` does (every
level's weighted token-wise interaction, fused with `config.level_weights` and scaled by the
model), from the stored video levels: a search is matrix products only, where
`compute_similarity` would merge every video's tokens again. It scans the table in batches with
a running top-k. With `candidates=N` a first stage asks the engine for each query's N nearest
rows by pooled vectors (a scan of the RaBitQ codes, or an exact scan below the index's size) and only those are
scored with HBI. NaN scores rank after every real one. `results` holds what both return
(`IndexReport`, `SearchHit`) and their JSON and table forms.

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
