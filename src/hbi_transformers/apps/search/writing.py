"""Writing an index: the rows a model's video outputs become (`entry_tensors`), the info a new
index records (`new_info`), and `IndexWriter`, the one process that may change an index at a
time."""

import fcntl
import math
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ...models.hbi.configuration_hbi import LEVEL_NAMES
from .identity import fixed_merge_noise, pooled_embeddings
from .index import (
    FILE_COLUMNS,
    FIRST_STAGE_INDEX_TYPE,
    INDEX_FORMAT,
    INDEX_VERSION,
    LOCK_NAME,
    MODEL_OUTPUTS,
    STORAGE_DTYPES,
    TABLE_NAME,
    IndexBusyError,
    _connect,
    _schema,
    _write_info,
    output_layout,
    row_checksums,
)


# The first stage's vector index: RaBitQ codes of RQ_BITS per dimension, in segments of about
# ROWS_PER_SEGMENT rows that the engine scans in parallel, one per compute thread, each in IVF
# partitions of about ROWS_PER_PARTITION rows (the units the engine loads and updates; a search
# scans all of them).
ROWS_PER_SEGMENT = 500_000
ANN_INDEX_NAME = "pooled_idx"
ROWS_PER_PARTITION = 250_000
RQ_BITS = 4
# Versions of the table superseded by a compaction are kept this long for the readers still on
# them (LanceDB's default).
KEEP_OLD_VERSIONS = timedelta(days=7)


@torch.no_grad()
def entry_tensors(model, video_embeds: torch.Tensor, video_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a row stores of a batch of encoded videos (see the package docstring), on the CPU."""
    with fixed_merge_noise(video_embeds.device):
        levels = model.video_levels(video_embeds, video_mask)
    tensors = {
        "video_embeds": video_embeds,
        "video_mask": video_mask.to(torch.uint8),
        "pooled": pooled_embeddings(levels[0]),
    }
    for name, level in zip(LEVEL_NAMES, levels):
        tensors[f"{name}_weights"] = level.weights
    for name, level in zip(LEVEL_NAMES[1:], levels[1:]):
        tensors[f"{name}_tokens"] = level.tokens
    return {key: tensor.cpu() if key == "video_mask" else tensor.float().cpu() for key, tensor in tensors.items()}


def new_info(identity: dict, video_settings: dict | None, segment_seconds: int | None, storage_dtype: str) -> dict:
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {', '.join(STORAGE_DTYPES)}, got {storage_dtype!r}")
    return {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "video_dir": None,
        "model": identity,
        "tokenizer": None,
        "video_processing": video_settings,
        "segment_seconds": segment_seconds,
        "storage_dtype": storage_dtype,
        "shapes": None,  # known from the first rows
        "bad_files": {},
    }


class IndexWriter:
    """The one process changing an index: holds the folder's write lock (a second writer is
    refused, `IndexBusyError`) until `close`, buffers rows and commits them a batch at a time.

    Every commit is one atomic version of the table (the engine writes new files, then the
    manifest that names them), so a reader, or the next writer after a crash, sees the last commit
    whole. A batch only ever holds whole files."""

    def __init__(self, index_dir: Path):
        index_dir.mkdir(parents=True, exist_ok=True)
        self.index_dir = index_dir
        self._lock = open(index_dir / LOCK_NAME, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "unknown"
            self._lock.close()
            raise IndexBusyError(
                f"another process (pid {holder}) is writing to the index at {index_dir}: wait for it to finish "
                "and run again (nothing was changed)"
            ) from None
        self._lock.truncate(0)
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        self.db = _connect(index_dir)
        self.info: dict | None = None
        self.table = None
        self.pending_files: dict[str, dict] = {}
        self._entries: list[dict] = []
        self._tensors: list[dict[str, torch.Tensor]] = []

    def attach(self, info: dict, table) -> None:
        """The index this writer changes: its info and its table (None while it has no rows)."""
        self.info, self.table = info, table

    def close(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entries: list[dict], tensors: dict[str, torch.Tensor]) -> None:
        self._entries.extend(entries)
        self._tensors.append(tensors)

    def flush(self) -> None:
        """Commits the buffered rows (every buffered file must be complete) with their files'
        state."""
        if not self._entries:
            return
        tensors = {key: torch.cat([batch[key] for batch in self._tensors]) for key in self._tensors[0]}
        finite = torch.stack([tensor.flatten(1).float().isfinite().all(dim=1) for tensor in tensors.values()]).all(dim=0)
        if not finite.all():
            names = [self._entries[row]["file"] for row in (~finite).nonzero().flatten().tolist()]
            raise ValueError(f"the model's outputs for {', '.join(names[:5])} hold NaN or infinite values: not indexed")
        rows = self._arrow(self._entries, tensors)
        self._entries, self._tensors = [], []
        if self.table is None:
            # Leftovers of a run killed before its first commit reached index.json are replaced.
            self.table = self.db.create_table(TABLE_NAME, rows, mode="overwrite")
            self.commit_info()
        else:
            self.table.add(rows)
        self.pending_files = {}

    def _arrow(self, entries: list[dict], tensors: dict[str, torch.Tensor]) -> pa.Table:
        shapes = {key: int(np.prod(tensor.shape[1:])) for key, tensor in tensors.items()}
        if self.info["shapes"] is None:
            self.info["shapes"] = shapes
        elif self.info["shapes"] != shapes:
            raise ValueError(f"rows of shapes {shapes} for an index of shapes {self.info['shapes']}")
        schema = _schema(shapes, self.info["storage_dtype"])
        columns = {
            "file": [entry["file"] for entry in entries],
            **{key: [self.pending_files[entry["file"]][key] for entry in entries] for key in FILE_COLUMNS},
            "start": [entry["start"] for entry in entries],
            "end": [entry["end"] for entry in entries],
            "timestamps": [entry["timestamps"] for entry in entries],
        }
        arrays = [pa.array(columns[field.name], field.type) for field in schema if field.name in columns]
        pooled = tensors["pooled"].float().reshape(-1).numpy()
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(pooled), shapes["pooled"]))
        layout = output_layout(shapes, self.info["storage_dtype"])
        outputs = np.ascontiguousarray(np.concatenate(
            [tensors[name].reshape(len(entries), -1).numpy().astype(layout[name][2]).view(np.uint8) for name in MODEL_OUTPUTS],
            axis=1,
        ))
        outputs_type = schema.field("outputs").type
        arrays.append(pa.FixedSizeBinaryArray.from_buffers(outputs_type, len(entries), [None, pa.py_buffer(outputs)]))
        rows = pa.Table.from_arrays(arrays, schema=schema.remove(schema.get_field_index("checksum")))
        return rows.append_column(schema.field("checksum"), pa.array(row_checksums(rows), pa.binary(16)))

    def drop_files(self, files) -> None:
        """Removes every row of `files` (one commit)."""
        files = sorted(files)
        if files and self.table is not None:
            quoted = ", ".join("'" + file.replace("'", "''") + "'" for file in files)
            self.table.delete(f"file IN ({quoted})")

    def update_file_states(self, states: dict[str, dict]) -> None:
        """Records new sizes / modification times of files whose contents did not change."""
        for file, state in states.items():
            quoted = "'" + file.replace("'", "''") + "'"
            self.table.update(where=f"file = {quoted}",
                              values={"size": state["size"], "mtime_ns": state["mtime_ns"]})

    def commit_info(self) -> None:
        _write_info(self.index_dir, self.info)

    def maintain_ann_index(self, min_rows: int) -> None:
        """Builds the first stage's vector index (RaBitQ codes of the pooled vectors,
        `create_ann_index`) once the table has `min_rows` rows, and folds new rows into it
        afterwards (`fold_new_rows`). An index of another kind (the HNSW graphs of earlier
        releases) is rebuilt."""
        if self.table is None:
            return
        dataset = self.table.to_lance()
        indices = dataset.describe_indices()
        if indices and indices[0].index_type != FIRST_STAGE_INDEX_TYPE:
            create_ann_index(dataset, replace=True)
        elif not indices and dataset.count_rows() >= min_rows:
            create_ann_index(dataset)
        elif indices:
            fold_new_rows(dataset)


def create_ann_index(dataset, num_bits: int = RQ_BITS, replace: bool = False) -> None:
    """Indexes the pooled vectors of the table's Lance `dataset` for the first stage, in segments
    of about `ROWS_PER_SEGMENT` rows.

    A scan of every row's RaBitQ code rather than a graph or partition probing: a caption's top 10
    by HBI holds videos whose pooled vectors are only moderately close to the query's (exact pooled
    ranks up to about 100 at 10^6 rows) amid a million near-orthogonal others. IVF probing misses
    them (IVF_FLAT probing 10% of 1,000 partitions kept 30% of the exact pooled top 100), and so
    does the graph (HNSW, m 20: 81% recall@10 at 57 ms a query), where 4-bit codes of every row,
    256 B each, rank them in one pass (97.5% recall@10; benchmarks/bench_search.py). Built through
    Lance rather than LanceDB's `IvfRq` config: the same settings built that way took 43 ms instead
    of 22 ms to scan 10^6 codes (lancedb 0.40, pylance 9.0).

    The table is first compacted into fragments of at most `ROWS_PER_SEGMENT` rows (one per commit
    until then: reading 100 candidate rows of a 100,000-row table written in 98 commits took 12 ms,
    5 ms compacted), and each segment covers whole fragments. The segments share one model (IVF
    centroids trained on the whole column, one RaBitQ rotation), so that the engine may merge them
    and a query's codes mean the same in each. A table written by an earlier release as one
    fragment gets one segment."""
    from lance.indices import IndicesBuilder
    from lance.lance import indices as lance_indices

    if replace:
        # Searches of the versions in between scan the pooled vectors exactly; a crash in between
        # leaves a table without an index, which the next run builds.
        for described in dataset.describe_indices():
            dataset.drop_index(described.name)
    dataset = _compacted(dataset)
    num_rows = dataset.count_rows()
    num_partitions = max(1, math.ceil(num_rows / ROWS_PER_PARTITION))
    # The engine's sample (256 rows per centroid), or every row of a smaller table.
    sample_rate = max(1, min(256, num_rows // num_partitions))
    centroids = IndicesBuilder(dataset, "pooled").train_ivf(
        num_partitions, distance_type="dot", sample_rate=sample_rate
    ).centroids
    rotation = lance_indices.build_rq_model(dataset.schema.field("pooled").type.list_size, num_bits=num_bits)
    segments = [
        dataset.create_index_uncommitted("pooled", FIRST_STAGE_INDEX_TYPE, name=ANN_INDEX_NAME, metric="dot",
                                         num_bits=num_bits, num_partitions=num_partitions, ivf_centroids=centroids,
                                         rabitq_model=rotation, fragment_ids=fragment_ids)
        for fragment_ids in segment_fragments(dataset)
    ]
    dataset.commit_existing_index_segments(ANN_INDEX_NAME, "pooled", segments)


def segment_fragments(dataset) -> list[list[int]]:
    """The table's fragments cut, in order, into groups of about `ROWS_PER_SEGMENT` rows (as many
    groups as the rows make segments, at least one), each a list of fragment ids."""
    fragments = [(fragment.fragment_id, fragment.count_rows()) for fragment in dataset.get_fragments()]
    total = sum(rows for _, rows in fragments)
    num_segments = min(max(1, round(total / ROWS_PER_SEGMENT)), len(fragments))
    groups = [[] for _ in range(num_segments)]
    before = 0
    for fragment_id, rows in fragments:
        # A fragment joins the segment its middle row falls in.
        groups[min(int((before + rows / 2) * num_segments / total), num_segments - 1)].append(fragment_id)
        before += rows
    return [group for group in groups if group]


def fold_new_rows(dataset) -> None:
    """What LanceDB's `optimize` does, keeping the segments: compacts the commits' small fragments
    (into fragments of at most `ROWS_PER_SEGMENT` rows), adds the rows not yet indexed to the newest
    segment while it stays within `ROWS_PER_SEGMENT` rows, else as a new segment (the engine's
    default would merge every segment into one), and removes the files of versions older than
    `KEEP_OLD_VERSIONS`."""
    dataset = _compacted(dataset)
    segments = dataset.describe_indices()[0].segments
    # Live rows per fragment: deleted rows no longer count towards a segment's size.
    rows_of = {fragment.fragment_id: fragment.count_rows() for fragment in dataset.get_fragments()}
    indexed = {fragment_id for segment in segments for fragment_id in segment.fragment_ids}
    unindexed = sum(rows for fragment_id, rows in rows_of.items() if fragment_id not in indexed)
    if unindexed > 0:
        newest = max(segments, key=lambda segment: segment.created_at)
        newest_rows = sum(rows_of.get(fragment_id, 0) for fragment_id in newest.fragment_ids)
        dataset.optimize.optimize_indices(num_indices_to_merge=int(newest_rows + unindexed <= ROWS_PER_SEGMENT))
    _latest(dataset).cleanup_old_versions(older_than=KEEP_OLD_VERSIONS)


def _compacted(dataset):
    """The latest version after merging the commits' small fragments into fragments of at most
    `ROWS_PER_SEGMENT` rows."""
    dataset.optimize.compact_files(target_rows_per_fragment=ROWS_PER_SEGMENT)
    return _latest(dataset)


def _latest(dataset):
    return dataset.checkout_version(dataset.latest_version)
