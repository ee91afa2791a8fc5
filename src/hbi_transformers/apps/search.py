"""Search your own videos by text: index a folder of videos with an HBI model, then rank them
against a caption with the full HBI score.

    report = build_index("videos/", model, processor, "videos.index")      # or: hbi-index
    hits = search("videos.index", ["a man is cooking pasta"], model, processor, top_k=10)
    hits[0][0].file, hits[0][0].score, hits[0][0].window_start, hits[0][0].window_end

The index is a folder:
- `manifest.json`: the model's identity (name, a hash of the architecture settings, a
  fingerprint of the weights), the video processing settings, the segment length, the indexed
  files (size, modification time, optional content hash, duration), the files that failed to
  decode (with the reason), and the shards, each listing its entries in row order (file,
  segment start / end, timestamps of the sampled frames).
- `shard-NNNNNN.safetensors`: `video_embeds` `[n, frames, D]` (the model's frame embeddings after
  the temporal module, float32) and `video_mask` `[n, frames]`; what the model derives from them
  without the query, computed once here instead of at every search: each level's token weights
  (`entity_weights`, `action_weights`, `event_weights`) and the merged, L2-normalised tokens of the
  levels above the entity level (`action_tokens`, `event_tokens`), from `HBIModel.video_levels`;
  and `pooled_embeds` `[n, D]`, the first-stage vectors of the two-stage search.

An entry is a whole video, or with `segment_seconds` one fixed window of it, so that a hit
points at a moment. Re-running `build_index` on the same folder encodes only new and changed
files, drops the entries of deleted ones and rewrites only the shards that lost entries. Every
change is written to new files first and becomes visible when the manifest is replaced, so an
interrupted run leaves a usable index (the next run finishes the job). One writer at a time.

Searching computes the full HBI score as `HBIModel.compute_similarity` does (every level's
weighted token-wise interaction, fused with `config.level_weights` and scaled by the model), from
the stored video levels: a search is matrix products only, where `compute_similarity` would merge
every video's tokens again (milliseconds per video on a CPU, most of its time). It goes one
shard at a time with a running top-k, so memory is bounded by the shard size whatever the size of
the index. With `candidates=N` a first stage ranks the pooled vectors (one dot product per entry)
and only its N best entries per query are scored with HBI.

Videos whose clip holds fewer frames than `config.cluster_num_neighbors` (under 3 s at 1 frame
per second) get merged tokens that depend on the batch they were encoded in and on tie-breaking
noise (HBI_SPEC; the same holds in evaluation), so their action / event scores are not exactly
those of an evaluation; every other entry's are.
"""

import bisect
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import HfArgumentParser
from transformers.utils import logging

from ..models.hbi.configuration_hbi import LEVEL_NAMES
from ..data import VIDEO_EXTENSIONS, BadItem, BadItemCounter
from ..models.hbi.wti import (
    LevelTokens,
    l2_normalize,
    matched_word_frame_similarity,
)
from ..models.hbi.modeling_hbi import HBIModel, HBITextOutput, HBIVideoOutput
from ..models.hbi.video_io import VideoDecodingError

logger = logging.get_logger(__name__)

INDEX_FORMAT = "hbi-video-index"
INDEX_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PREFIX, SHARD_SUFFIX = "shard-", ".safetensors"
DEFAULT_SHARD_SIZE = 1024
DEFAULT_CHUNK_SIZE = 1024
# The clustering that makes the action / event tokens breaks density ties with random noise;
# scoring under a fixed seed makes a search repeatable and independent of the caller's RNG.
MERGE_NOISE_SEED = 0
# Elements of each weight tensor hashed into the model fingerprint: training changes every
# weight, so a strided sample tells two checkpoints apart without hashing gigabytes.
FINGERPRINT_SAMPLES_PER_TENSOR = 4096
# HBI settings that change the stored embeddings or how they are scored (the tower shapes are in
# the weights fingerprint). Level weights are left out on purpose: re-weighting the levels at
# search time over the same index is legitimate.
IDENTITY_CONFIG_KEYS = (
    "projection_dim",
    "temporal_module",
    "temporal_num_layers",
    "temporal_layer_norm_eps",
    "interaction",
    "text_merge_ratios",
    "video_merge_ratios",
    "cluster_num_neighbors",
    "merge_attention_heads",
)
IDENTITY_TOWER_KEYS = ("hidden_act", "layer_norm_eps", "num_attention_heads", "image_size", "patch_size")
# Video processor settings an index is built with; an update must use the same.
VIDEO_SETTING_KEYS = (
    "max_frames",
    "video_framerate",
    "frame_sampling",
    "size",
    "crop_size",
    "do_resize",
    "do_center_crop",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "resample",
)
# Candidate rows of a shard that form more runs than this are read with the whole shard.
MAX_RUNS_READ_APART = 64
# Below this, a window start is taken to be the end of the video (float noise in durations).
WINDOW_EPSILON = 1e-6


class IndexModelMismatchError(ValueError):
    """The index was built with another model or other video settings than the ones given."""


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class IndexReport:
    """What `build_index` did.

    `added` / `updated` / `removed` are the relative paths of files encoded for the first time,
    re-encoded because they changed, and dropped because they were deleted; `unchanged` counts
    the files kept without decoding; `bad_files` are the files that cannot be decoded (with the
    reason), skipped: the ones tried in this run and the unchanged ones that failed before.
    """

    index_dir: str
    num_entries: int
    num_files: int
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    bad_files: list[BadItem] = field(default_factory=list)

    @property
    def num_bad(self) -> int:
        return len(self.bad_files)

    def summary(self) -> str:
        counts = (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
            f"{self.unchanged} unchanged, {self.num_bad} bad"
        )
        lines = [f"{self.index_dir}: {self.num_entries} entries from {self.num_files} files ({counts})"]
        lines += [f"  bad: {item.name} ({item.reason})" for item in self.bad_files]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "num_bad": self.num_bad}


@dataclass
class SearchHit:
    """One ranked entry for one query.

    `score` is the fused HBI logit (level-weighted similarity times `exp(logit_scale)`), and
    `level_scores` its entity / action / event parts. `file` is the path relative to the indexed
    folder and `path` where it was at indexing time. `segment_start` / `segment_end` bound the
    indexed window of a segmented video (None for a whole file). `window_start` / `window_end`
    is the best-matching moment around `best_frame_time` (see `best_matching_frames`); None for
    entries indexed without timestamps.
    """

    rank: int
    score: float
    file: str
    path: str
    segment_start: float | None
    segment_end: float | None
    window_start: float | None
    window_end: float | None
    best_frame_time: float | None
    level_scores: dict[str, float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def search_results_to_json(queries: Sequence[str], results: Sequence[Sequence[SearchHit]]) -> list[dict]:
    """The JSON-able form of `search`'s results: `[{"query": ..., "hits": [hit dicts]}]`."""
    return [{"query": query, "hits": [hit.to_dict() for hit in hits]} for query, hits in zip(queries, results)]


def format_search_results(queries: Sequence[str], results: Sequence[Sequence[SearchHit]]) -> str:
    """A text table per query: rank, score, file (with its segment), best-matching window."""
    blocks = []
    for query, hits in zip(queries, results):
        rows = [["rank", "score", "file", "window"]]
        for hit in hits:
            file = hit.file
            if hit.segment_start is not None:
                file += f" [{_seconds(hit.segment_start)}-{_seconds(hit.segment_end)}]"
            window = "-" if hit.window_start is None else f"{_seconds(hit.window_start)}-{_seconds(hit.window_end)}"
            rows.append([str(hit.rank), f"{hit.score:.2f}", file, window])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.rjust(width) if column < 2 else cell.ljust(width)
                for column, (cell, width) in enumerate(zip(row, widths))
            ).rstrip()
            for row in rows
        ]
        blocks.append(f"query: {query}\n" + "\n".join(lines))
    return "\n\n".join(blocks)


def _seconds(value: float) -> str:
    """m:ss.s for a position in a video."""
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)}:{seconds:04.1f}"


# --------------------------------------------------------------------------------------------
# Model identity and pooled embeddings


def model_identity(model) -> dict:
    """What an index records about the model that encoded it: `name_or_path` (to reload it; not
    compared), a hash of the architecture settings and a fingerprint of the weights (compared)."""
    name = model.name_or_path or ""
    if name and os.path.isdir(name):
        name = os.path.abspath(name)
    return {
        "name_or_path": name,
        "config_hash": _config_hash(model.config),
        "weights_fingerprint": _weights_fingerprint(model),
    }


def _config_hash(config) -> str:
    settings = {key: getattr(config, key) for key in IDENTITY_CONFIG_KEYS}
    for tower in ("text_config", "vision_config"):
        settings[tower] = {key: getattr(getattr(config, tower), key, None) for key in IDENTITY_TOWER_KEYS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def _weights_fingerprint(model) -> str:
    """A hash of every weight's name, shape and a strided sample of its values (as float32, so the
    same weights on any device agree; a model cast to another dtype has other values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_SAMPLES_PER_TENSOR)
        sample = flat[::step].to("cpu", torch.float32).contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def pooled_embeddings(entity: LevelTokens) -> torch.Tensor:
    """First-stage vectors `[n, D]` of texts or videos: the entity-level weight head's weighted
    mean of the L2-normalised word (frame) embeddings, L2-normalised.

    Why this pooling: the entity score is `(sum_t w_t max_v S[t, v] + sum_v w_v max_t S[t, v]) / 2`
    over word-frame cosines `S`. Replacing each max by the weighted mean over the other side gives
    `<sum_t w_t x_t, sum_v w_v y_v>`, the dot product of the weighted means: the words and frames
    the HBI score leans on (by its own weights) lead the first stage too, where a plain mean would
    give stop words and uninformative frames an equal say. The vectors are normalised so that
    long and short captions rank videos alike (a cosine).
    """
    weights = entity.weights if entity.mask is None else entity.weights * entity.mask
    return l2_normalize((weights[..., None] * entity.tokens).sum(dim=1))


@contextmanager
def _fixed_merge_noise(device: torch.device):
    """Seeds the token clustering's tie-breaking noise without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(MERGE_NOISE_SEED)
        yield


# --------------------------------------------------------------------------------------------
# The index on disk


def _shard_name(number: int) -> str:
    return f"{SHARD_PREFIX}{number:06d}{SHARD_SUFFIX}"


def _write_json_atomically(path: Path, data) -> None:
    temporary = path.with_name(path.name + ".tmp")
    # Compact: the manifest of a large index lists 10^5 entries and more.
    temporary.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(temporary, path)


def _json_normalised(value):
    """Tuples as lists, enums as their values: what the manifest gives back when read."""
    return json.loads(json.dumps(value))


class VideoIndex:
    """Read access to an index folder written by `build_index` (or `index_from_features`)."""

    def __init__(self, index_dir: str | os.PathLike, manifest: dict):
        self.index_dir = Path(index_dir)
        self.manifest = manifest
        self.shards = manifest["shards"]
        # Entry ids run over the shards in order: shard i holds ids offsets[i] .. offsets[i+1]-1.
        sizes = [len(shard["entries"]) for shard in self.shards]
        self.offsets = [0]
        for size in sizes:
            self.offsets.append(self.offsets[-1] + size)

    @classmethod
    def open(cls, index_dir: str | os.PathLike) -> "VideoIndex":
        path = Path(index_dir) / MANIFEST_NAME
        if not path.exists():
            raise FileNotFoundError(f"no HBI video index at {index_dir} (no {MANIFEST_NAME}): build one with hbi-index")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != INDEX_FORMAT or manifest.get("version") != INDEX_VERSION:
            raise ValueError(
                f"{path} is not an HBI video index of version {INDEX_VERSION} "
                f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})"
            )
        return cls(index_dir, manifest)

    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def model_name_or_path(self) -> str:
        return self.manifest["model"]["name_or_path"]

    def check_model(self, model) -> None:
        """Raises `IndexModelMismatchError` unless `model` is the model that built the index."""
        _check_same_model(self.manifest["model"], model_identity(model), self.index_dir)

    def entry(self, entry_id: int) -> dict:
        shard, row = self.locate(entry_id)
        return self.shards[shard]["entries"][row]

    def locate(self, entry_id: int) -> tuple[int, int]:
        """(shard position, row) of an entry id."""
        shard = bisect.bisect_right(self.offsets, entry_id) - 1
        return shard, entry_id - self.offsets[shard]

    def load_videos(self, shard: int, rows: torch.Tensor | None = None, device=None, dtype=None) -> HBIVideoOutput:
        """The stored `HBIVideoOutput` of some rows (sorted, all by default) of one shard, reading
        only those rows."""
        tensors = self._read(shard, ("video_embeds", "video_mask"), rows, device, dtype)
        return HBIVideoOutput(video_embeds=tensors["video_embeds"], video_mask=tensors["video_mask"])

    def load_levels(
        self, shard: int, rows: torch.Tensor | None = None, device=None, dtype=None, num_levels: int | None = None
    ) -> list[LevelTokens]:
        """The video side of each level (the first `num_levels`), as `HBIModel.video_levels` made
        it, for some rows (sorted, all by default) of one shard."""
        names = LEVEL_NAMES[:num_levels]
        keys = ["video_embeds", "video_mask", *(f"{name}_weights" for name in names)]
        keys += [f"{name}_tokens" for name in names[1:]]
        tensors = self._read(shard, keys, rows, device, dtype)
        # The entity tokens are the normalised frame embeddings: not stored twice.
        levels = [LevelTokens(l2_normalize(tensors["video_embeds"]), tensors["entity_weights"], tensors["video_mask"])]
        levels += [LevelTokens(tensors[f"{name}_tokens"], tensors[f"{name}_weights"], None) for name in names[1:]]
        return levels

    def load_pooled(self, shard: int, device=None) -> torch.Tensor:
        return self._read(shard, ["pooled_embeds"], None, device, torch.float32)["pooled_embeds"]

    def _read(self, shard: int, keys, rows, device, dtype) -> dict[str, torch.Tensor]:
        with safe_open(self.index_dir / self.shards[shard]["file"], framework="pt") as stored:
            tensors = {key: _read_rows(stored.get_slice(key), rows) for key in keys}
        return {
            key: tensor.to(device=device, dtype=torch.long if key == "video_mask" else dtype)
            for key, tensor in tensors.items()
        }


def _read_rows(tensor_slice, rows: torch.Tensor | None) -> torch.Tensor:
    """Rows (sorted) of a stored tensor: as contiguous runs when they are few, else by reading the
    whole tensor once (thousands of one-row reads cost more than the copy)."""
    if rows is None:
        return tensor_slice[:]
    rows = rows.tolist()
    run_starts = [0] + [i for i in range(1, len(rows)) if rows[i] != rows[i - 1] + 1]
    if len(run_starts) > MAX_RUNS_READ_APART:
        return tensor_slice[:][rows]
    run_ends = run_starts[1:] + [len(rows)]
    return torch.cat([tensor_slice[rows[start] : rows[end - 1] + 1] for start, end in zip(run_starts, run_ends)])


def _check_same_model(recorded: dict, current: dict, index_dir) -> None:
    differences = [key for key in ("config_hash", "weights_fingerprint") if recorded[key] != current[key]]
    if differences:
        raise IndexModelMismatchError(
            f"the index at {index_dir} was built with another model ({recorded['name_or_path'] or 'unnamed'}; "
            f"{' and '.join(key.replace('_', ' ') for key in differences)} differ from those of "
            f"{current['name_or_path'] or 'the given model'}). Embeddings of one model mean nothing to another: "
            "search it with the model that built it, or build a new index with this one."
        )


def _write_shard(index_dir: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    path = index_dir / name
    temporary = path.with_name(path.name + ".tmp")
    save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, str(temporary),
              metadata={"format": INDEX_FORMAT})
    os.replace(temporary, path)


@torch.no_grad()
def _entry_tensors(model, video_embeds: torch.Tensor, video_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a shard stores for a batch of encoded videos (see the module docstring), on the CPU."""
    with _fixed_merge_noise(video_embeds.device):
        levels = model.video_levels(video_embeds, video_mask)
    tensors = {
        "video_embeds": video_embeds,
        "video_mask": video_mask.to(torch.uint8),
        "pooled_embeds": pooled_embeddings(levels[0]),
    }
    for name, level in zip(LEVEL_NAMES, levels):
        tensors[f"{name}_weights"] = level.weights
    for name, level in zip(LEVEL_NAMES[1:], levels[1:]):
        tensors[f"{name}_tokens"] = level.tokens
    return {key: tensor.cpu() if key == "video_mask" else tensor.float().cpu() for key, tensor in tensors.items()}


class _IndexWriter:
    """The manifest of an index being built, and the shards it adds or rewrites."""

    def __init__(self, index_dir: Path, manifest: dict):
        index_dir.mkdir(parents=True, exist_ok=True)
        self.index_dir = index_dir
        self.manifest = manifest
        self.pending_files: dict[str, dict] = {}
        self._entries: list[dict] = []
        self._tensors: list[dict[str, torch.Tensor]] = []  # one batch of rows each

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entries: list[dict], tensors: dict[str, torch.Tensor]) -> None:
        self._entries.extend(entries)
        self._tensors.append(tensors)

    def drop_file(self, file: str) -> None:
        keep = torch.tensor([entry["file"] != file for entry in self._entries])
        if not keep.all():
            rows = {key: torch.cat([batch[key] for batch in self._tensors])[keep] for key in self._tensors[0]}
            self._entries = [entry for entry in self._entries if entry["file"] != file]
            self._tensors = [rows]
        self.pending_files.pop(file, None)

    def flush(self) -> None:
        """Writes the buffered entries as a new shard and commits the manifest with the files
        they belong to (every buffered file must be complete)."""
        if self._entries:
            name = self._next_shard_name()
            _write_shard(self.index_dir, name, {key: torch.cat([batch[key] for batch in self._tensors])
                                                for key in self._tensors[0]})
            self.manifest["shards"].append({"file": name, "entries": self._entries})
            self._entries, self._tensors = [], []
        self.manifest["files"].update(self.pending_files)
        self.pending_files = {}
        self.commit()

    def drop_entries_of(self, files: set[str]) -> None:
        """Removes every entry of `files` and their records: shards that keep some entries are
        rewritten (copied, not re-encoded) under a new name, emptied ones are dropped."""
        if not files:
            return
        kept_shards = []
        for shard in self.manifest["shards"]:
            keep = [row for row, entry in enumerate(shard["entries"]) if entry["file"] not in files]
            if len(keep) == len(shard["entries"]):
                kept_shards.append(shard)
            elif keep:
                stored = load_file(str(self.index_dir / shard["file"]))
                name = self._next_shard_name()
                _write_shard(self.index_dir, name, {key: tensor[keep] for key, tensor in stored.items()})
                kept_shards.append({"file": name, "entries": [shard["entries"][row] for row in keep]})
        self.manifest["shards"] = kept_shards
        for file in files:
            self.manifest["files"].pop(file, None)
        self.commit()

    def _next_shard_name(self) -> str:
        # Never a name in use: a rewritten shard replaces the old one only when the manifest does.
        name = _shard_name(self.manifest["next_shard"])
        self.manifest["next_shard"] += 1
        return name

    def commit(self) -> None:
        _write_json_atomically(self.index_dir / MANIFEST_NAME, self.manifest)

    def remove_unreferenced_shards(self) -> None:
        referenced = {shard["file"] for shard in self.manifest["shards"]}
        for path in self.index_dir.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}*"):
            if path.name not in referenced:
                path.unlink()


def _new_manifest(identity: dict, video_settings: dict | None, segment_seconds: int | None) -> dict:
    return {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "video_dir": None,
        "model": identity,
        "tokenizer": None,
        "video_processing": video_settings,
        "segment_seconds": segment_seconds,
        "next_shard": 0,
        "files": {},
        "bad_files": {},
        "shards": [],
    }


# --------------------------------------------------------------------------------------------
# Building


@dataclass
class _DecodedWindow:
    start: float | None
    end: float | None
    pixel_values_videos: torch.Tensor  # [1, frames, 3, H, W]
    video_mask: torch.Tensor  # [1, frames]
    timestamps: list[float]
    duration: float


def _file_state(path: Path, hash_contents: bool) -> dict:
    stat = path.stat()
    state = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "content_hash": None}
    if hash_contents:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        state["content_hash"] = digest.hexdigest()
    return state


def _is_unchanged(recorded: dict, path: Path, hash_contents: bool) -> tuple[bool, dict]:
    """Whether a file is as recorded (same size and modification time, or, with `hash_contents`,
    the same bytes), with its current state."""
    state = _file_state(path, hash_contents=False)
    if state["size"] == recorded["size"] and state["mtime_ns"] == recorded["mtime_ns"]:
        return True, {**state, "content_hash": recorded.get("content_hash")}
    if hash_contents and recorded.get("content_hash") is not None:
        state = _file_state(path, hash_contents=True)
        return state["content_hash"] == recorded["content_hash"], state
    return False, state


def _scan(video_dir: Path, extensions: Sequence[str]) -> dict[str, Path]:
    suffixes = {extension.lower() if extension.startswith(".") else f".{extension.lower()}" for extension in extensions}
    return {
        path.relative_to(video_dir).as_posix(): path
        for path in sorted(video_dir.rglob("*"))
        if path.is_file() and path.suffix.lower() in suffixes
    }


def _video_processing_settings(video_processor) -> dict:
    settings = video_processor.to_dict()
    return _json_normalised({key: settings.get(key) for key in VIDEO_SETTING_KEYS})


def _decode_windows(video_processor, path: Path, segment_seconds: int | None) -> Iterator[_DecodedWindow]:
    """The processed frames of a whole video, or of each `segment_seconds` window of it (the
    first window's decoding tells the duration, hence how many windows follow)."""

    def window(start, end):
        processed = video_processor(
            [str(path)],
            video_segments=[None if start is None else (start, end)],
            return_tensors="pt",
            return_metadata=True,
        )
        info = processed["video_metadata"][0]
        duration = info["duration"]
        return _DecodedWindow(
            start=start,
            end=None if end is None else min(end, duration),
            pixel_values_videos=processed["pixel_values_videos"],
            video_mask=processed["video_mask"],
            timestamps=[float(time) for time in info["timestamps"]],
            duration=duration,
        )

    if segment_seconds is None:
        yield window(None, None)
        return
    first = window(0, segment_seconds)
    yield first
    # A window starting at (or within float noise of) the end would hold no frame.
    num_windows = max(1, math.ceil(first.duration / segment_seconds - WINDOW_EPSILON))
    for number in range(1, num_windows):
        yield window(number * segment_seconds, (number + 1) * segment_seconds)


@torch.no_grad()
def _encode_windows(model, windows: list[tuple[str, _DecodedWindow]]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The entries of decoded windows and what their shard stores."""
    device = model.device
    pixel_values = torch.cat([decoded.pixel_values_videos for _, decoded in windows]).to(device)
    video_mask = torch.cat([decoded.video_mask for _, decoded in windows]).to(device)
    videos = model.get_video_features(pixel_values, video_mask)
    entries = [
        {"file": file, "start": decoded.start, "end": decoded.end, "timestamps": decoded.timestamps}
        for file, decoded in windows
    ]
    return entries, _entry_tensors(model, videos.video_embeds, videos.video_mask)


def _check_segment_seconds(segment_seconds) -> None:
    # The decoders cut segments at whole seconds (as the official loaders do).
    if segment_seconds is not None and (int(segment_seconds) != segment_seconds or segment_seconds < 1):
        raise ValueError(f"segment_seconds must be a whole number of seconds >= 1, got {segment_seconds}")


def build_index(
    video_dir: str | os.PathLike,
    model,
    processor,
    index_dir: str | os.PathLike,
    batch_size: int = 8,
    segment_seconds: int | None = None,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    progress: bool = True,
    shard_size: int = DEFAULT_SHARD_SIZE,
    hash_contents: bool = False,
) -> IndexReport:
    """Encodes every video under `video_dir` (recursively, files ending in `extensions`) into an
    index at `index_dir`, or brings an existing index up to date.

    Args:
        video_dir: the folder of videos; entries record paths relative to it.
        model: the `HBIModel` (on any device; its frame embeddings are stored as float32).
        processor: an `HBIProcessor` (or `HBIVideoProcessor`): how frames are sampled and
            preprocessed. An update must use the same settings.
        index_dir: the index folder, created if needed.
        batch_size: videos (or windows) encoded at once.
        segment_seconds: index fixed windows of this many (whole) seconds instead of whole files,
            so that a hit points at a moment. An update must use the same value.
        extensions: which files are videos.
        progress: show a progress bar.
        shard_size: entries per shard (a shard is what a search holds in memory at once).
        hash_contents: also record a hash of each file's bytes, so that a file whose modification
            time changed but whose contents did not (a copy, a `touch`) is not re-encoded.

    Files are compared with the index by size and modification time. A file that fails to decode
    is logged, reported in `IndexReport.bad_files` and skipped; it is tried again once it changes.

    Raises:
        IndexModelMismatchError: `index_dir` holds an index built with another model, other video
            settings or another `segment_seconds`.
    """
    _check_segment_seconds(segment_seconds)
    video_dir, index_dir = Path(video_dir).resolve(), Path(index_dir)
    if not video_dir.is_dir():
        raise NotADirectoryError(f"no folder of videos at {video_dir}")
    video_processor = getattr(processor, "video_processor", processor)
    identity = model_identity(model)
    settings = _video_processing_settings(video_processor)
    if (index_dir / MANIFEST_NAME).exists():
        manifest = VideoIndex.open(index_dir).manifest
        _check_can_update(manifest, identity, settings, segment_seconds, index_dir)
    else:
        manifest = _new_manifest(identity, settings, segment_seconds)
    manifest["video_dir"] = str(video_dir)
    manifest["model"]["name_or_path"] = identity["name_or_path"] or manifest["model"]["name_or_path"]
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        manifest["tokenizer"] = {"name_or_path": tokenizer.name_or_path, "max_words": processor.max_words}
    writer = _IndexWriter(index_dir, manifest)

    found = _scan(video_dir, extensions)
    report = IndexReport(index_dir=str(index_dir), num_entries=0, num_files=0)
    for file, recorded in list(manifest["files"].items()):
        if file not in found:
            report.removed.append(file)
            continue
        unchanged, state = _is_unchanged(recorded, found[file], hash_contents)
        if unchanged:
            manifest["files"][file] = {**recorded, **state}
            report.unchanged += 1
        else:
            report.updated.append(file)
    known_bad = []
    for file, recorded in list(manifest["bad_files"].items()):
        if file in found and _is_unchanged(recorded, found[file], hash_contents)[0]:
            known_bad.append(BadItem(file, recorded["reason"]))
        else:
            # Deleted, or changed and worth another try (then it is new to the index).
            del manifest["bad_files"][file]
    report.added = [file for file in found if file not in manifest["files"] and file not in manifest["bad_files"]]
    writer.drop_entries_of(set(report.removed) | set(report.updated))
    changed_or_new = {*report.added, *report.updated}
    to_encode = [file for file in found if file in changed_or_new]

    was_training = model.training
    model.eval()
    try:
        bad_counter = _encode_files(
            writer, model, video_processor, found, to_encode, batch_size, segment_seconds, shard_size, hash_contents,
            progress,
        )
    finally:
        model.train(was_training)
    writer.flush()
    writer.remove_unreferenced_shards()

    # A file that fails now is neither added nor updated.
    failed = {item.name for item in bad_counter.bad_items}
    report.added = [file for file in report.added if file not in failed]
    report.updated = [file for file in report.updated if file not in failed]
    report.bad_files = known_bad + bad_counter.bad_items
    report.num_files = len(manifest["files"])
    report.num_entries = sum(len(shard["entries"]) for shard in manifest["shards"])
    return report


def _check_can_update(manifest: dict, identity: dict, settings: dict, segment_seconds, index_dir) -> None:
    if manifest["video_processing"] is None:
        raise ValueError(f"the index at {index_dir} was made from features (index_from_features): it has no files to update")
    _check_same_model(manifest["model"], identity, index_dir)
    if manifest["video_processing"] != settings:
        changed = sorted(key for key in settings if manifest["video_processing"].get(key) != settings[key])
        raise IndexModelMismatchError(
            f"the index at {index_dir} was built with other video processing settings ({', '.join(changed)}): "
            "use the same processor, or build a new index"
        )
    if manifest["segment_seconds"] != segment_seconds:
        raise IndexModelMismatchError(
            f"the index at {index_dir} holds {_describe_segments(manifest['segment_seconds'])}, not "
            f"{_describe_segments(segment_seconds)}: pass the same segment length, or build a new index"
        )


def _describe_segments(segment_seconds) -> str:
    return "whole videos" if segment_seconds is None else f"{segment_seconds}-second windows"


def _encode_files(
    writer, model, video_processor, found, to_encode, batch_size, segment_seconds, shard_size, hash_contents, progress
) -> BadItemCounter:
    """Decodes and encodes `to_encode` into `writer`, `batch_size` windows at a time across files.
    A shard is written only between files, so that a committed manifest never lists part of a
    file; a file that fails (at any window) is dropped whole."""
    # Every failure is reported; none stops the run.
    bad_counter = BadItemCounter(max_bad_fraction=1.0)
    queue: list[tuple[str, _DecodedWindow]] = []

    def encode_queue():
        if queue:
            writer.add(*_encode_windows(model, queue))
            queue.clear()

    for file in tqdm(to_encode, desc="indexing videos", unit="video", disable=not progress):
        path = found[file]
        # Taken before decoding: a file changed meanwhile then looks changed to the next run.
        state = _file_state(path, hash_contents)
        try:
            duration = None
            for decoded in _decode_windows(video_processor, path, segment_seconds):
                duration = decoded.duration
                queue.append((file, decoded))
                if len(queue) >= batch_size:
                    encode_queue()
        except VideoDecodingError as error:
            queue[:] = [item for item in queue if item[0] != file]
            writer.drop_file(file)
            bad_counter.record_failure(file, error.reason)
            writer.manifest["bad_files"][file] = {**state, "reason": error.reason}
            continue
        bad_counter.record_success()
        writer.pending_files[file] = {**state, "duration": duration}
        if len(writer) + len(queue) >= shard_size:
            encode_queue()
            writer.flush()
    encode_queue()
    return bad_counter


def index_from_features(
    index_dir: str | os.PathLike,
    model,
    video_outputs: HBIVideoOutput,
    names: Sequence[str],
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 256,
) -> VideoIndex:
    """A new index of already computed frame embeddings (e.g. from `get_video_features`, or
    synthetic ones for a benchmark), without decoding any file. Entries are named by `names` and
    have no timestamps (hits then have no time window); the index cannot be updated with
    `build_index`."""
    if len(names) != video_outputs.video_embeds.shape[0]:
        raise ValueError(f"{len(names)} names for {video_outputs.video_embeds.shape[0]} videos")
    index_dir = Path(index_dir)
    if (index_dir / MANIFEST_NAME).exists():
        raise FileExistsError(f"{index_dir} already holds an index")
    writer = _IndexWriter(index_dir, _new_manifest(model_identity(model), None, None))
    step = min(batch_size, shard_size)
    for start in range(0, len(names), step):
        batch_names = names[start : start + step]
        writer.add(
            [{"file": name, "start": None, "end": None, "timestamps": None} for name in batch_names],
            _entry_tensors(
                model,
                video_outputs.video_embeds[start : start + step].to(model.device),
                video_outputs.video_mask[start : start + step].to(model.device),
            ),
        )
        writer.pending_files.update(
            {name: {"size": None, "mtime_ns": None, "content_hash": None, "duration": None} for name in batch_names}
        )
        if len(writer) >= shard_size:
            writer.flush()
    writer.flush()  # the last shard, or an empty index
    return VideoIndex.open(index_dir)


# --------------------------------------------------------------------------------------------
# Searching


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
    with _fixed_merge_noise(device):
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


# --------------------------------------------------------------------------------------------
# Command lines


@dataclass
class IndexArguments:
    model: str = field(metadata={"help": "The HBI model (trained or converted folder, or hub name) to encode with."})
    output: str = field(metadata={"help": "The index folder (created, or brought up to date)."})
    tokenizer: str | None = field(
        default=None, metadata={"help": "CLIP tokenizer, when the model folder has no processor files."}
    )
    segment_seconds: int | None = field(
        default=None, metadata={"help": "Index fixed windows of this many seconds instead of whole videos."}
    )
    batch_size: int = field(default=8, metadata={"help": "Videos (or windows) encoded at once."})
    shard_size: int = field(default=DEFAULT_SHARD_SIZE, metadata={"help": "Entries per shard file."})
    hash_contents: bool = field(
        default=False, metadata={"help": "Also compare file contents, so touched but unchanged files are kept."}
    )
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda when available)."})


@dataclass
class SearchArguments:
    model: str | None = field(default=None, metadata={"help": "The model (default: the one recorded in the index)."})
    tokenizer: str | None = field(
        default=None, metadata={"help": "CLIP tokenizer, when the model folder has no processor files."}
    )
    top_k: int = field(default=10, metadata={"help": "Hits per query."})
    candidates: int | None = field(
        default=None, metadata={"help": "Two-stage search: re-rank only this many pooled-embedding candidates."}
    )
    chunk_size: int = field(default=DEFAULT_CHUNK_SIZE, metadata={"help": "Texts x videos per scoring block."})
    as_json: bool = field(default=False, metadata={"help": "Print JSON instead of a table.", "aliases": ["--json"]})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda when available)."})


def _load_model_and_processor(model_name_or_path: str, tokenizer_name_or_path: str | None, device: str | None):
    """The model and its processor (saved beside it, or built from the default video settings and
    the given tokenizer), as the other command lines load them."""
    # Imported here: retrieval_cli brings the Trainer stack, which the Python API does not need.
    from ..cli.retrieval import DataArguments, ModelArguments, load_processor

    model = HBIModel.from_pretrained(model_name_or_path)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    model_args = ModelArguments(model_name_or_path=model_name_or_path, tokenizer_name_or_path=tokenizer_name_or_path)
    processor = load_processor(model_args, DataArguments(), model.config.vision_config.image_size)
    return model, processor


def index_main(argv: list[str] | None = None) -> IndexReport:
    """`hbi-index VIDEO_DIR --model NAME_OR_PATH --output INDEX [--segment-seconds S] [--batch-size B]`"""
    parser = HfArgumentParser(IndexArguments, prog="hbi-index", description="Index a folder of videos for hbi-search.")
    parser.add_argument("video_dir", help="Folder of videos, searched recursively.")
    args, positional = parser.parse_args_into_dataclasses(args=argv)
    model, processor = _load_model_and_processor(args.model, args.tokenizer, args.device)
    report = build_index(
        positional.video_dir, model, processor, args.output, batch_size=args.batch_size,
        segment_seconds=args.segment_seconds, shard_size=args.shard_size, hash_contents=args.hash_contents,
    )
    print(report.summary())
    return report


def search_main(argv: list[str] | None = None) -> list[list[SearchHit]]:
    """`hbi-search INDEX "a man is cooking pasta" [MORE QUERIES] [--top-k 10] [--model M] [--json]
    [--candidates N]`"""
    parser = HfArgumentParser(SearchArguments, prog="hbi-search", description="Search an hbi-index by text.")
    parser.add_argument("index", help="Index folder written by hbi-index.")
    parser.add_argument("queries", nargs="+", help="One or more captions.")
    args, positional = parser.parse_args_into_dataclasses(args=argv)
    index = VideoIndex.open(positional.index)
    model_name = args.model or index.model_name_or_path
    if not model_name:
        raise SystemExit(f"the index at {positional.index} does not name its model: pass --model")
    recorded_tokenizer = (index.manifest.get("tokenizer") or {}).get("name_or_path")
    has_processor = (Path(model_name) / "processor_config.json").exists()
    tokenizer = args.tokenizer or (None if has_processor else recorded_tokenizer)
    model, processor = _load_model_and_processor(model_name, tokenizer, args.device)
    results = search(
        positional.index, positional.queries, model, processor, top_k=args.top_k,
        chunk_size=args.chunk_size, candidates=args.candidates,
    )
    if args.as_json:
        print(json.dumps(search_results_to_json(positional.queries, results), indent=2))
    else:
        print(format_search_results(positional.queries, results))
    return results
