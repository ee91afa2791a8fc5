"""Webdataset-style tar shards: a video plus a txt or json per sample key, read as bytes while
streaming through the archive and turned into `VideoTextRecord`s."""

import codecs
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from glob import glob

from .annotations import (
    AnnotationReport,
    _json_problem,
    _log_summary,
    _records_from_row,
    _report_mark,
    _VideoLocator,
)
from .records import VIDEO_EXTENSIONS, VideoTextRecord


def _shard_paths(shards: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Tar files from a path, a folder of shards, a glob pattern or a list of these."""
    if not isinstance(shards, (str, os.PathLike)):
        return [path for shard in shards for path in _shard_paths(shard)]
    shards = os.fspath(shards)
    if os.path.isdir(shards):
        return sorted(glob(os.path.join(shards, "*.tar*")))
    paths = sorted(glob(shards)) if any(character in shards for character in "*?[") else [shards]
    if not paths:
        raise FileNotFoundError(f"no tar shard matches {shards}")
    return paths


def _sample_key_and_extension(member_name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name."""
    directory, file_name = os.path.split(member_name)
    stem, _, extension = file_name.partition(".")
    return os.path.join(directory, stem), extension.lower()


def _grouped_samples(shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample; a sample's files are adjacent in the stream."""
    key, files = None, {}
    with tarfile.open(shard, mode="r|*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            member_key, extension = _sample_key_and_extension(member.name)
            if member_key != key and files:
                yield key, files
                files = {}
            key = member_key
            files[extension] = archive.extractfile(member).read()
    if files:
        yield key, files


def _sample_text(data: bytes, member: str) -> str:
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = data[error.start]
        raise ValueError(f"{member} is not UTF-8 text (byte {byte:#04x} at offset {error.start})") from None


def _webdataset_row(key: str, files: dict[str, bytes]) -> tuple[dict, str]:
    """The sample as an annotation row holding the video bytes, and the member holding its text."""
    video = next((files[extension[1:]] for extension in VIDEO_EXTENSIONS if extension[1:] in files), None)
    if video is None:
        raise ValueError("no video file")
    if "json" in files:
        member = f"{key}.json"
        try:
            row = json.loads(_sample_text(files["json"], member))
        except json.JSONDecodeError as error:
            raise ValueError(f"{member} is malformed JSON: {_json_problem(error)} of line {error.lineno}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{member} holds {type(row).__name__}, not an object of annotation columns")
    elif "txt" in files:
        member = f"{key}.txt"
        row = {"caption": _sample_text(files["txt"], member).strip()}
    else:
        raise ValueError("no txt or json caption")
    return {**row, "video": video, "video_id": row.get("video_id", key)}, member


def iter_webdataset(
    shards: str | os.PathLike | Iterable[str | os.PathLike], *, report: AnnotationReport | None = None
) -> Iterator[VideoTextRecord]:
    """Records of webdataset-style tar shards, streamed through each archive without extracting.

    A sample is the files sharing a key: a video (`.mp4`, `.webm`, ... as in `VIDEO_EXTENSIONS`,
    kept as bytes) and either a `.txt` caption or a `.json` row with the generic annotation
    columns (`caption` or `captions`, optional `start` / `end`, `video_id`; the key by default).
    Keys may repeat across shards: a video held as bytes is told apart by a digest of its bytes
    besides its id (see `VideoTextRecord.name`), so such samples stay distinct clips.

    A sample missing the video or the text, or whose text is not UTF-8 or its row not readable
    (malformed JSON, a start that is not a number...), is left out, and bad captions are skipped
    as in `iter_annotations`: each is logged with its shard and member, counted in `report`, and a
    summary line is logged per shard. No sample raises mid-stream (an unreadable tar does).
    """
    report = AnnotationReport() if report is None else report
    bytes_only = _VideoLocator(None)
    for shard in _shard_paths(shards):
        start = _report_mark(report)
        for key, files in _grouped_samples(shard):
            try:
                row, member = _webdataset_row(key, files)
                records = _records_from_row(row, bytes_only, f"{shard}:{member}", report)
            except ValueError as error:
                # A shard is streamed mid-training, where raising would end the run.
                report.skip(f"{shard}:{key}", f"sample left out: {error}")
                continue
            yield from records
        _log_summary(shard, report, start)
