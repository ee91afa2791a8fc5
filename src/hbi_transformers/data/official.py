"""The official annotation layouts, read with the official split rules: MSR-VTT retrieval,
ActivityNet Captions and DiDeMo (as paragraph retrieval), and MSRVTT-QA."""

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping

from transformers.utils import logging

from .records import VideoTextRecord

logger = logging.get_logger(__name__)


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
