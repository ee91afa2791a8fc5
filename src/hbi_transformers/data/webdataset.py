"""Webdataset-style tar shards: a video plus a txt or json per sample key, read as bytes while
streaming through the archive and turned into `VideoTextRecord`s."""

import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from glob import glob

from transformers.utils import logging

from .annotations import _VideoLocator, _records_from_row
from .records import VIDEO_EXTENSIONS, VideoTextRecord

logger = logging.get_logger(__name__)


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


def _webdataset_row(key: str, files: dict[str, bytes]) -> dict | None:
    """The sample as an annotation row holding the video bytes; None without video or text."""
    video = next((files[extension[1:]] for extension in VIDEO_EXTENSIONS if extension[1:] in files), None)
    if video is None:
        return None
    if "json" in files:
        row = json.loads(files["json"])
    elif "txt" in files:
        row = {"caption": files["txt"].decode("utf-8").strip()}
    else:
        return None
    return {**row, "video": video, "video_id": row.get("video_id", key)}


def iter_webdataset(shards: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[VideoTextRecord]:
    """Records of webdataset-style tar shards, streamed through each archive without extracting.

    A sample is the files sharing a key: a video (`.mp4`, `.webm`, ... as in `VIDEO_EXTENSIONS`,
    kept as bytes) and either a `.txt` caption or a `.json` row with the generic annotation
    columns (`caption` or `captions`, optional `start` / `end`, `video_id`; the key by default).
    Samples missing the video or the text are logged and left out.
    """
    bytes_only = _VideoLocator(None)
    for shard in _shard_paths(shards):
        for key, files in _grouped_samples(shard):
            row = _webdataset_row(key, files)
            if row is None:
                logger.warning(f"{shard}: sample {key} lacks a video or a txt / json caption; left out")
                continue
            yield from _records_from_row(row, bytes_only)
