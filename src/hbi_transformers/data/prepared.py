"""Reading prepared-frame corpora (written by `prepare_corpus`, the `hbi-prepare` command): the
frames the video processor would sample, already resized, stored in Parquet shards, so that an
epoch reads frames instead of decoding videos. The format is described in docs/video_input.md.

A prepared clip is named in a record's `video` by a reference string,
`hbi-prepared:<shard path>#<row>`, which the collator recognises (`is_prepared_reference`): it
reads the frames (`read_prepared_clip`) and hands them to the video processor, whose crop,
augmentation and normalisation still run on every call."""

import io
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

PREPARED_MANIFEST = "hbi_prepared.json"
PREPARED_SCHEME = "hbi-prepared:"
RECORDS_FILE = "records.parquet"
CLIPS_FOLDER = "clips"
FORMAT_VERSION = 1
# raw: uint8 arrays (lossless, fastest to read); png: lossless, smaller, slower; jpeg: lossy.
FRAME_FORMATS = ("raw", "png", "jpeg")


class PreparedCorpusError(ValueError):
    """A prepared corpus that cannot serve this processor (other sampling settings), or that is
    unfinished or damaged."""


@dataclass(frozen=True)
class PreparedSettings:
    """What a prepared corpus holds: the sampling of `read_video` and the resize target of the
    processor's resize step (`size`, its `SizeDict` fields), and how frames are stored."""

    max_frames: int
    video_framerate: float
    frame_sampling: str
    size: tuple[tuple[str, int], ...]
    resample: int
    frame_format: str = "raw"
    jpeg_quality: int | None = None

    @classmethod
    def from_processor(cls, video_processor, video_options: dict | None = None, frame_format: str = "raw",
                       jpeg_quality: int | None = None) -> "PreparedSettings":
        """The settings a video processor (with the collator's call-time `video_options`) applies."""
        options = video_options or {}
        if frame_format not in FRAME_FORMATS:
            raise ValueError(f"frame_format must be one of {FRAME_FORMATS}, got {frame_format!r}")
        size = options.get("size", video_processor.size)
        return cls(
            max_frames=int(options.get("max_frames", video_processor.max_frames)),
            video_framerate=float(options.get("video_framerate", video_processor.video_framerate)),
            frame_sampling=options.get("frame_sampling", video_processor.frame_sampling),
            size=tuple(sorted((key, int(value)) for key, value in dict(size).items() if value is not None)),
            resample=int(options.get("resample", video_processor.resample)),
            frame_format=frame_format,
            jpeg_quality=jpeg_quality if frame_format == "jpeg" else None,
        )

    def sampling(self) -> dict:
        """The fields that must match between a corpus and the processor reading it."""
        return {key: value for key, value in asdict(self).items() if key not in ("frame_format", "jpeg_quality")}

    def to_json(self) -> dict:
        values = asdict(self)
        values["size"] = dict(self.size)
        return values

    @classmethod
    def from_json(cls, values: dict) -> "PreparedSettings":
        return cls(**{**values, "size": tuple(sorted(values["size"].items()))})


def is_prepared_corpus(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and (Path(path) / PREPARED_MANIFEST).is_file()


def read_manifest(folder) -> dict:
    """The manifest of a finished prepared corpus; `PreparedCorpusError` for an unfinished one."""
    manifest = json.loads((Path(folder) / PREPARED_MANIFEST).read_text())
    if not manifest.get("complete"):
        raise PreparedCorpusError(f"{folder} is an unfinished prepared corpus: run hbi-prepare again to finish it")
    return manifest


def is_prepared_reference(video) -> bool:
    return isinstance(video, str) and video.startswith(PREPARED_SCHEME)


def prepared_reference(shard: str | os.PathLike, row: int) -> str:
    return f"{PREPARED_SCHEME}{os.fspath(shard)}#{row}"


def split_reference(reference: str) -> tuple[str, int]:
    """`(shard path, row)` of a prepared clip's reference."""
    shard, _, row = reference.removeprefix(PREPARED_SCHEME).rpartition("#")
    if not shard or not row.isdigit():
        raise PreparedCorpusError(f"malformed prepared clip reference {reference!r}")
    return shard, int(row)


def resolve_reference(reference: str, folder) -> str:
    """A reference relative to its corpus folder (as stored) made absolute, so the records work
    from any working directory and the folder can be moved or downloaded anywhere."""
    shard, row = split_reference(reference)
    return prepared_reference(Path(folder).resolve() / shard, row)


def load_prepared_records(folder) -> list[dict]:
    """The record rows of a prepared corpus, their `video` the absolute reference of their clip."""
    import pyarrow.parquet as pq

    read_manifest(folder)
    rows = pq.read_table(Path(folder) / RECORDS_FILE).to_pylist()
    for row in rows:
        row["video"] = resolve_reference(row["video"], folder)
    return rows


@lru_cache(maxsize=64)
def _shard(path: str):
    """An open shard (each process, DataLoader workers included, opens its own)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


@lru_cache(maxsize=64)
def corpus_settings(shard: str) -> PreparedSettings:
    """The settings of the corpus a shard belongs to (its manifest is in the shard's grandparent)."""
    return PreparedSettings.from_json(read_manifest(Path(shard).parent.parent)["settings"])


def decode_frames(frames: list[bytes], shape: tuple[int, int, int, int], frame_format: str) -> np.ndarray:
    """uint8 `[frames, H, W, 3]` from the stored frames."""
    if frame_format == "raw":
        # Copied into one writable array: the processor's tensors may be changed in place.
        clip = np.empty(shape, dtype=np.uint8)
        for index, frame in enumerate(frames):
            clip[index] = np.frombuffer(frame, dtype=np.uint8).reshape(shape[1:])
        return clip
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(frame)).convert("RGB")) for frame in frames])


def read_prepared_clip(reference: str) -> tuple[np.ndarray, dict, PreparedSettings]:
    """The stored frames (uint8 `[frames, H, W, 3]`) of a prepared clip, what is known of them
    (as the processor's `video_metadata`: source, frame indices, timestamps, fps, duration) and the
    settings of its corpus."""
    shard, row = split_reference(reference)
    settings = corpus_settings(shard)
    parquet = _shard(shard)
    if row >= parquet.num_row_groups:
        raise PreparedCorpusError(f"{reference}: the shard has {parquet.num_row_groups} clips")
    # One clip per row group: a clip is read without touching its neighbours.
    values = parquet.read_row_group(row).to_pylist()[0]
    shape = (len(values["frames"]), values["height"], values["width"], 3)
    frames = decode_frames(values["frames"], shape, settings.frame_format)
    info = {key: values[key] for key in ("source", "frame_indices", "timestamps", "fps", "duration")}
    return frames, info, settings


def check_settings(reference: str, stored: PreparedSettings, wanted: PreparedSettings) -> None:
    """`PreparedCorpusError` when a corpus was prepared for other sampling or resizing than the
    processor reading it applies: its frames would not be the ones the processor samples."""
    if stored.sampling() != wanted.sampling():
        differing = {key: (value, wanted.sampling()[key]) for key, value in stored.sampling().items()
                     if value != wanted.sampling()[key]}
        details = ", ".join(f"{key}: prepared {old}, asked {new}" for key, (old, new) in differing.items())
        raise PreparedCorpusError(
            f"{reference} was prepared with other settings than the processor's ({details}): prepare the corpus "
            "again with these settings, or use the prepared ones"
        )
