"""Corpora: annotation readers (generic files, webdataset shards, hub datasets, the official
layouts), prepared-frame corpora (`prepare_corpus`), the choice of workers and threads, the collator with bad-video accounting, the synthetic corpus and the offline CLIP
tokenizer builder. Builds on `hbi_transformers.models` only."""

from .annotations import AnnotationReport, annotation_rows, iter_annotations, iter_rows_with_records
from .bad_items import BadItem, BadItemCounter, TooManyBadVideosError, VideoReport
from .clip_vocabulary import build_clip_tokenizer, clip_vocabulary, download_open_clip_bpe, extract_bpe_from_wheel
from .collator import VIDEO_REPORT_KEY, EmptyBatchError, HBIDataCollator, is_empty_batch, stable_video_index
from .loading import load_video_text_dataset
from .parallelism import Parallelism, apply_parallelism, available_cores, choose_parallelism, free_cores_for_workers
from .prepared import PreparedCorpusError, PreparedSettings, is_prepared_corpus, load_prepared_records
from .preparing import prepare_corpus
from .official import read_activitynet, read_didemo, read_msrvtt, read_msrvtt_qa
from .records import VIDEO_EXTENSIONS, VideoClip, VideoTextRecord, as_record, text_to_video_index, unique_videos
from .synthetic import make_synthetic_corpus
from .webdataset import iter_webdataset

__all__ = [
    "Parallelism",
    "PreparedCorpusError",
    "PreparedSettings",
    "apply_parallelism",
    "available_cores",
    "choose_parallelism",
    "free_cores_for_workers",
    "is_prepared_corpus",
    "load_prepared_records",
    "prepare_corpus",
    "AnnotationReport",
    "VIDEO_EXTENSIONS",
    "VIDEO_REPORT_KEY",
    "BadItem",
    "BadItemCounter",
    "EmptyBatchError",
    "HBIDataCollator",
    "TooManyBadVideosError",
    "VideoClip",
    "VideoReport",
    "VideoTextRecord",
    "annotation_rows",
    "as_record",
    "build_clip_tokenizer",
    "clip_vocabulary",
    "download_open_clip_bpe",
    "extract_bpe_from_wheel",
    "is_empty_batch",
    "iter_annotations",
    "iter_rows_with_records",
    "iter_webdataset",
    "load_video_text_dataset",
    "make_synthetic_corpus",
    "read_activitynet",
    "read_didemo",
    "read_msrvtt",
    "read_msrvtt_qa",
    "stable_video_index",
    "text_to_video_index",
    "unique_videos",
]
