"""The index on disk: the manifest and the shards (see the package docstring for the layout),
`VideoIndex` to read them, and the writer that adds and rewrites shards and commits the
manifest."""

import bisect
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ...models.hbi.configuration_hbi import LEVEL_NAMES
from ...models.hbi.modeling_hbi import HBIVideoOutput
from ...models.hbi.wti import LevelTokens, l2_normalize
from ...training.model_identity import model_identity
from .identity import check_same_model, fixed_merge_noise, pooled_embeddings

INDEX_FORMAT = "hbi-video-index"
INDEX_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PREFIX, SHARD_SUFFIX = "shard-", ".safetensors"
DEFAULT_SHARD_SIZE = 1024
# Candidate rows of a shard that form more runs than this are read with the whole shard.
MAX_RUNS_READ_APART = 64


def _shard_name(number: int) -> str:
    return f"{SHARD_PREFIX}{number:06d}{SHARD_SUFFIX}"


def _write_json_atomically(path: Path, data) -> None:
    temporary = path.with_name(path.name + ".tmp")
    # Compact: the manifest of a large index lists 10^5 entries and more.
    temporary.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(temporary, path)


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
        check_same_model(self.manifest["model"], model_identity(model), self.index_dir)

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


def _write_shard(index_dir: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    path = index_dir / name
    temporary = path.with_name(path.name + ".tmp")
    save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, str(temporary),
              metadata={"format": INDEX_FORMAT})
    os.replace(temporary, path)


@torch.no_grad()
def entry_tensors(model, video_embeds: torch.Tensor, video_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a shard stores for a batch of encoded videos (see the package docstring), on the CPU."""
    with fixed_merge_noise(video_embeds.device):
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


def new_manifest(identity: dict, video_settings: dict | None, segment_seconds: int | None) -> dict:
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


class IndexWriter:
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
