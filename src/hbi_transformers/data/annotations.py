"""Generic annotation files: jsonl, json (a list of rows) or csv rows, each naming a video by path
or id beside a folder of videos, turned into `VideoTextRecord`s, one per caption."""

import csv
import json
import os
from collections.abc import Iterator, Mapping

from .records import VIDEO_EXTENSIONS, VideoTextRecord, _encoded_video, _strip_video_extension

# Column names the generic readers accept, in order of preference.
PATH_COLUMNS = ("video", "video_path", "path")
ID_COLUMNS = ("video_id", "id")
CAPTION_COLUMNS = ("caption", "captions", "sentence", "text", "description")


class _VideoLocator:
    """Paths of the videos an annotation file names, relative to `video_root`."""

    def __init__(self, video_root: str | os.PathLike | None):
        self.video_root = None if video_root is None else os.fspath(video_root)
        self._paths_by_id: dict[str, str] = {}  # rows of one video repeat its id

    def by_path(self, path: str) -> str:
        if self.video_root is None or os.path.isabs(path):
            return path
        return os.path.join(self.video_root, path)

    def by_id(self, video_id: str) -> str:
        """The first existing `<root>/<id><extension>`; else the `.mp4` path, so that the collator
        reports the file as missing instead of the whole corpus failing to load."""
        if self.video_root is None:
            raise ValueError(f"video {video_id!r} is named by id only: pass video_root to locate its file")
        if video_id not in self._paths_by_id:
            candidates = [os.path.join(self.video_root, video_id + extension) for extension in VIDEO_EXTENSIONS]
            self._paths_by_id[video_id] = next((path for path in candidates if os.path.exists(path)), candidates[0])
        return self._paths_by_id[video_id]


def _first_present(row: Mapping, columns: tuple[str, ...]):
    return next((row[column] for column in columns if row.get(column) not in (None, "")), None)


def _captions_of(row: Mapping) -> list[str]:
    captions = _first_present(row, CAPTION_COLUMNS)
    if captions is None:
        captions = row.get("question")
    if captions is None:
        raise ValueError(f"annotation row has no caption column (one of {CAPTION_COLUMNS}): {dict(row)}")
    # CSV cells hold a list of captions as a JSON array.
    if isinstance(captions, str) and captions.lstrip().startswith("["):
        captions = json.loads(captions)
    return [captions] if isinstance(captions, str) else list(captions)


def _seconds(value) -> float | None:
    return None if value in (None, "") else float(value)


def _optional_text(row: Mapping, column: str) -> str | None:
    """The cell as text; None for an absent column or an empty CSV cell."""
    value = row.get(column)
    return None if value in (None, "") else str(value)


def _records_from_row(row: Mapping, locator: _VideoLocator) -> list[VideoTextRecord]:
    """One record per caption of an annotation row (path or id column, captions, segment, QA)."""
    video = _encoded_video(_first_present(row, PATH_COLUMNS))
    video_id = _first_present(row, ID_COLUMNS)
    if isinstance(video, str):
        video_id = str(video_id) if video_id is not None else _strip_video_extension(video)
        video = locator.by_path(video)
    elif video is None:
        if video_id is None:
            raise ValueError(f"annotation row names no video (one of {PATH_COLUMNS + ID_COLUMNS}): {dict(row)}")
        video_id = str(video_id)
        video = locator.by_id(video_id)
    elif video_id is None:
        raise ValueError("a row holding video bytes needs a video_id column to name the video")
    return [
        VideoTextRecord(
            video=video,
            caption=caption,
            video_id=str(video_id),
            start=_seconds(row.get("start")),
            end=_seconds(row.get("end")),
            question=_optional_text(row, "question"),
            answer=_optional_text(row, "answer"),
        )
        for caption in _captions_of(row)
    ]


def annotation_rows(annotation_file: str) -> Iterator[Mapping]:
    if annotation_file.endswith(".csv"):
        with open(annotation_file, newline="", encoding="utf-8") as handle:
            yield from csv.DictReader(handle)
    elif annotation_file.endswith(".jsonl"):
        with open(annotation_file, encoding="utf-8") as handle:
            yield from (json.loads(line) for line in handle if line.strip())
    elif annotation_file.endswith(".json"):
        with open(annotation_file, encoding="utf-8") as handle:
            yield from json.load(handle)
    else:
        raise ValueError(f"{annotation_file}: annotation files are .jsonl, .json (a list of rows) or .csv")


def iter_annotations(
    annotation_file: str | os.PathLike, video_root: str | os.PathLike | None = None
) -> Iterator[VideoTextRecord]:
    """Records of a generic annotation file, read lazily, one per caption.

    Each row names its video by a path column (`video`, `video_path` or `path`; relative to
    `video_root`) or by an id column (`video_id` or `id`; the file `<video_root>/<id>.<ext>` with
    the first existing extension of `VIDEO_EXTENSIONS`), and has a caption column (`caption`,
    `captions`, `sentence`, `text` or `description`: one string, or a list, a JSON array in CSV).
    Optional columns: `start` / `end` (seconds), `question` / `answer`.
    """
    locator = _VideoLocator(video_root)
    for row in annotation_rows(os.fspath(annotation_file)):
        yield from _records_from_row(row, locator)
