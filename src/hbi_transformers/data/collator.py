"""`HBIDataCollator`: batches of records for `HBIModel`, decoding each clip once and skipping (and
counting) the videos that fail to decode."""

import hashlib
from collections.abc import Mapping

import torch

from ..models.hbi.video_io import VideoDecodingError
from .bad_items import BadItem, BadItemCounter, VideoReport
from .prepared import PreparedSettings, check_settings, is_prepared_reference, read_prepared_clip
from .records import VideoClip, VideoTextRecord, as_record

# Every batch carries what it tried under this key, so that the process that trains counts the
# failures of every DataLoader worker (whose collator is a copy) once.
VIDEO_REPORT_KEY = "video_report"


class EmptyBatchError(RuntimeError):
    """Every video of an evaluation batch (`collate_videos`) failed to decode. The failures are
    already counted and logged; the evaluation loop moves on to the next batch."""


def is_empty_batch(batch: Mapping) -> bool:
    """Whether a training batch lost every pair to bad videos: it then holds no model input, only
    its report, and the training step skips it."""
    return "input_ids" not in batch


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
    its name and its records are left out, so the batch shrinks instead of the run crashing. No
    exception leaves `__call__`: a batch whose every video fails holds only its report
    (`is_empty_batch`), and every batch carries a `VideoReport` under `VIDEO_REPORT_KEY` (the
    clips it tried and those that failed), from which the trainer counts each clip once per run
    across DataLoader workers and processes and enforces `max_bad_fraction` (after `min_items`
    clips) on the whole run. `collate_videos` (evaluation, in the calling process) counts in
    `counter` and enforces the limit itself.

    Args:
        processor ([`HBIProcessor`]): tokenizer and video processor (an [`HBIVideoProcessor`] alone is
            enough for `collate_videos`).
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
        # An HBIVideoProcessor alone serves `collate_videos` (videos only, e.g. indexing).
        self.video_processor = getattr(processor, "video_processor", processor)
        self.video_cache = {} if cache_videos else None
        self.do_augment = do_augment
        self.answer_labels = answer_labels
        self.video_options = video_options
        self.counter = BadItemCounter(max_bad_fraction, min_items)
        self._prepared_settings = None

    @property
    def bad_items(self) -> list[BadItem]:
        return self.counter.bad_items

    @property
    def seen_items(self) -> int:
        return self.counter.seen_items

    def __call__(self, items: list[VideoTextRecord | Mapping]) -> dict:
        records = [as_record(item) for item in items]
        wanted = {record.clip_key: record for record in records}
        clips, failures = self._decode_clips(wanted)
        clip_ids = {key: stable_video_index(key) for key in wanted}
        report = VideoReport(
            tried=list(clip_ids.values()),
            failed=[(clip_ids[key], wanted[key].name, reason) for key, reason in failures.items()],
        )
        records = [record for record in records if record.clip_key in clips]
        if not records:
            # A tensor first: data loaders find a batch's size from its first entry.
            return {"num_pairs": torch.zeros(0, dtype=torch.long), VIDEO_REPORT_KEY: report}
        text = self.processor(text=[record.caption for record in records], return_tensors="pt")
        batch = {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "pixel_values_videos": torch.cat([clips[record.clip_key]["pixel_values_videos"] for record in records]),
            "video_mask": torch.cat([clips[record.clip_key]["video_mask"] for record in records]),
            "video_index": torch.tensor([clip_ids[record.clip_key] for record in records]),
            VIDEO_REPORT_KEY: report,
        }
        if self.answer_labels is not None:
            batch["labels"] = torch.tensor([self.answer_labels.get(record.answer, -1) for record in records])
        return batch

    def collate_videos(self, clips: list[VideoClip], return_metadata: bool = False) -> dict[str, torch.Tensor]:
        """Videos only, for evaluation (e.g. batches of `unique_videos(records)`): the
        `pixel_values_videos` and `video_mask` of the clips that decoded, and `clip_positions`, the
        positions in `clips` they come from. Failures are counted in `counter`, which enforces
        `max_bad_fraction`; `EmptyBatchError` when every clip fails. With `return_metadata`, also
        `video_metadata`: each decoded clip's sampled `timestamps` and the video's `duration`
        (seconds)."""
        batch, failures = self.decode_videos(clips, return_metadata)
        self.count_videos(clips, failures)
        if batch is None:
            raise EmptyBatchError(f"all {len(clips)} videos of the batch failed to decode ({self.counter.report()})")
        return batch

    def decode_videos(self, clips: list[VideoClip], return_metadata: bool = False) -> tuple[dict | None, dict]:
        """`collate_videos` without the counting, for a DataLoader worker (whose counter is a
        copy): the batch (None when every clip failed) and the failure reason of each clip that
        failed, by clip key, for `count_videos` in the process that keeps the count."""
        keys = [clip.clip_key for clip in clips]
        decoded, failures = self._decode_clips(dict(zip(keys, clips)))
        positions = [position for position, key in enumerate(keys) if key in decoded]
        if not positions:
            return None, failures
        batch = {
            "pixel_values_videos": torch.cat([decoded[keys[p]]["pixel_values_videos"] for p in positions]),
            "video_mask": torch.cat([decoded[keys[p]]["video_mask"] for p in positions]),
            "clip_positions": torch.tensor(positions),
        }
        if return_metadata:
            batch["video_metadata"] = [decoded[keys[p]]["video_metadata"][0] for p in positions]
        return batch, failures

    def count_videos(self, clips: list[VideoClip], failures: Mapping[tuple, str]) -> None:
        """Counts `clips` (those in `failures` as failed) in `counter` and enforces its limit."""
        for clip in clips:
            key = clip.clip_key
            if key in failures:
                self.counter.record_failure(stable_video_index(key), clip.name, failures[key])
            else:
                self.counter.record_success(stable_video_index(key))
        self.counter.check()

    def _decode_clips(self, clips: Mapping[tuple, VideoTextRecord | VideoClip]) -> tuple[dict[tuple, dict], dict[tuple, str]]:
        """The processed tensors of each clip that decodes and the reason each other one failed,
        by clip key. A clip of a prepared corpus is read rather than decoded."""
        decoded, failures = {}, {}
        for key, clip in clips.items():
            if self.video_cache is not None and key in self.video_cache:
                cached = self.video_cache[key]
                if isinstance(cached, str):
                    failures[key] = cached
                else:
                    decoded[key] = cached
                continue
            try:
                if is_prepared_reference(clip.video):
                    decoded[key] = self._process_prepared(clip.video)
                else:
                    decoded[key] = self.video_processor(
                        [clip.video],
                        video_segments=[(clip.start, clip.end)],
                        do_augment=self.do_augment,
                        return_tensors="pt",
                        return_metadata=True,
                        **self.video_options,
                    )
            except VideoDecodingError as error:
                failures[key] = error.reason
            if self.video_cache is not None:
                # A failure is cached as its reason, so the clip is not decoded again either.
                self.video_cache[key] = decoded.get(key, failures.get(key))
        return decoded, failures

    def _process_prepared(self, reference: str) -> dict:
        """A prepared clip's frames through the video processor (its resize leaves them as they
        are; crop, augmentation and normalisation run as for a decoded video)."""
        frames, info, stored = read_prepared_clip(reference)
        if self._prepared_settings is None:
            self._prepared_settings = PreparedSettings.from_processor(self.video_processor, self.video_options)
        check_settings(reference, stored, self._prepared_settings)
        processed = self.video_processor([frames], do_augment=self.do_augment, return_tensors="pt", **self.video_options)
        processed["video_metadata"] = [info]
        return processed
