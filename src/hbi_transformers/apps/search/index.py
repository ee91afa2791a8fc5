"""The index on disk (see the package docstring for the layout): `VideoIndex` to read it, checked
before it is trusted (`writing.IndexWriter` changes it)."""

import functools
import itertools
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import xxhash

from ...models.hbi.configuration_hbi import LEVEL_NAMES
from ...models.hbi.wti import LevelTokens, l2_normalize
from ...training.model_identity import model_identity
from .identity import check_same_model

logger = logging.getLogger(__name__)

INDEX_FORMAT = "hbi-video-index"
INDEX_VERSION = 4
INFO_NAME = "index.json"
TABLE_NAME = "entries"
LOCK_NAME = "write.lock"
# What the first version (safetensors shards) left in an index folder.
OLD_MANIFEST_NAME = "manifest.json"
OLD_SHARD_GLOB = "shard-*.safetensors*"
DEFAULT_BATCH_ROWS = 1024
# The first stage gets an approximate (RaBitQ) index from this many rows on; below, an exact scan
# of the pooled vectors costs less than the index's own overhead (benchmarks/bench_search.py).
DEFAULT_ANN_MIN_ROWS = 50_000
# The kind of that index (`writing.create_ann_index`), and an `nprobes` above any partition count.
FIRST_STAGE_INDEX_TYPE = "IVF_RQ"
EVERY_PARTITION = 1 << 30
STORAGE_DTYPES = {"float32": (torch.float32, pa.float32()), "float16": (torch.float16, pa.float16())}
# The stored model outputs, packed as bytes in two columns (`output_layout`), in this order; each is
# flattened per row and shaped by the index's `shapes`. The entity level's (frames) apart from the
# merged levels', which a ranking with the official retrieval weights (1, 0, 0) never reads.
OUTPUT_COLUMNS = {
    "frame_outputs": ("video_embeds", "video_mask", f"{LEVEL_NAMES[0]}_weights"),
    "merged_outputs": (*(f"{name}_weights" for name in LEVEL_NAMES[1:]), *(f"{name}_tokens" for name in LEVEL_NAMES[1:])),
}
MODEL_OUTPUTS = tuple(name for names in OUTPUT_COLUMNS.values() for name in names)
ENTRY_COLUMNS = ("file", "start", "end", "timestamps")
FILE_COLUMNS = ("size", "mtime_ns", "content_hash", "duration")
# What a search reads of a row: what scoring, the hits and the checksum need (not the file state
# that only indexing compares); the merged levels' outputs and their checksum where they are scored.
SEARCH_COLUMNS = (*ENTRY_COLUMNS, "duration", "pooled", "frame_outputs", "checksum")
MERGED_COLUMNS = ("merged_outputs", "merged_checksum")


class IndexDamagedError(RuntimeError):
    """Files of the index are missing, truncated, altered or point outside the index folder."""


class IndexBusyError(RuntimeError):
    """Another process is writing to the index."""


class OldIndexFormatError(ValueError):
    """The folder holds an index written by an earlier version, which this one does not read."""


def repair_command(index_dir, info: dict | None) -> str:
    """The command that rebuilds an index from its videos (the repair of a damaged one)."""
    video_dir = (info or {}).get("video_dir")
    if not video_dir:
        return "hbi_transformers.apps.search.index_from_features (an index made from features: make it again)"
    return f"hbi-index {video_dir} --model {_model_name(info)} --output {index_dir} --rebuild" + _build_options(info)


def _model_name(info: dict) -> str:
    return info["model"].get("name_or_path") or "MODEL"


def _build_options(info: dict) -> str:
    options = ""
    if info.get("segment_seconds") is not None:
        options += f" --segment-seconds {info['segment_seconds']}"
    if (info.get("tokenizer") or {}).get("name_or_path"):
        options += f" --tokenizer {info['tokenizer']['name_or_path']}"
    return options


def _refuse_old_format(index_dir: Path) -> None:
    manifest = json.loads((index_dir / OLD_MANIFEST_NAME).read_text())
    if manifest.get("video_dir"):
        how = ("rebuild it (its videos are encoded again) with\n  hbi-index "
               f"{manifest['video_dir']} --model {_model_name(manifest)} --output {index_dir} --rebuild"
               + _build_options(manifest))
    else:
        how = "it was made from features: make it again with hbi_transformers.apps.search.index_from_features"
    raise OldIndexFormatError(
        f"{index_dir} holds an index of an earlier hbi-index (safetensors shards and {OLD_MANIFEST_NAME}), "
        f"which this version does not read: {how}"
    )


def remove_index(index_dir: Path) -> None:
    """Deletes what an index (of this or the earlier format) keeps in `index_dir`, nothing else."""
    for name in (INFO_NAME, OLD_MANIFEST_NAME, OLD_MANIFEST_NAME + ".tmp", INFO_NAME + ".tmp"):
        (index_dir / name).unlink(missing_ok=True)
    for path in index_dir.glob(OLD_SHARD_GLOB):
        path.unlink()
    if (index_dir / f"{TABLE_NAME}.lance").exists():
        shutil.rmtree(index_dir / f"{TABLE_NAME}.lance")


def _write_info(index_dir: Path, info: dict) -> None:
    temporary = index_dir / (INFO_NAME + ".tmp")
    temporary.write_text(json.dumps(info, indent=1))
    os.replace(temporary, index_dir / INFO_NAME)


def _inside(path: Path, root: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


def _column_values(rows, name: str) -> np.ndarray:
    """The values of a fixed-size list column, flat."""
    return _combined(rows.column(name)).flatten().to_numpy(zero_copy_only=False)


def output_layout(shapes: dict, storage_dtype: str) -> dict[str, tuple[str, int, int, np.dtype]]:
    """Where each model output lies: `name -> (column, byte offset in it, values, dtype)`.

    Binary columns rather than a column per output: a search reads its candidates' rows by
    position, and the engine's cost of that is mostly per column (100 rows of 10^5: 7.8 ms over
    seven list columns, 4.9 ms packed in one). Two rather than one: ranking with the official
    weights reads the frames' column alone, 12.3 of a row's 17.4 KB of outputs, which keeps a
    10^6-row table's ranking columns within a page cache of a few tens of GB."""
    storage = np.dtype(STORAGE_DTYPES[storage_dtype][1].to_pandas_dtype())
    layout = {}
    for column, names in OUTPUT_COLUMNS.items():
        offset = 0
        for name in names:
            dtype = np.dtype(np.uint8) if name == "video_mask" else np.dtype(np.float32) if name.endswith("_weights") else storage
            layout[name] = (column, offset, shapes[name], dtype)
            offset += shapes[name] * dtype.itemsize
    return layout


def _column_widths(layout: dict) -> dict[str, int]:
    widths = dict.fromkeys(OUTPUT_COLUMNS, 0)
    for column, offset, values, dtype in layout.values():
        widths[column] = max(widths[column], offset + values * dtype.itemsize)
    return widths


def _output_bytes(rows, column_name: str) -> np.ndarray:
    """A binary output column as `[rows, bytes]`."""
    column = _combined(rows.column(column_name))
    width = column.type.byte_width
    return np.frombuffer(column.buffers()[1], np.uint8, count=len(column) * width,
                         offset=column.offset * width).reshape(len(column), width)


def row_checksums(table: pa.Table | pa.RecordBatch) -> list[bytes]:
    """A 128-bit digest (xxh3) per row of what a search reads of it (its entry and every stored
    model output), so that altered bytes are found where the format itself has no checksum.

    A row's digest covers, in order: the bytes of its fixed-size columns (the window bounds and
    duration, their validity, the lengths of its file name and timestamps, then its pooled vector
    and its frames' outputs), its file name, its timestamps; `merged_checksums` covers the rest. xxh3 because a scan checks every row it reads: it hashes
    at memory speed, where a cryptographic digest cost more than scoring the rows."""
    count = table.num_rows
    files = [name.encode() for name in table.column("file").to_pylist()]
    times = _combined(table.column("timestamps"))
    time_offsets = times.offsets.to_numpy()
    time_values = times.values.to_numpy(zero_copy_only=False).astype("<f8")
    bounds = [_combined(table.column(name)) for name in ("start", "end", "duration")]
    header = np.stack(
        [bound.fill_null(0.0).to_numpy(zero_copy_only=False).astype("<f8") for bound in bounds]
        + [bound.is_valid().to_numpy(zero_copy_only=False).astype("<f8") for bound in (*bounds, times)]
        + [np.array([len(name) for name in files], "<f8"), np.diff(time_offsets).astype("<f8")],
        axis=1,
    )
    fixed = np.concatenate(
        [header.view(np.uint8).reshape(count, -1), _column_values(table, "pooled").view(np.uint8).reshape(count, -1),
         _output_bytes(table, "frame_outputs")],
        axis=1,
    )
    digests = []
    for row in range(count):
        digest = xxhash.xxh3_128(fixed[row])
        digest.update(files[row])
        digest.update(time_values[time_offsets[row] : time_offsets[row + 1]])
        digests.append(digest.digest())
    return digests


def merged_checksums(table: pa.Table | pa.RecordBatch) -> list[bytes]:
    """A digest per row of its merged levels' outputs, bound to the row by its `checksum` (the
    outputs of one row cannot pass for another's)."""
    merged = _output_bytes(table, "merged_outputs")
    rows = table.column("checksum").to_pylist()
    return [xxhash.xxh3_128(merged[row].tobytes() + checksum).digest() for row, checksum in enumerate(rows)]


def _combined(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _schema(shapes: dict, storage_dtype: str) -> pa.Schema:
    widths = _column_widths(output_layout(shapes, storage_dtype))

    fields = [
        pa.field("file", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("content_hash", pa.string()),
        pa.field("duration", pa.float64()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("timestamps", pa.list_(pa.float64())),
        # The ANN index is built over float32 vectors (the first stage's exact scan too).
        pa.field("pooled", pa.list_(pa.float32(), shapes["pooled"])),
        *(pa.field(column, pa.binary(widths[column]), nullable=False) for column in OUTPUT_COLUMNS),
        pa.field("checksum", pa.binary(16), nullable=False),
        pa.field("merged_checksum", pa.binary(16), nullable=False),
    ]
    return pa.schema(fields)


class VideoIndex:
    """Read access to one committed version of an index folder written by `build_index` (or
    `index_from_features`). Opening checks that every file the version refers to is inside the
    folder, present and of its recorded size; every row read is checked against its checksum."""

    def __init__(self, index_dir: Path, info: dict, table):
        self.index_dir = index_dir
        self.info = info
        self.table = table
        self.dataset = None if table is None else table.to_lance()
        self.shapes = info["shapes"]
        self.storage_dtype = STORAGE_DTYPES[info["storage_dtype"]][0]

    @classmethod
    def open(cls, index_dir: str | os.PathLike) -> "VideoIndex":
        index_dir = Path(index_dir)
        info_path = index_dir / INFO_NAME
        if not info_path.exists():
            if (index_dir / OLD_MANIFEST_NAME).exists():
                _refuse_old_format(index_dir)
            raise FileNotFoundError(f"no HBI video index at {index_dir} (no {INFO_NAME}): build one with hbi-index")
        if not _inside(info_path, index_dir):
            raise IndexDamagedError(f"{info_path} points outside the index folder {index_dir}")
        info = json.loads(info_path.read_text())
        if info.get("format") == INDEX_FORMAT and isinstance(info.get("version"), int) and info["version"] < INDEX_VERSION:
            raise OldIndexFormatError(
                f"{index_dir} holds an index of an earlier hbi-index (version {info['version']}; this one reads "
                f"version {INDEX_VERSION}, whose rows are laid out otherwise): rebuild it with\n  {repair_command(index_dir, info)}"
            )
        if info.get("format") != INDEX_FORMAT or info.get("version") != INDEX_VERSION:
            raise ValueError(
                f"{info_path} is not an HBI video index of version {INDEX_VERSION} "
                f"(format {info.get('format')!r}, version {info.get('version')!r})"
            )
        table_dir = index_dir / f"{TABLE_NAME}.lance"
        if not _inside(table_dir, index_dir):
            raise IndexDamagedError(f"{table_dir} points outside the index folder {index_dir}: "
                                    f"rebuild it with\n  {repair_command(index_dir, info)}")
        if info["shapes"] is None:  # nothing indexed yet
            return cls(index_dir, info, None)
        try:
            table = _connect(index_dir).open_table(TABLE_NAME)
            index = cls(index_dir, info, table)
        except Exception as error:  # the engine's own report of a manifest it cannot read
            raise IndexDamagedError(f"the table of the index at {index_dir} cannot be opened ({error}): rebuild "
                                    f"it with\n  {repair_command(index_dir, info)}") from error
        problems = index.file_problems()
        if problems:
            raise IndexDamagedError(
                f"the index at {index_dir} is damaged: {'; '.join(problems[:5])}"
                f"{f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''}. Rebuild it with\n  {repair_command(index_dir, info)}"
            )
        return index

    def file_problems(self) -> list[str]:
        """What is wrong with the files this version refers to: outside the folder, missing, or of
        another size than the one recorded when they were written."""
        table_dir = self.index_dir / f"{TABLE_NAME}.lance"
        problems = []
        for fragment in self.dataset.get_fragments():
            metadata = fragment.metadata
            files = [(table_dir / "data" / data_file.path, data_file.file_size_bytes) for data_file in metadata.files]
            if metadata.deletion_file is not None:
                files.append((table_dir / metadata.deletion_file.path(metadata.id), None))
            for path, size in files:
                if not _inside(path, table_dir):
                    problems.append(f"{path} is outside the index folder")
                elif not path.is_file():
                    problems.append(f"{path.name} is missing")
                elif size is not None and path.stat().st_size != size:
                    problems.append(f"{path.name} holds {path.stat().st_size} bytes, not {size}")
        for index in self.dataset.describe_indices():
            for segment in index.segments:
                folder = table_dir / "_indices" / str(segment.uuid)
                if not _inside(folder, table_dir):
                    problems.append(f"the vector index {folder} is outside the index folder")
                elif not folder.is_dir() or not any(folder.iterdir()):
                    problems.append(f"the vector index {folder.name} is missing")
        return problems

    def __len__(self) -> int:
        return 0 if self.dataset is None else self.dataset.count_rows()

    @property
    def model_name_or_path(self) -> str:
        return self.info["model"]["name_or_path"]

    @property
    def video_dir(self) -> str | None:
        return self.info["video_dir"]

    def check_model(self, model) -> None:
        """Raises `IndexModelMismatchError` unless `model` is the model that built the index. A
        model already checked whose tensors have not been replaced or written to since is not
        fingerprinted again (the fingerprint costs more than a small query)."""
        state = _tensor_state(model)
        if getattr(self, "_checked_model_state", None) == state:
            return
        check_same_model(self.info["model"], model_identity(model), self.index_dir)
        self._checked_model_state = state

    def has_ann_index(self) -> bool:
        return self.dataset is not None and bool(self.dataset.describe_indices())

    def files(self) -> dict[str, dict]:
        """The indexed files and their recorded state (size, modification time, content hash,
        duration)."""
        if self.dataset is None:
            return {}
        columns = ["file", *FILE_COLUMNS]
        recorded = self._guarded(lambda: self.dataset.to_table(columns=columns)).to_pylist()
        return {row["file"]: {key: row[key] for key in FILE_COLUMNS} for row in recorded}

    def scan(self, batch_rows: int, columns=None):
        """The rows in batches (of every column by default), checked."""
        if self.dataset is None:
            return
        columns = list(columns or self.dataset.schema.names)
        batches = self.dataset.to_batches(columns=columns, batch_size=batch_rows)
        while True:
            batch = self._guarded(lambda: next(batches, None))
            if batch is None:
                return
            self._verify(batch)
            yield batch

    def take(self, positions: list[int], merged: bool = True) -> pa.Table:
        """Rows (checked; the columns a search reads, the merged levels' with `merged`) by position
        in this version."""
        rows = self._guarded(lambda: self.dataset.take(positions, columns=search_columns(merged)))
        self._verify(rows)
        return rows

    def nearest(self, vector: np.ndarray, k: int, nprobes: int | None, refine_factor: int | None,
                merged: bool = True) -> pa.Table:
        """The `k` rows (checked; the columns a search reads, the merged levels' with `merged`; with
        their `_rowid`) with the largest dot product of their pooled vector with
        `vector`: by the ANN index when there is one (`nprobes` of its partitions scanned, None:
        all; with a `refine_factor`, `k` x `refine_factor` approximate neighbours re-ranked on the
        exact vectors, else the index's quantised distances decide), else by an exact scan. An
        index of an earlier release's kind (HNSW) is not used: the scan is exact, with a warning
        naming the command that rebuilds it."""
        query = {"column": "pooled", "q": vector, "k": k, "metric": "dot", "refine_factor": refine_factor,
                 # The engine probes min(nprobes, partitions): the bound scans every partition.
                 "nprobes": nprobes or EVERY_PARTITION, "use_index": not self._outdated_ann_index}
        rows = self._guarded(lambda: self.dataset.to_table(columns=search_columns(merged), nearest=query,
                                                           with_row_id=True, disable_scoring_autoprojection=True))
        self._verify(rows)
        return rows

    @functools.cached_property
    def _outdated_ann_index(self) -> bool:
        """Whether the vector index is of an earlier release's kind (warned about once)."""
        kinds = {index.index_type for index in self.dataset.describe_indices()}
        outdated = bool(kinds) and FIRST_STAGE_INDEX_TYPE not in kinds
        if outdated:
            logger.warning(
                "the first-stage index of %s is %s, from an earlier release: searching its pooled vectors "
                "exactly (slower). Running hbi-index on it again rebuilds it as %s (about 30 s per "
                "million entries).", self.index_dir, ", ".join(sorted(kinds)), FIRST_STAGE_INDEX_TYPE,
            )
        return outdated

    def merged_rows(self, row_ids: list[int]) -> pa.Table:
        """The merged levels' outputs (checked) of rows by their `_rowid` (as `nearest` returns
        them), with the row ids."""
        # pylance's one take by row id is marked unstable: the version is pinned (setup.py) and
        # tests/apps/test_search.py reads hits through it.
        rows = self._guarded(lambda: self.dataset._take_rows(row_ids, columns=[*MERGED_COLUMNS, "checksum"]))
        self._verify(rows)
        return rows

    def _verify(self, rows) -> None:
        stored = rows.column("checksum").to_pylist()
        names = rows.column_names
        actual = row_checksums(rows) if "frame_outputs" in names else stored
        bad = [row for row, (expected, digest) in enumerate(zip(stored, actual)) if expected != digest]
        if "merged_outputs" in names:
            merged = rows.column("merged_checksum").to_pylist()
            bad += [row for row, (expected, digest) in enumerate(zip(merged, merged_checksums(rows)))
                    if expected != digest and row not in bad]
        if bad:
            files = sorted({rows.column("file")[row].as_py() for row in bad}) if "file" in names else ["unknown"]
            raise IndexDamagedError(
                f"{len(bad)} entries of the index at {self.index_dir} do not match their checksum (altered bytes; "
                f"files {', '.join(files[:5])}). Rebuild it "
                f"with\n  {repair_command(self.index_dir, self.info)}"
            )

    def _guarded(self, read):
        try:
            return read()
        except IndexDamagedError:
            raise
        except Exception as error:  # the engine's report of a file it cannot decode
            raise IndexDamagedError(
                f"the index at {self.index_dir} cannot be read ({error}). Rebuild it with\n  "
                f"{repair_command(self.index_dir, self.info)}"
            ) from error

    def output(self, rows, name: str) -> np.ndarray:
        """One model output of rows read from the index, `[rows, values]` (a copy)."""
        column, offset, values, dtype = self._layout[name]
        return _output_bytes(rows, column)[:, offset : offset + values * dtype.itemsize].copy().view(dtype)

    @functools.cached_property
    def _layout(self) -> dict:
        return output_layout(self.shapes, self.info["storage_dtype"])

    def levels(self, rows, device=None, dtype=None, num_levels: int | None = None) -> list[LevelTokens]:
        """The video side of each level (the first `num_levels`), as `HBIModel.video_levels` made
        it, of rows read from the index."""
        frames, dim = self.shapes["video_mask"], self.shapes["pooled"]

        def tensor(name, per_row):
            return torch.from_numpy(self.output(rows, name).reshape(-1, *per_row)).to(device=device, dtype=dtype)

        video_embeds = tensor("video_embeds", (frames, dim))
        mask = torch.from_numpy(self.output(rows, "video_mask").astype(np.int64)).to(device)
        names = LEVEL_NAMES[:num_levels]
        # The entity tokens are the normalised frame embeddings: not stored twice.
        levels = [LevelTokens(l2_normalize(video_embeds), tensor("entity_weights", (frames,)), mask)]
        for name in names[1:]:
            size = self.shapes[f"{name}_weights"]
            levels.append(LevelTokens(tensor(f"{name}_tokens", (size, dim)), tensor(f"{name}_weights", (size,)), None))
        return levels


def search_columns(merged: bool) -> list[str]:
    """The columns a search reads, with the merged levels' (`merged`) or without."""
    return [*SEARCH_COLUMNS, *(MERGED_COLUMNS if merged else ())]


def _tensor_state(model) -> tuple:
    """The model object and, for each parameter and buffer, its storage and torch's version
    counter, which every in-place write (an optimiser step, `load_state_dict`) advances."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return (id(model), tuple((tensor.data_ptr(), tensor._version) for tensor in tensors))


def _connect(index_dir):
    """The index folder's LanceDB database. lancedb is imported here, not with the package: its
    import costs 0.3 s and lance is not fork-safe, while training forks DataLoader workers."""
    import lancedb

    return lancedb.connect(index_dir)
