"""The video-text record, one (video, caption) pair, which every reader produces and the collator
batches, with the clip naming helpers and the per-clip views evaluation needs (`unique_videos`,
`text_to_video_index`)."""

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import NamedTuple

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts")


@dataclass
class VideoTextRecord:
    """One training or evaluation pair.

    `video` is a file path or the encoded bytes; `start` / `end` bound the clip in seconds (None:
    the whole video). For question answering, `caption` holds the question (it is the text the
    model reads) and `question` / `answer` are set as well. Records are values: `name` (a digest
    of the bytes for a video held as bytes) is computed once, so build a new record rather than
    changing `video`.
    """

    video: str | bytes
    caption: str
    video_id: str
    start: float | None = None
    end: float | None = None
    question: str | None = None
    answer: str | None = None

    def __post_init__(self):
        # Integer seconds from JSON and floats from CSV must give the same `datasets` column type.
        self.start = None if self.start is None else float(self.start)
        self.end = None if self.end is None else float(self.end)

    @classmethod
    def from_mapping(cls, row: Mapping) -> "VideoTextRecord":
        """A record from a dataset row with the record's columns. A `datasets.Video(decode=False)`
        cell (`{"path", "bytes"}`) gives its bytes when it has them, else its path."""
        values = {field.name: row.get(field.name) for field in fields(cls)}
        values["video"] = _encoded_video(values["video"])
        if values["video_id"] is None and isinstance(values["video"], str):
            values["video_id"] = _strip_video_extension(values["video"])
        return cls(**values)

    @cached_property
    def name(self) -> str:
        # Cached: the collator asks for a record's clip key several times per batch.
        return _video_name(self.video, self.video_id)

    @property
    def clip_key(self) -> tuple[str, float | None, float | None]:
        """Identifies the decoded clip: the same video over the same segment."""
        return (self.name, self.start, self.end)


class VideoClip(NamedTuple):
    """One video to encode for evaluation, as `unique_videos` lists them."""

    video_id: str
    video: str | bytes
    start: float | None
    end: float | None

    @property
    def name(self) -> str:
        return _video_name(self.video, self.video_id)

    @property
    def clip_key(self) -> tuple[str, float | None, float | None]:
        return (self.name, self.start, self.end)


def _video_name(video: str | bytes, video_id: str) -> str:
    """What names and tells apart a video: its path, or for a video held as bytes its id and a
    digest of the bytes, as `<id>@blake2b:<hex>`. The id alone is not enough: webdataset keys (the
    default ids) repeat across shards for different videos, which would then be one clip."""
    if isinstance(video, str):
        return video
    return f"{video_id}@blake2b:{hashlib.blake2b(video, digest_size=16).hexdigest()}"


def _encoded_video(cell):
    """A path or bytes; a `datasets.Video(decode=False)` cell gives its bytes, else its path."""
    if isinstance(cell, Mapping):
        return cell.get("bytes") or cell.get("path")
    return cell


def _strip_video_extension(path: str) -> str:
    root, extension = os.path.splitext(path)
    return root if extension.lower() in VIDEO_EXTENSIONS else path


def unique_videos(records: Iterable[VideoTextRecord | Mapping]) -> list[VideoClip]:
    """Each distinct clip (video and segment) once, in order of first appearance, so that
    evaluation encodes every video once however many captions it has."""
    clips = {}
    for record in map(as_record, records):
        clips.setdefault(record.clip_key, VideoClip(record.video_id, record.video, record.start, record.end))
    return list(clips.values())


def text_to_video_index(records: Iterable[VideoTextRecord | Mapping]) -> list[int]:
    """For each record (caption), the position of its clip in `unique_videos(records)`."""
    positions: dict[tuple, int] = {}
    return [positions.setdefault(record.clip_key, len(positions)) for record in map(as_record, records)]


def as_record(item: VideoTextRecord | Mapping) -> VideoTextRecord:
    """A record, from a record or a dataset row."""
    return item if isinstance(item, VideoTextRecord) else VideoTextRecord.from_mapping(item)
