"""Corpora: annotation readers (generic files, webdataset shards, hub datasets, the official
layouts), the collator with bad-video accounting, the synthetic corpus and the offline CLIP
tokenizer builder. Builds on `hbi_transformers.models` only."""

from .clip_vocabulary import build_clip_tokenizer, clip_vocabulary, download_open_clip_bpe, extract_bpe_from_wheel
from .corpus import (
    VIDEO_EXTENSIONS,
    BadItem,
    BadItemCounter,
    EmptyBatchError,
    HBIDataCollator,
    TooManyBadVideosError,
    VideoClip,
    VideoTextRecord,
    annotation_rows,
    as_record,
    iter_annotations,
    iter_webdataset,
    load_video_text_dataset,
    read_activitynet,
    read_didemo,
    read_msrvtt,
    read_msrvtt_qa,
    stable_video_index,
    text_to_video_index,
    unique_videos,
)
from .synthetic_corpus import make_synthetic_corpus

__all__ = [
    "VIDEO_EXTENSIONS",
    "BadItem",
    "BadItemCounter",
    "EmptyBatchError",
    "HBIDataCollator",
    "TooManyBadVideosError",
    "VideoClip",
    "VideoTextRecord",
    "annotation_rows",
    "as_record",
    "build_clip_tokenizer",
    "clip_vocabulary",
    "download_open_clip_bpe",
    "extract_bpe_from_wheel",
    "iter_annotations",
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
