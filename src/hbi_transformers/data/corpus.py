"""Video-text corpora for HBI: annotation readers, `datasets` loading, and the batch collator.

Every reader turns its format into `VideoTextRecord`s, one per (video, caption) pair:
- `iter_annotations`: a generic jsonl / csv file (video path or id, one caption or a list,
  optional start / end seconds) beside a folder of videos;
- `iter_webdataset`: webdataset-style tar shards (a video plus a txt or json per sample key),
  read as bytes while streaming through the archive;
- `read_msrvtt`, `read_activitynet`, `read_didemo`, `read_msrvtt_qa`: the official annotation
  files with the official split rules (ActivityNet and DiDeMo as paragraph retrieval).

`load_video_text_dataset` puts records (or a hub dataset with such columns) into a `datasets`
Dataset, or an IterableDataset with `streaming=True`. Videos stay paths or encoded bytes there:
`HBIDataCollator` decodes them per batch, skipping (and counting) the ones that fail.
"""

import csv
import hashlib
import json
import math
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from glob import glob
from typing import NamedTuple

import torch
from transformers.utils import logging

from ..models.hbi.video_io import VideoDecodingError

logger = logging.get_logger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts")
# Column names the generic readers accept, in order of preference.
PATH_COLUMNS = ("video", "video_path", "path")
ID_COLUMNS = ("video_id", "id")
CAPTION_COLUMNS = ("caption", "captions", "sentence", "text", "description")


@dataclass
class VideoTextRecord:
    """One training or evaluation pair.

    `video` is a file path or the encoded bytes; `start` / `end` bound the clip in seconds (None:
    the whole video). For question answering, `caption` holds the question (it is the text the
    model reads) and `question` / `answer` are set as well.
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

    @property
    def name(self) -> str:
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
    """How logs and errors name a video: its path, or its id when it is held as bytes."""
    return video if isinstance(video, str) else video_id


def _encoded_video(cell):
    """A path or bytes; a `datasets.Video(decode=False)` cell gives its bytes, else its path."""
    if isinstance(cell, Mapping):
        return cell.get("bytes") or cell.get("path")
    return cell


def _strip_video_extension(path: str) -> str:
    root, extension = os.path.splitext(path)
    return root if extension.lower() in VIDEO_EXTENSIONS else path


# --------------------------------------------------------------------------------------------
# Generic annotation files and webdataset shards


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


# --------------------------------------------------------------------------------------------
# Official annotation formats


def _read_json(path: str):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _read_csv(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_msrvtt(split: str, annotations_dir: str | os.PathLike, video_root: str | os.PathLike) -> list[VideoTextRecord]:
    """MSR-VTT retrieval with the official splits.

    "train": every caption in `MSRVTT_data.json` of the 9k videos listed in `MSRVTT_train.9k.csv`
    (about 180k pairs), in the JSON's order. "test" (or "val", the same, as officially): the 1k
    pairs of `MSRVTT_JSFUSION_test.csv`. Videos are `<video_root>/<video_id>.mp4`.
    """
    annotations_dir, video_root = os.fspath(annotations_dir), os.fspath(video_root)

    def record(video_id: str, caption: str) -> VideoTextRecord:
        return VideoTextRecord(video=os.path.join(video_root, f"{video_id}.mp4"), caption=caption, video_id=video_id)

    if split == "train":
        train_ids = {row["video_id"] for row in _read_csv(os.path.join(annotations_dir, "MSRVTT_train.9k.csv"))}
        sentences = _read_json(os.path.join(annotations_dir, "MSRVTT_data.json"))["sentences"]
        return [record(item["video_id"], item["caption"]) for item in sentences if item["video_id"] in train_ids]
    if split in ("test", "val"):
        rows = _read_csv(os.path.join(annotations_dir, "MSRVTT_JSFUSION_test.csv"))
        return [record(row["video_id"], row["sentence"]) for row in rows]
    raise ValueError(f"MSR-VTT splits are 'train', 'val' and 'test', not {split!r}")


def _video_files_by_stem(video_root: str, stem_to_id) -> dict[str, str]:
    """Every file under `video_root` (recursively), keyed by the id its file name gives."""
    found = {}
    for directory, _, file_names in os.walk(video_root):
        for file_name in file_names:
            found[stem_to_id(os.path.splitext(file_name)[0])] = os.path.join(directory, file_name)
    return found


def _warn_missing_videos(dataset: str, listed: list[str], found: Mapping[str, str], video_root: str) -> None:
    missing = [video_id for video_id in listed if video_id not in found]
    if missing:
        logger.warning(
            f"{dataset}: {len(missing)} of {len(listed)} listed videos have no file under {video_root} and are "
            f"left out, as the official loader does (first: {', '.join(missing[:5])})"
        )


def read_activitynet(
    split: str, annotations_dir: str | os.PathLike, video_root: str | os.PathLike
) -> list[VideoTextRecord]:
    """ActivityNet Captions paragraph retrieval with the official rules.

    "train" reads `train_ids.json` + `train.json`, "val" reads `val_ids.json` + `val_1.json`. Each
    listed video (ids such as `v_QOlSCBRmfWY`) gives one record: its sentences joined with a space,
    over the whole video, [0, ceil(duration)] seconds. Video files are found anywhere under
    `video_root` by name (`v_<id>.<ext>`); `video_id` is the id without `v_`. Listed videos
    without a file are left out, with a warning. The official extractor for these videos is
    `frame_sampling="per_second"` (pass it to `HBIDataCollator`).
    """
    files = {"train": ("train_ids.json", "train.json"), "val": ("val_ids.json", "val_1.json")}
    if split not in files:
        raise ValueError(f"ActivityNet splits are 'train' and 'val', not {split!r}")
    annotations_dir, video_root = os.fspath(annotations_dir), os.fspath(video_root)
    ids_file, captions_file = files[split]
    listed = list(dict.fromkeys(_read_json(os.path.join(annotations_dir, ids_file))))
    captions = _read_json(os.path.join(annotations_dir, captions_file))
    # The official loader drops the first two characters of a file name ("v_") to get the id.
    videos = _video_files_by_stem(video_root, lambda stem: stem[2:])
    listed = [key for key in listed if key in captions]
    _warn_missing_videos("ActivityNet", [key[2:] for key in listed], videos, video_root)
    return [
        VideoTextRecord(
            video=videos[key[2:]],
            caption=" ".join(captions[key]["sentences"]),
            video_id=key[2:],
            start=0,
            end=math.ceil(float(captions[key]["duration"])),
        )
        for key in listed
        if key[2:] in videos
    ]


# DiDeMo clips were annotated over at most 30 s; the official loader reads [0, 31] s of every video.
DIDEMO_END_SECONDS = 31


def read_didemo(split: str, annotations_dir: str | os.PathLike, video_root: str | os.PathLike) -> list[VideoTextRecord]:
    """DiDeMo paragraph retrieval with the official rules.

    Reads `<split>_list.txt` (video names) and `<split>_data.json` ("train", "val" or "test").
    Each listed video with descriptions gives one record: its descriptions joined with a space in
    file order, over [0, 31] s. Video files are found anywhere under `video_root` by name without
    extension. Listed videos without a file are left out, with a warning. The official extractor
    for these videos is `frame_sampling="per_second"` (pass it to `HBIDataCollator`).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"DiDeMo splits are 'train', 'val' and 'test', not {split!r}")
    annotations_dir, video_root = os.fspath(annotations_dir), os.fspath(video_root)
    with open(os.path.join(annotations_dir, f"{split}_list.txt"), encoding="utf-8") as handle:
        listed = {line.strip() for line in handle if line.strip()}
    descriptions: dict[str, list[str]] = {}
    for item in _read_json(os.path.join(annotations_dir, f"{split}_data.json")):
        if item["video"] in listed:
            descriptions.setdefault(item["video"], []).append(item["description"])
    videos = _video_files_by_stem(video_root, lambda stem: stem)
    _warn_missing_videos("DiDeMo", list(descriptions), videos, video_root)
    return [
        VideoTextRecord(
            video=videos[video_id], caption=" ".join(texts), video_id=video_id, start=0, end=DIDEMO_END_SECONDS
        )
        for video_id, texts in descriptions.items()
        if video_id in videos
    ]


def read_msrvtt_qa(
    annotation_file: str | os.PathLike, video_root: str | os.PathLike, answer_vocabulary: Iterable[str] | None = None
) -> list[VideoTextRecord]:
    """MSRVTT-QA: one record per line of the jsonl (`video_id`, `question`, `answer`), video
    `<video_root>/<video_id>.mp4`. With `answer_vocabulary` (the keys of the official
    `train_ans2label.json`), only questions whose answer it holds are kept, as the official test
    loader does."""
    vocabulary = None if answer_vocabulary is None else set(answer_vocabulary)
    records = []
    with open(annotation_file, encoding="utf-8") as handle:
        for line in filter(str.strip, handle):
            item = json.loads(line)
            if vocabulary is not None and item["answer"] not in vocabulary:
                continue
            records.append(
                VideoTextRecord(
                    video=os.path.join(os.fspath(video_root), f"{item['video_id']}.mp4"),
                    caption=item["question"],
                    video_id=item["video_id"],
                    question=item["question"],
                    answer=str(item["answer"]),
                )
            )
    return records


# --------------------------------------------------------------------------------------------
# datasets


def _record_features(video_is_bytes: bool):
    from datasets import Features, Value

    return Features(
        {
            "video": Value("binary" if video_is_bytes else "string"),
            "caption": Value("string"),
            "video_id": Value("string"),
            "start": Value("float64"),
            "end": Value("float64"),
            "question": Value("string"),
            "answer": Value("string"),
        }
    )


def _rows_of_records(records: list[VideoTextRecord]) -> Iterator[dict]:
    yield from (asdict(record) for record in records)


def _rows_of_annotations(annotation_file: str, video_root: str | None) -> Iterator[dict]:
    yield from (asdict(record) for record in iter_annotations(annotation_file, video_root))


def _rows_of_shards(shards: list[str]) -> Iterator[dict]:
    yield from (asdict(record) for record in iter_webdataset(shards))


def _is_annotation_file(source: str) -> bool:
    return source.endswith((".jsonl", ".json", ".csv"))


def _is_webdataset(source: str) -> bool:
    if os.path.isdir(source):
        return bool(glob(os.path.join(source, "*.tar*")))
    return ".tar" in os.path.basename(source)


def _records_from_hub_batch(batch: dict[str, list], video_root: str | None) -> dict[str, list]:
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    locator = _VideoLocator(video_root)
    records = [record for row in rows for record in _records_from_row(row, locator)]
    return {field.name: [getattr(record, field.name) for record in records] for field in fields(VideoTextRecord)}


def _load_hub_dataset(name: str, split: str, streaming: bool, video_root: str | None):
    """A hub (or local folder) dataset with the generic columns, mapped to record columns."""
    from datasets import Video, load_dataset

    dataset = load_dataset(name, split=split, streaming=streaming)
    if dataset.features is not None and isinstance(dataset.features.get("video"), Video):
        # Keep the encoded video: decoding is the collator's (and needs no torchcodec).
        dataset = dataset.cast_column("video", Video(decode=False))
    return dataset.map(
        _records_from_hub_batch,
        batched=True,
        # Rows with several captions become several records, so the input columns must go.
        remove_columns=dataset.column_names,
        fn_kwargs={"video_root": video_root},
    )


def load_video_text_dataset(
    source,
    *,
    video_root: str | os.PathLike | None = None,
    streaming: bool = False,
    split: str = "train",
):
    """A `datasets.Dataset` (or `IterableDataset` with `streaming=True`) of record rows: `video`
    (path or bytes), `caption`, `video_id`, `start`, `end`, `question`, `answer`.

    `source` is one of:
    - `VideoTextRecord`s (e.g. from `read_msrvtt`);
    - a generic annotation file (.jsonl, .json or .csv, see `iter_annotations`), with `video_root`;
    - webdataset tar shards: a .tar path, a glob pattern, a folder of shards, or a list of paths;
    - otherwise a hub dataset name (or local dataset folder) with the generic columns, loaded with
      `datasets.load_dataset(source, split=split, streaming=streaming)`. Where its `video` column
      is a `datasets.Video` feature, the in-memory dataset keeps it as `{"path", "bytes"}` cells
      while streamed rows hold the path or bytes; the collator and the helpers take both.

    Streamed datasets read their files lazily: tar shards (and a list of records) are shards of
    the IterableDataset, so DataLoader workers and `split_dataset_by_node` divide them.
    """
    # datasets is imported where it is used, so that the readers and the collator work without it.
    from datasets import Dataset, IterableDataset

    video_root = None if video_root is None else os.fspath(video_root)
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        if _is_annotation_file(source):
            generator, video_is_bytes = _rows_of_annotations, False
            gen_kwargs = {"annotation_file": source, "video_root": video_root}
        elif _is_webdataset(source):
            generator, gen_kwargs, video_is_bytes = _rows_of_shards, {"shards": _shard_paths(source)}, True
        else:
            return _load_hub_dataset(source, split, streaming, video_root)
    else:
        items = list(source)
        if not items:
            raise ValueError("no records or shards to build a dataset from")
        if all(isinstance(item, (str, os.PathLike)) for item in items):
            generator, gen_kwargs, video_is_bytes = _rows_of_shards, {"shards": _shard_paths(items)}, True
        else:
            records = [as_record(item) for item in items]
            generator, gen_kwargs = _rows_of_records, {"records": records}
            video_is_bytes = not isinstance(records[0].video, str)

    features = _record_features(video_is_bytes)
    if streaming:
        return IterableDataset.from_generator(generator, features=features, gen_kwargs=gen_kwargs)
    return Dataset.from_list(list(generator(**gen_kwargs)), features=features)


# --------------------------------------------------------------------------------------------
# Evaluation helpers


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


# --------------------------------------------------------------------------------------------
# Collation with bad-video accounting


class EmptyBatchError(RuntimeError):
    """Every video of a batch failed to decode. The failures are already counted and logged; a
    training or evaluation loop catches this and moves on to the next batch (a DataLoader
    iterator stays usable after it)."""


class TooManyBadVideosError(RuntimeError):
    """The share of videos that failed to decode passed the collator's `max_bad_fraction`."""


@dataclass
class BadItem:
    name: str
    reason: str


class BadItemCounter:
    """How many videos were tried and which failed, with the limit on the failed share.

    The limit is only checked once `min_items` videos were tried, so that a bad file early in a
    long run does not stop it: 1 failure in the first 3 videos is not a corpus problem.
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_items: int = 50):
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be within [0, 1], got {max_bad_fraction}")
        self.max_bad_fraction = max_bad_fraction
        self.min_items = min_items
        self.seen_items = 0
        self.bad_items: list[BadItem] = []

    def record_success(self) -> None:
        self.seen_items += 1

    def record_failure(self, name: str, reason: str) -> None:
        self.seen_items += 1
        self.bad_items.append(BadItem(name, reason))
        logger.warning(f"skipping video {name}: {reason} ({len(self.bad_items)} of {self.seen_items} skipped so far)")

    @property
    def bad_fraction(self) -> float:
        return len(self.bad_items) / self.seen_items if self.seen_items else 0.0

    def check(self) -> None:
        """Raise `TooManyBadVideosError` when the failed share is over the limit."""
        if self.seen_items >= self.min_items and self.bad_fraction > self.max_bad_fraction:
            raise TooManyBadVideosError(
                f"{self.report()}; that is {self.bad_fraction:.1%} of the videos, over max_bad_fraction="
                f"{self.max_bad_fraction:.1%}: fix or remove them from the corpus, or raise max_bad_fraction"
            )

    def report(self, max_listed: int = 10) -> str:
        """One line for the end of training or evaluation, e.g.
        "3 of 1200 videos skipped: a.mp4 (no such file), ..."."""
        summary = f"{len(self.bad_items)} of {self.seen_items} videos skipped"
        if not self.bad_items:
            return summary
        listed = ", ".join(f"{item.name} ({item.reason})" for item in self.bad_items[:max_listed])
        more = len(self.bad_items) - max_listed
        return f"{summary}: {listed}" + (f" and {more} more" if more > 0 else "")


def stable_video_index(clip_key: tuple) -> int:
    """A 63-bit id of a clip that every process computes alike (Python's `hash` is salted per
    process): the model gathers `video_index` across processes, so equal values must mean the
    same clip there too. Collisions are 1 in 2**63 per pair."""
    digest = hashlib.blake2b(repr(clip_key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class HBIDataCollator:
    """Batches records for `HBIModel`: `input_ids`, `attention_mask`, `pixel_values_videos`,
    `video_mask` (row i is record i's caption and video) and `video_index` (`[batch]` long, equal
    for records of the same clip, in this batch and on every process: see `stable_video_index`).

    Each distinct clip of a batch is decoded once, however many captions it has. A video that
    fails to decode (`VideoDecodingError`: missing, empty, corrupt, truncated...) is logged with
    its name, counted in `counter`, and its records are left out, so the batch shrinks instead of
    the run crashing. Only when every video of a batch fails is `EmptyBatchError` raised, and
    when the failed share passes `max_bad_fraction` (after `min_items` videos),
    `TooManyBadVideosError`.

    With DataLoader workers each worker collates with its own copy: its failures are logged and
    its share limited there, and this object's `counter` only sees batches collated in this process.

    Args:
        processor ([`HBIProcessor`]): tokenizer and video processor.
        do_augment (`bool`, defaults to `False`): the official training augmentation.
        max_bad_fraction (`float`, defaults to 0.05): the largest tolerated share of bad videos.
        min_items (`int`, defaults to 50): videos tried before the share is checked.
        answer_labels (`Mapping[str, int]`, *optional*): for question answering, adds `labels`
            (`[batch]` long), the answer's label or -1 for an answer outside it, as officially.
        cache_videos (`bool`, defaults to `False`): keep every clip's processed frames in memory so
            that later epochs do not decode it again (for small corpora; not with augmentation,
            whose draws must change from epoch to epoch).
        video_options: passed to the video processor on every call (e.g. `frame_sampling=
            "per_second"` for ActivityNet / DiDeMo, `max_frames=64`).
    """

    def __init__(
        self,
        processor,
        *,
        do_augment: bool = False,
        max_bad_fraction: float = 0.05,
        min_items: int = 50,
        answer_labels: Mapping[str, int] | None = None,
        cache_videos: bool = False,
        **video_options,
    ):
        if cache_videos and do_augment:
            raise ValueError("cache_videos would freeze the augmentation of each clip: use one or the other")
        self.processor = processor
        self.video_cache = {} if cache_videos else None
        self.do_augment = do_augment
        self.answer_labels = answer_labels
        self.video_options = video_options
        self.counter = BadItemCounter(max_bad_fraction, min_items)

    @property
    def bad_items(self) -> list[BadItem]:
        return self.counter.bad_items

    @property
    def seen_items(self) -> int:
        return self.counter.seen_items

    def __call__(self, items: list[VideoTextRecord | Mapping]) -> dict[str, torch.Tensor]:
        records = [as_record(item) for item in items]
        wanted = {record.clip_key: record for record in records}
        clips = self._decode_clips(wanted)
        records = [record for record in records if record.clip_key in clips]
        if not records:
            raise EmptyBatchError(f"all {len(wanted)} videos of the batch failed to decode ({self.counter.report()})")
        text = self.processor(text=[record.caption for record in records], return_tensors="pt")
        batch = {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "pixel_values_videos": torch.cat([clips[record.clip_key]["pixel_values_videos"] for record in records]),
            "video_mask": torch.cat([clips[record.clip_key]["video_mask"] for record in records]),
            "video_index": torch.tensor([stable_video_index(record.clip_key) for record in records]),
        }
        if self.answer_labels is not None:
            batch["labels"] = torch.tensor([self.answer_labels.get(record.answer, -1) for record in records])
        return batch

    def collate_videos(self, clips: list[VideoClip]) -> dict[str, torch.Tensor]:
        """Videos only, for evaluation (e.g. batches of `unique_videos(records)`): the
        `pixel_values_videos` and `video_mask` of the clips that decoded, and `clip_positions`, the
        positions in `clips` they come from (failures are counted and skipped as in `__call__`)."""
        keys = [clip.clip_key for clip in clips]
        decoded = self._decode_clips(dict(zip(keys, clips)))
        positions = [position for position, key in enumerate(keys) if key in decoded]
        if not positions:
            raise EmptyBatchError(f"all {len(clips)} videos of the batch failed to decode ({self.counter.report()})")
        return {
            "pixel_values_videos": torch.cat([decoded[keys[p]]["pixel_values_videos"] for p in positions]),
            "video_mask": torch.cat([decoded[keys[p]]["video_mask"] for p in positions]),
            "clip_positions": torch.tensor(positions),
        }

    def _decode_clips(self, clips: Mapping[tuple, VideoTextRecord | VideoClip]) -> dict[tuple, dict]:
        """The processed tensors of each clip that decodes, by clip key; failures are counted."""
        decoded = {}
        for key, clip in clips.items():
            if self.video_cache is not None and key in self.video_cache:
                # A clip that failed once is left out again without being counted twice.
                if self.video_cache[key] is not None:
                    decoded[key] = self.video_cache[key]
                continue
            try:
                decoded[key] = self.processor.video_processor(
                    [clip.video],
                    video_segments=[(clip.start, clip.end)],
                    do_augment=self.do_augment,
                    return_tensors="pt",
                    **self.video_options,
                )
            except VideoDecodingError as error:
                self.counter.record_failure(clip.name, error.reason)
                if self.video_cache is not None:
                    self.video_cache[key] = None
            else:
                self.counter.record_success()
                if self.video_cache is not None:
                    self.video_cache[key] = decoded[key]
        self.counter.check()
        return decoded
