"""`load_video_text_dataset`: records, a generic annotation file, webdataset shards or a hub
dataset as a `datasets` Dataset, or an IterableDataset with `streaming=True`. Videos stay paths
or encoded bytes there: the collator decodes them per batch."""

import os
from collections.abc import Iterator
from dataclasses import asdict, fields
from glob import glob

from .annotations import AnnotationReport, _records_from_row, _VideoLocator, iter_annotations
from .prepared import is_prepared_corpus, load_prepared_records
from .records import VideoTextRecord, as_record
from .webdataset import _shard_paths, iter_webdataset


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


def _rows_of_annotations(
    annotation_file: str, video_root: str | None, report: AnnotationReport | None = None
) -> Iterator[dict]:
    yield from (asdict(record) for record in iter_annotations(annotation_file, video_root, report=report))


def _rows_of_shards(shards: list[str], report: AnnotationReport | None = None) -> Iterator[dict]:
    yield from (asdict(record) for record in iter_webdataset(shards, report=report))


def _rows_of_prepared_corpus(folder: str) -> Iterator[dict]:
    yield from load_prepared_records(folder)


def _is_annotation_file(source: str) -> bool:
    return source.endswith((".jsonl", ".json", ".csv"))


def _is_webdataset(source: str) -> bool:
    if os.path.isdir(source):
        return bool(glob(os.path.join(source, "*.tar*")))
    return ".tar" in os.path.basename(source)


def _records_from_hub_batch(
    batch: dict[str, list], indices: list[int], video_root: str | None, source: str
) -> dict[str, list]:
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    locator = _VideoLocator(video_root)
    records = [
        record
        for index, row in zip(indices, rows)
        for record in _records_from_row(row, locator, f"{source} row {index}")
    ]
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
        with_indices=True,
        # Rows with several captions become several records, so the input columns must go.
        remove_columns=dataset.column_names,
        fn_kwargs={"video_root": video_root, "source": f"{name} ({split})"},
    )


def load_video_text_dataset(
    source,
    *,
    video_root: str | os.PathLike | None = None,
    streaming: bool = False,
    split: str = "train",
    annotation_report: AnnotationReport | None = None,
):
    """A `datasets.Dataset` (or `IterableDataset` with `streaming=True`) of record rows: `video`
    (path or bytes), `caption`, `video_id`, `start`, `end`, `question`, `answer`.

    `source` is one of:
    - `VideoTextRecord`s (e.g. from `read_msrvtt`);
    - a generic annotation file (.jsonl, .json or .csv, see `iter_annotations`), with `video_root`;
    - webdataset tar shards: a .tar path, a glob pattern, a folder of shards, or a list of paths;
    - a prepared-frame corpus folder (written by `prepare_corpus` / `hbi-prepare`): its records,
      whose `video` names a prepared clip that the collator reads instead of decoding;
    - otherwise a hub dataset name (or local dataset folder) with the generic columns, loaded with
      `datasets.load_dataset(source, split=split, streaming=streaming)`. Where its `video` column
      is a `datasets.Video` feature, the in-memory dataset keeps it as `{"path", "bytes"}` cells
      while streamed rows hold the path or bytes; the collator and the helpers take both.

    Streamed datasets read their files lazily: tar shards (and a list of records) are shards of
    the IterableDataset, so DataLoader workers and `split_dataset_by_node` divide them. A streamed
    annotation file is still read through once here, so that a malformed one is rejected now
    rather than mid-training.

    Annotations are checked as `iter_annotations` and `iter_webdataset` describe: a malformed file
    raises a ValueError naming the file and line, a bad caption is skipped, logged and counted in
    `annotation_report` where one is passed (filled here, except for streamed shards, which log
    what they skip as they are read).
    """
    # datasets is imported where it is used, so that the readers and the collator work without it.
    from datasets import Dataset, IterableDataset

    video_root = None if video_root is None else os.fspath(video_root)
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        if is_prepared_corpus(source):
            generator, video_is_bytes = _rows_of_prepared_corpus, False
            gen_kwargs = {"folder": source}
        elif _is_annotation_file(source):
            generator, video_is_bytes = _rows_of_annotations, False
            gen_kwargs = {"annotation_file": source, "video_root": video_root, "report": annotation_report}
        elif _is_webdataset(source):
            generator, video_is_bytes = _rows_of_shards, True
            gen_kwargs = {"shards": _shard_paths(source), "report": annotation_report}
        else:
            return _load_hub_dataset(source, split, streaming, video_root)
    else:
        items = list(source)
        if not items:
            raise ValueError("no records or shards to build a dataset from")
        if all(isinstance(item, (str, os.PathLike)) for item in items):
            generator, video_is_bytes = _rows_of_shards, True
            gen_kwargs = {"shards": _shard_paths(items), "report": annotation_report}
        else:
            records = [as_record(item) for item in items]
            generator, gen_kwargs = _rows_of_records, {"records": records}
            video_is_bytes = not isinstance(records[0].video, str)

    features = _record_features(video_is_bytes)
    if streaming:
        if generator is _rows_of_annotations:
            # Read through once now, so that a malformed file fails here rather than mid-training.
            for _ in iter_annotations(source, video_root, report=annotation_report):
                pass
        # A stream is read later, each epoch, possibly in other processes: it logs what it skips.
        gen_kwargs.pop("report", None)
        return IterableDataset.from_generator(generator, features=features, gen_kwargs=gen_kwargs)
    return Dataset.from_list(list(generator(**gen_kwargs)), features=features)
