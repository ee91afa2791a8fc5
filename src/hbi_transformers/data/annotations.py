"""Generic annotation files: jsonl, json (a list of rows) or csv rows, each naming a video by path
or id beside a folder of videos, turned into `VideoTextRecord`s, one per caption.

Rows are checked as they are read, and every message names the file and line. What makes the file
unreadable as its format says (bytes that are not UTF-8, a malformed JSON line, a row that names no
video) is rejected with a ValueError; a caption the processor could not read (empty, blank, not
text) is skipped with a warning and counted in an `AnnotationReport`, the row keeping its other
captions."""

import codecs
import csv
import json
import math
import os
import re
import reprlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from transformers.utils import logging

from ..models.hbi.processing_hbi import clean_caption
from .bad_items import skipped_summary
from .records import VIDEO_EXTENSIONS, VideoTextRecord, _encoded_video, _strip_video_extension

logger = logging.get_logger(__name__)

# Column names the generic readers accept, in order of preference.
PATH_COLUMNS = ("video", "video_path", "path")
ID_COLUMNS = ("video_id", "id")
CAPTION_COLUMNS = ("caption", "captions", "sentence", "text", "description")
# The one csv column whose cells may hold a JSON array (of captions): elsewhere a "[" is text.
CSV_LIST_COLUMN = "captions"


@dataclass
class SkippedAnnotation:
    location: str  # "file:line", or "shard:member" for a webdataset sample
    reason: str


@dataclass
class AnnotationReport:
    """The captions read and the ones skipped (empty, blank, not text), with where and why, so
    that a caller can bound their share (`skipped_fraction`). Readers fill the report passed to
    them as they read, and log a summary line per file."""

    captions: int = 0  # every caption met, skipped ones included
    skipped: list[SkippedAnnotation] = field(default_factory=list)

    def keep(self) -> None:
        self.captions += 1

    def skip(self, location: str, reason: str) -> None:
        self.captions += 1
        self.skipped.append(SkippedAnnotation(location, reason))
        logger.warning(f"{location}: {reason}; skipped")

    @property
    def skipped_fraction(self) -> float:
        return len(self.skipped) / self.captions if self.captions else 0.0

    def summary(self, max_listed: int = 10) -> str:
        """E.g. "3 of 1200 captions skipped: a.csv:4 (caption is empty), ..."."""
        return _summary(self.captions, self.skipped, max_listed)


def _summary(captions: int, skipped: list[SkippedAnnotation], max_listed: int = 10) -> str:
    return skipped_summary("captions", captions, [(item.location, item.reason) for item in skipped], max_listed)


def _log_summary(source: str, report: AnnotationReport, start: tuple[int, int]) -> int:
    """Logs what `report` gained since `start` (its counts when `source` was opened); returns
    the number of captions skipped in `source`."""
    captions, skipped = report.captions - start[0], report.skipped[start[1] :]
    (logger.warning if skipped else logger.info)(f"{source}: {_summary(captions, skipped)}")
    return len(skipped)


def _report_mark(report: AnnotationReport) -> tuple[int, int]:
    return report.captions, len(report.skipped)


def _describe(value) -> str:
    return f"{type(value).__name__} {reprlib.repr(value)}"


# --------------------------------------------------------------------------------------------
# Text, lines and rows


def _utf8(data: bytes, path: str, first_line: int = 1) -> str:
    """`data` as text, a leading byte order mark dropped; bytes that are not UTF-8 are an error
    naming the line (a decoding text stream only knows the chunk it was decoding)."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        column = error.start - data.rfind(b"\n", 0, error.start)
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x} at column {column}); save the file as UTF-8"
        ) from None


def _text_lines(path: str) -> Iterator[tuple[int, str]]:
    """(1-based number, text) of each line of a UTF-8 file, read lazily."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            yield number, _utf8(line, path, number)


def _read_text(path: str) -> str:
    with open(path, "rb") as handle:
        return _utf8(handle.read(), path)


def _json_problem(error: json.JSONDecodeError) -> str:
    """E.g. "Expecting ',' delimiter at column 7" (json's own message counts lines of the text it
    parsed, which for a jsonl line is not the file's)."""
    return f"{error.msg}{'' if error.msg.endswith(' at') else ' at'} column {error.colno}"


def _malformed_json(path: str, error: json.JSONDecodeError) -> ValueError:
    return ValueError(f"{path}:{error.lineno}: malformed JSON: {_json_problem(error)}")


def _read_json(path: str):
    """A whole JSON document, its errors naming the file and line."""
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise _malformed_json(path, error) from None


def _object_row(row, location: str) -> Mapping:
    if not isinstance(row, Mapping):
        raise ValueError(f"{location}: a row is a JSON object of columns, not {_describe(row)}")
    return row


def _jsonl_rows(path: str) -> Iterator[tuple[str, Mapping]]:
    for number, line in _text_lines(path):
        if line.strip():
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: malformed JSON line: {_json_problem(error)}") from None
            yield f"{path}:{number}", _object_row(row, f"{path}:{number}")


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_list_rows(path: str) -> Iterator[tuple[str, Mapping]]:
    """The rows of a JSON list, each with the line it starts on and its position in the list (a
    file written without indentation is one line)."""
    text, decoder = _read_text(path), json.JSONDecoder()
    position, line, counted = _JSON_SPACE.match(text).end(), 1, 0

    def line_at(at: int) -> int:
        nonlocal line, counted
        line, counted = line + text.count("\n", counted, at), at
        return line

    if not text.startswith("[", position):
        raise ValueError(f"{path}:{line_at(position)}: a .json annotation file holds a list of rows")
    position = _JSON_SPACE.match(text, position + 1).end()
    number = 0
    while not text.startswith("]", position):
        if number:
            if not text.startswith(",", position):
                raise ValueError(f"{path}:{line_at(position)}: malformed JSON: expected ',' or ']' after row {number}")
            position = _JSON_SPACE.match(text, position + 1).end()
        try:
            row, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise _malformed_json(path, error) from None
        number += 1
        location = f"{path}:{line_at(position)} (row {number})"
        yield location, _object_row(row, location)
        position = _JSON_SPACE.match(text, end).end()
    if _JSON_SPACE.match(text, position + 1).end() != len(text):
        raise ValueError(f"{path}:{line_at(position)}: malformed JSON: text after the list of rows")


def _csv_rows(path: str) -> Iterator[tuple[str, dict]]:
    """Rows of a csv with a header, each located at its first line (a quoted cell may span lines).
    A row whose cell count differs from the header's is an error: it is a caption with an
    unquoted comma or line break, whose cells would otherwise land in the wrong columns."""
    reader = csv.reader(line for _, line in _text_lines(path))
    consumed = 0
    try:
        header = next(reader, None)
        consumed = reader.line_num
        for cells in reader:
            first_line, consumed = consumed + 1, reader.line_num
            if not cells:
                continue
            if len(cells) != len(header):
                raise ValueError(
                    f"{path}:{first_line}: {len(cells)} cells where the header has {len(header)}; quote cells "
                    "holding a comma or a line break"
                )
            yield f"{path}:{first_line}", dict(zip(header, cells))
    except csv.Error as error:
        raise ValueError(f"{path}:{consumed + 1}: malformed csv: {error}") from None


def _numbered_rows(path: str) -> Iterator[tuple[str, Mapping]]:
    """(location, row) of each row of an annotation file; the location is "file:line" (1-based)."""
    if path.endswith(".csv"):
        return _csv_rows(path)
    if path.endswith(".jsonl"):
        return _jsonl_rows(path)
    if path.endswith(".json"):
        return _json_list_rows(path)
    raise ValueError(f"{path}: annotation files are .jsonl, .json (a list of rows) or .csv")


# --------------------------------------------------------------------------------------------
# Captions


def _is_blank(caption: str) -> bool:
    """Whether the processor's cleaning leaves no text; the cleaning (ftfy, slow over a large
    corpus) only runs where a plain look cannot tell: HTML entities or non-printing characters."""
    if not caption.strip():
        return True
    if "&" not in caption and caption.isprintable():
        return False
    return not clean_caption(caption)


def _caption(value, location: str, report: AnnotationReport, what: str = "caption") -> str | None:
    """`value` if the processor can read it as a caption, else None, skipped and counted."""
    if not isinstance(value, str):
        reason = f"{what} is {_describe(value)}, not text"
    elif _is_blank(value):
        reason = f"{what} is empty" if not value else f"{what} is blank ({reprlib.repr(value)})"
    else:
        report.keep()
        return value
    report.skip(location, reason)
    return None


def _caption_list(value, location: str, report: AnnotationReport) -> list[str]:
    """The good captions of a cell: one caption, or a list of them."""
    if not isinstance(value, list):
        caption = _caption(value, location, report)
        return [] if caption is None else [caption]
    if not value:
        report.skip(location, "the list of captions is empty")
    captions = (_caption(item, location, report, f"caption {n} of {len(value)}") for n, item in enumerate(value, 1))
    return [caption for caption in captions if caption is not None]


def _csv_caption_array(cell: str, location: str):
    try:
        captions = json.loads(cell)
    except json.JSONDecodeError as error:
        captions = error
    if not isinstance(captions, list):
        raise ValueError(
            f'{location}: the "{CSV_LIST_COLUMN}" cell starts with "[" but is not a JSON array of captions '
            f'({reprlib.repr(cell)}); put a single caption in a "caption" column'
        )
    return captions


def _caption_column(row: Mapping) -> str | None:
    """The first caption column with a value (`question` for QA rows without one), else the first
    one present, whose empty value is then skipped and counted; None when the row has none."""
    columns = [column for column in (*CAPTION_COLUMNS, "question") if column in row]
    return next((column for column in columns if row[column] not in (None, "")), next(iter(columns), None))


def _captions_of(row: Mapping, column: str | None, location: str, report: AnnotationReport, from_csv: bool):
    """The good captions of the row's caption column; the bad ones are skipped and counted."""
    if column is None:
        report.skip(location, f"the row has no caption column (one of {', '.join(CAPTION_COLUMNS)})")
        return []
    captions = row[column]
    if from_csv and column == CSV_LIST_COLUMN and isinstance(captions, str) and captions.lstrip().startswith("["):
        captions = _csv_caption_array(captions, location)
    return _caption_list(captions, location, report)


# --------------------------------------------------------------------------------------------
# Records


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


def _seconds(row: Mapping, column: str, location: str) -> float | None:
    value = row.get(column)
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds):
        raise ValueError(f"{location}: {column} is {_describe(value)}, not a number of seconds")
    return seconds


def _optional_text(row: Mapping, column: str, location: str) -> str | None:
    """The cell as text (numbers, e.g. JSON answers, as written); None for an absent column or an
    empty CSV cell."""
    value = row.get(column)
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{location}: {column} is {_describe(value)}, not text")
    return str(value)


def _video_of(row: Mapping, locator: _VideoLocator, location: str) -> tuple[str | bytes, str]:
    """The row's video (a path or bytes) and its id."""
    video = _encoded_video(_first_present(row, PATH_COLUMNS))
    video_id = _first_present(row, ID_COLUMNS)
    if video_id is not None:
        if isinstance(video_id, bool) or not isinstance(video_id, (str, int)):
            raise ValueError(f"{location}: the video id is {_describe(video_id)}, not text")
        video_id = str(video_id)
    try:
        if isinstance(video, str):
            return locator.by_path(video), video_id if video_id is not None else _strip_video_extension(video)
        if video is None:
            if video_id is None:
                raise ValueError(f"the row names no video (no {' / '.join(PATH_COLUMNS + ID_COLUMNS)} value)")
            return locator.by_id(video_id), video_id
    except ValueError as error:
        raise ValueError(f"{location}: {error}") from None
    if not isinstance(video, bytes):
        raise ValueError(f"{location}: the video is {_describe(video)}, not a path or bytes")
    if video_id is None:
        raise ValueError(f"{location}: a row holding video bytes needs a video_id column to name the video")
    return video, video_id


def _records_from_row(
    row: Mapping,
    locator: _VideoLocator,
    location: str = "annotation row",
    report: AnnotationReport | None = None,
    *,
    from_csv: bool = False,
) -> list[VideoTextRecord]:
    """One record per good caption of an annotation row (path or id column, captions, segment,
    QA); bad captions are skipped and counted in `report`, a structural problem raises."""
    report = AnnotationReport() if report is None else report
    # Structural checks first, so that a row that raises has counted none of its captions.
    video, video_id = _video_of(row, locator, location)
    start, end = _seconds(row, "start", location), _seconds(row, "end", location)
    answer = _optional_text(row, "answer", location)
    column = _caption_column(row)
    # A question read as the caption is checked as one (skipped when bad).
    question = None if column == "question" else _optional_text(row, "question", location)
    return [
        VideoTextRecord(
            video=video,
            caption=caption,
            video_id=video_id,
            start=start,
            end=end,
            question=caption if column == "question" else question,
            answer=answer,
        )
        for caption in _captions_of(row, column, location, report, from_csv)
    ]


def annotation_rows(annotation_file: str | os.PathLike) -> Iterator[Mapping]:
    """The rows of an annotation file as read (csv cells are text), checked as `iter_annotations`
    reads them: bytes that are not UTF-8, malformed JSON or a row that is not an object raise a
    ValueError naming the file and line."""
    yield from (row for _, row in _numbered_rows(os.fspath(annotation_file)))


def iter_annotations(
    annotation_file: str | os.PathLike,
    video_root: str | os.PathLike | None = None,
    *,
    report: AnnotationReport | None = None,
) -> Iterator[VideoTextRecord]:
    """Records of a generic annotation file, read lazily, one per caption.

    Each row names its video by a path column (`video`, `video_path` or `path`; relative to
    `video_root`) or by an id column (`video_id` or `id`; the file `<video_root>/<id>.<ext>` with
    the first existing extension of `VIDEO_EXTENSIONS`), and has a caption column (`caption`,
    `captions`, `sentence`, `text` or `description`: one string, or a list; in csv, a `captions`
    cell starting with "[" is a JSON array of captions, and any other cell is one caption).
    Optional columns: `start` / `end` (seconds), `question` / `answer`. Files are UTF-8 (a byte
    order mark is allowed).

    A ValueError naming the file and line rejects a file that cannot be read as its format says:
    bytes that are not UTF-8, a malformed JSON line, a row that names no video, a start or end
    that is not a number, or no usable caption at all. A caption that is empty, blank or not
    text is skipped with a warning naming the file and line, and counted in `report` (pass one
    to read the count); the row keeps its other captions. A summary line is logged per file.
    """
    for _, records in iter_rows_with_records(annotation_file, video_root, report=report):
        yield from records


def iter_rows_with_records(
    annotation_file: str | os.PathLike,
    video_root: str | os.PathLike | None = None,
    *,
    report: AnnotationReport | None = None,
) -> Iterator[tuple[Mapping, list[VideoTextRecord]]]:
    """Each row of a generic annotation file with the records it gives (see `iter_annotations`,
    which checks and reports alike), for readers that need other columns of the row too."""
    path = os.fspath(annotation_file)
    report = AnnotationReport() if report is None else report
    locator, start, kept = _VideoLocator(video_root), _report_mark(report), 0
    from_csv = path.endswith(".csv")
    for location, row in _numbered_rows(path):
        records = _records_from_row(row, locator, location, report, from_csv=from_csv)
        kept += len(records)
        yield row, records
    skipped = _log_summary(path, report, start)
    if skipped and not kept:
        raise ValueError(f"{path}: no usable caption; {_summary(skipped, report.skipped[start[1] :])}")
