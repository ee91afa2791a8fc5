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
# The stored model outputs, in the order their bytes follow one another in a row's `outputs`
# (`output_layout`); each is flattened per row and shaped by the index's `shapes`.
MODEL_OUTPUTS = ("video_embeds", "video_mask", *(f"{name}_weights" for name in LEVEL_NAMES),
                 *(f"{name}_tokens" for name in LEVEL_NAMES[1:]))
ENTRY_COLUMNS = ("file", "start", "end", "timestamps")
FILE_COLUMNS = ("size", "mtime_ns", "content_hash", "duration")
# What a search reads of a row: what scoring, the hits and the checksum need (not the file state
# that only indexing compares).
SEARCH_COLUMNS = (*ENTRY_COLUMNS, "duration", "pooled", "outputs", "checksum")


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


def output_layout(shapes: dict, storage_dtype: str) -> dict[str, tuple[int, int, np.dtype]]:
    """Where each model output lies in a row's `outputs` bytes: `name -> (offset, values, dtype)`.

    One fixed-size binary column instead of a column per output: a search reads its candidates'
    rows by position, and the engine's cost of that is mostly per column (100 rows of 10^5: 7.8 ms
    over seven columns, 4.9 ms packed)."""
    storage = np.dtype(STORAGE_DTYPES[storage_dtype][1].to_pandas_dtype())
    layout, offset = {}, 0
    for name in MODEL_OUTPUTS:
        dtype = np.dtype(np.uint8) if name == "video_mask" else np.dtype(np.float32) if name.endswith("_weights") else storage
        layout[name] = (offset, shapes[name], dtype)
        offset += shapes[name] * dtype.itemsize
    return layout


def _output_bytes(rows) -> np.ndarray:
    """The `outputs` column as `[rows, bytes]`."""
    column = _combined(rows.column("outputs"))
    width = column.type.byte_width
    return np.frombuffer(column.buffers()[1], np.uint8, count=len(column) * width,
                         offset=column.offset * width).reshape(len(column), width)


def row_checksums(table: pa.Table | pa.RecordBatch) -> list[bytes]:
    """A 128-bit digest (xxh3) per row of what a search reads of it (its entry and every stored
    model output), so that altered bytes are found where the format itself has no checksum.

    A row's digest covers, in order: the bytes of its fixed-size columns (the window bounds and
    duration, their validity, the lengths of its file name and timestamps, then its pooled vector
    and its model outputs), its file name, its timestamps. xxh3 because a scan checks every row it reads: it hashes
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
         _output_bytes(table)],
        axis=1,
    )
    digests = []
    for row in range(count):
        digest = xxhash.xxh3_128(fixed[row])
        digest.update(files[row])
        digest.update(time_values[time_offsets[row] : time_offsets[row + 1]])
        digests.append(digest.digest())
    return digests


def _combined(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _schema(shapes: dict, storage_dtype: str) -> pa.Schema:
    layout = output_layout(shapes, storage_dtype)
    offset, values, dtype = layout[MODEL_OUTPUTS[-1]]

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
        pa.field("outputs", pa.binary(offset + values * dtype.itemsize), nullable=False),
        pa.field("checksum", pa.binary(16), nullable=False),
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

    def take(self, positions: list[int]) -> pa.Table:
        """Rows (checked; the columns a search reads) by position in this version."""
        rows = self._guarded(lambda: self.dataset.take(positions, columns=list(SEARCH_COLUMNS)))
        self._verify(rows)
        return rows

    def nearest_ids(self, vector: np.ndarray, k: int, nprobes: int | None, refine_factor: int | None) -> list[int]:
        """The row ids of the `k` rows with the largest dot product of their pooled vector with
        `vector`, best first: by the ANN index when there is one (`nprobes` of its partitions
        scanned, None: all; with a `refine_factor`, `k` x `refine_factor` approximate neighbours
        re-ranked on the exact vectors, else the index's quantised distances decide), else by an
        exact scan. An index of an earlier release's kind (HNSW) is not used: the scan is exact,
        with a warning naming the command that rebuilds it. Only ids: their rows are read by
        `take_rows`, once for all the queries they serve."""
        query = {"column": "pooled", "q": vector, "k": k, "metric": "dot", "refine_factor": refine_factor,
                 # The engine probes min(nprobes, partitions): the bound scans every partition.
                 "nprobes": nprobes or EVERY_PARTITION, "use_index": not self._outdated_ann_index}
        return self._guarded(lambda: self.dataset.to_table(
            columns=[], nearest=query, with_row_id=True, disable_scoring_autoprojection=True
        )).column("_rowid").to_pylist()

    def take_rows(self, row_ids: list[int]) -> pa.Table:
        """Rows (checked; the columns a search reads) by row id, in the order given. Ids from
        `nearest_ids` then their rows took 27 ms for 100 of 10^6 rows, against 33 ms where the
        engine read the rows of its top k itself (benchmarks/bench_search.py --parts).
        `_take_rows` is pylance's own (marked internal) read by row id; the version is pinned in
        setup.py."""
        rows = self._guarded(lambda: self.dataset._take_rows(row_ids, columns=list(SEARCH_COLUMNS)))
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

    def _verify(self, rows) -> None:
        stored = rows.column("checksum").to_pylist()
        bad = [row for row, (expected, actual) in enumerate(zip(stored, row_checksums(rows))) if expected != actual]
        if bad:
            files = sorted({rows.column("file")[row].as_py() for row in bad})
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
        return self._unpacked(_output_bytes(rows), name)

    def _unpacked(self, outputs: np.ndarray, name: str) -> np.ndarray:
        offset, values, dtype = self._layout[name]
        return outputs[:, offset : offset + values * dtype.itemsize].copy().view(dtype)

    @functools.cached_property
    def _layout(self) -> dict:
        return output_layout(self.shapes, self.info["storage_dtype"])

    def levels(self, rows, device=None, dtype=None, num_levels: int | None = None) -> list[LevelTokens]:
        """The video side of each level (the first `num_levels`), as `HBIModel.video_levels` made
        it, of rows read from the index."""
        frames, dim = self.shapes["video_mask"], self.shapes["pooled"]
        outputs = _output_bytes(rows)

        def tensor(name, per_row):
            return torch.from_numpy(self._unpacked(outputs, name).reshape(-1, *per_row)).to(device=device, dtype=dtype)

        video_embeds = tensor("video_embeds", (frames, dim))
        mask = torch.from_numpy(self._unpacked(outputs, "video_mask").astype(np.int64)).to(device)
        names = LEVEL_NAMES[:num_levels]
        # The entity tokens are the normalised frame embeddings: not stored twice.
        levels = [LevelTokens(l2_normalize(video_embeds), tensor("entity_weights", (frames,)), mask)]
        for name in names[1:]:
            size = self.shapes[f"{name}_weights"]
            levels.append(LevelTokens(tensor(f"{name}_tokens", (size, dim)), tensor(f"{name}_weights", (size,)), None))
        return levels


def _tensor_state(model) -> tuple:
    """The model object and, for each parameter and buffer, its storage and torch's version
    counter, which every in-place write (an optimiser step, `load_state_dict`) advances."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return (id(model), tuple((tensor.data_ptr(), tensor._version) for tensor in tensors))


def _connect(index_dir):
    """The index folder's LanceDB database. lancedb is imported here, not with the package: its
    import costs 0.3 s and lance is not fork-safe, while training forks DataLoader workers."""
    # The engine scans the segments of the first-stage index in parallel on its compute threads, of
    # which it keeps one on up to 3 cores (it reserves 2 for IO, idle while the table is in the page
    # cache). It reads the setting at its first task; one the user set is kept.
    os.environ.setdefault("LANCE_CPU_THREADS", str(_usable_cores()))
    import lancedb

    return lancedb.connect(index_dir)


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
