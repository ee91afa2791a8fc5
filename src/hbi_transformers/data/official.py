"""The official annotation layouts, read with the official split rules: MSR-VTT retrieval,
ActivityNet Captions and DiDeMo (as paragraph retrieval), and MSRVTT-QA."""

import math
import os
from collections.abc import Iterable, Mapping

from transformers.utils import logging

from .annotations import (
    AnnotationReport,
    _caption,
    _caption_list,
    _csv_rows,
    _jsonl_rows,
    _log_summary,
    _read_json,
    _report_mark,
    _text_lines,
)
from .records import VideoTextRecord

logger = logging.get_logger(__name__)

# The official readers check their files as the generic ones do (see `iter_annotations`): a file
# that is not UTF-8 or not well-formed raises naming the file and line, a bad caption (empty,
# blank, not text) is skipped, logged and counted in `report`. A location inside a JSON document
# is its key path, as the official JSON files are written on a single line.


def read_msrvtt(
    split: str,
    annotations_dir: str | os.PathLike,
    video_root: str | os.PathLike,
    *,
    report: AnnotationReport | None = None,
    train_split: str = "9k",
) -> list[VideoTextRecord]:
    """MSR-VTT retrieval with the official splits.

    "train": every caption in `MSRVTT_data.json` of the 9k videos listed in `MSRVTT_train.9k.csv`
    (about 180k pairs), in the JSON's order; with `train_split="7k"`, of the videos of
    `MSRVTT_train.7k.csv`. "test" (or "val", the same, as officially): the 1k
    pairs of `MSRVTT_JSFUSION_test.csv`. Videos are `<video_root>/<video_id>.mp4`.
    """
    annotations_dir, video_root = os.fspath(annotations_dir), os.fspath(video_root)
    report = AnnotationReport() if report is None else report

    def record(video_id: str, caption: str) -> VideoTextRecord:
        return VideoTextRecord(video=os.path.join(video_root, f"{video_id}.mp4"), caption=caption, video_id=video_id)

    if split == "train":
        if train_split not in ("9k", "7k"):
            raise ValueError(f"MSR-VTT training splits are '9k' and '7k', not {train_split!r}")
        train_list = os.path.join(annotations_dir, f"MSRVTT_train.{train_split}.csv")
        train_ids = {row["video_id"] for _, row in _csv_rows(train_list)}
        path = os.path.join(annotations_dir, "MSRVTT_data.json")
        start, records = _report_mark(report), []
        for index, item in enumerate(_read_json(path)["sentences"]):
            if item["video_id"] in train_ids:
                caption = _caption(item["caption"], f"{path} (sentences[{index}])", report)
                records += [] if caption is None else [record(item["video_id"], caption)]
        _log_summary(path, report, start)
        return records
    if split in ("test", "val"):
        path = os.path.join(annotations_dir, "MSRVTT_JSFUSION_test.csv")
        start, records = _report_mark(report), []
        for location, row in _csv_rows(path):
            caption = _caption(row["sentence"], location, report)
            records += [] if caption is None else [record(row["video_id"], caption)]
        _log_summary(path, report, start)
        return records
    raise ValueError(f"MSR-VTT splits are 'train', 'val' and 'test', not {split!r}")


def _paragraph(sentences, location: str, report: AnnotationReport) -> str | None:
    """A video's good sentences joined with a space (the bad ones skipped); None when none is."""
    return " ".join(_caption_list(sentences, location, report)) or None


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
    split: str,
    annotations_dir: str | os.PathLike,
    video_root: str | os.PathLike,
    *,
    report: AnnotationReport | None = None,
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
    report = AnnotationReport() if report is None else report
    ids_file, captions_file = files[split]
    listed = list(dict.fromkeys(_read_json(os.path.join(annotations_dir, ids_file))))
    captions_path = os.path.join(annotations_dir, captions_file)
    captions = _read_json(captions_path)
    # The official loader drops the first two characters of a file name ("v_") to get the id.
    videos = _video_files_by_stem(video_root, lambda stem: stem[2:])
    listed = [key for key in listed if key in captions]
    _warn_missing_videos("ActivityNet", [key[2:] for key in listed], videos, video_root)
    start, records = _report_mark(report), []
    for key in listed:
        if key[2:] in videos:
            paragraph = _paragraph(captions[key]["sentences"], f"{captions_path} ({key}.sentences)", report)
            if paragraph is not None:
                end = math.ceil(float(captions[key]["duration"]))
                records.append(VideoTextRecord(videos[key[2:]], paragraph, key[2:], start=0, end=end))
    _log_summary(captions_path, report, start)
    return records


# DiDeMo clips were annotated over at most 30 s; the official loader reads [0, 31] s of every video.
DIDEMO_END_SECONDS = 31


def read_didemo(
    split: str,
    annotations_dir: str | os.PathLike,
    video_root: str | os.PathLike,
    *,
    report: AnnotationReport | None = None,
) -> list[VideoTextRecord]:
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
    report = AnnotationReport() if report is None else report
    listed = {line.strip() for _, line in _text_lines(os.path.join(annotations_dir, f"{split}_list.txt"))} - {""}
    path = os.path.join(annotations_dir, f"{split}_data.json")
    start, descriptions = _report_mark(report), {}
    for index, item in enumerate(_read_json(path)):
        if item["video"] in listed:
            description = _caption(item["description"], f"{path} ([{index}].description)", report)
            if description is not None:
                descriptions.setdefault(item["video"], []).append(description)
    _log_summary(path, report, start)
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
    annotation_file: str | os.PathLike,
    video_root: str | os.PathLike,
    answer_vocabulary: Iterable[str] | None = None,
    *,
    report: AnnotationReport | None = None,
) -> list[VideoTextRecord]:
    """MSRVTT-QA: one record per line of the jsonl (`video_id`, `question`, `answer`), video
    `<video_root>/<video_id>.mp4`. With `answer_vocabulary` (the keys of the official
    `train_ans2label.json`), only questions whose answer it holds are kept, as the official test
    loader does."""
    vocabulary = None if answer_vocabulary is None else set(answer_vocabulary)
    path, report = os.fspath(annotation_file), AnnotationReport() if report is None else report
    start, records = _report_mark(report), []
    for location, item in _jsonl_rows(path):
        if vocabulary is not None and item["answer"] not in vocabulary:
            continue
        question = _caption(item["question"], location, report, "question")
        if question is not None:
            records.append(
                VideoTextRecord(
                    video=os.path.join(os.fspath(video_root), f"{item['video_id']}.mp4"),
                    caption=question,
                    video_id=item["video_id"],
                    question=question,
                    answer=str(item["answer"]),
                )
            )
    _log_summary(path, report, start)
    return records
