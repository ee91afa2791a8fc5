"""Encoding a corpus once: every distinct clip decoded and encoded once however many captions or
questions it has, in batches, with progress. Retrieval evaluation, question answering, Banzhaf
label writing and search indexing all encode through `encode_clips` / `encode_texts`; clips are
decoded in DataLoader workers while the model encodes the batches before."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ...data import HBIDataCollator, VideoClip, VideoTextRecord, free_cores_for_workers, text_to_video_index, unique_videos
from ...models.hbi.modeling_hbi import HBITextOutput, HBIVideoOutput
from .sharding import merge_from_all_processes, process_share

logger = logging.get_logger(__name__)


@dataclass
class EncodedClips:
    """Clips that decoded, encoded: row i of `videos` is clip `positions[i]` of the list given.
    `metadata` (when asked for) holds each row's sampled timestamps and video duration."""

    positions: list[int]
    videos: HBIVideoOutput
    metadata: list[dict] | None = None


@dataclass
class EncodedCorpus:
    """Every caption and every distinct clip of a list of records, each encoded once.

    `texts` row j is the caption of record `caption_records[j]`, whose clip is row
    `text_to_video[j]` of `videos`; captions whose clip failed to decode are left out (the
    collator has counted the failure). `clips` are the clips of `videos`' rows."""

    texts: HBITextOutput
    videos: HBIVideoOutput
    text_to_video: list[int]
    caption_records: list[int]
    clips: list[VideoClip]


def _device(model) -> torch.device:
    return next(model.parameters()).device


class _ClipBatches(torch.utils.data.Dataset):
    """Batches of clips decoded (not counted) by the collator: what DataLoader workers run."""

    def __init__(self, collator: HBIDataCollator, clips: Sequence[VideoClip], batch_size: int, with_metadata: bool):
        self.collator, self.clips, self.batch_size, self.with_metadata = collator, clips, batch_size, with_metadata

    def __len__(self) -> int:
        return -(-len(self.clips) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[int, dict | None, dict]:
        start = index * self.batch_size
        batch, failures = self.collator.decode_videos(list(self.clips[start : start + self.batch_size]), self.with_metadata)
        return start, batch, failures


def _as_produced(item):
    return item


@torch.no_grad()
def encode_clips(
    model,
    collator: HBIDataCollator,
    clips: Sequence[VideoClip],
    batch_size: int = 64,
    *,
    with_metadata: bool = False,
    progress: bool = True,
    description: str = "encoding videos",
    num_workers: int | None = None,
) -> Iterator[EncodedClips]:
    """Decodes and encodes `clips`, `batch_size` at a time, yielding each batch's encoded clips
    (on the model's device) as soon as it is ready. A clip that fails to decode is counted by the
    collator and missing from `positions`; a batch where every clip fails yields nothing.

    Clips are decoded (or read from a prepared corpus) in `num_workers` DataLoader worker
    processes while the model encodes the batches before (None: the cores torch's compute threads
    leave free, see `free_cores_for_workers`; 0: in this process). The counting stays here."""
    device = _device(model)
    batches = _ClipBatches(collator, clips, batch_size, with_metadata)
    workers = free_cores_for_workers() if num_workers is None else num_workers
    # A single batch leaves nothing to overlap with.
    workers = min(workers, len(batches)) if len(batches) > 1 else 0
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers, collate_fn=_as_produced)
    # An iterator, not the loader: tqdm.auto calls iter() on an iterable at once, which would start
    # a second set of workers.
    batches_in_order = tqdm(iter(loader), total=len(loader), desc=description, unit="batch", disable=not progress)
    for start, batch, failures in batches_in_order:
        batch_clips = list(clips[start : start + batch_size])
        collator.count_videos(batch_clips, failures)
        if batch is None:
            logger.warning(f"skipping a batch of videos: all {len(batch_clips)} failed to decode "
                           f"({collator.counter.report()})")
            continue
        videos = model.get_video_features(batch["pixel_values_videos"].to(device), batch["video_mask"].to(device))
        yield EncodedClips(
            positions=[start + position for position in batch["clip_positions"].tolist()],
            videos=videos,
            metadata=batch.get("video_metadata"),
        )


@torch.no_grad()
def encode_texts(
    model, processor, texts: Sequence[str], batch_size: int = 64, *, progress: bool = True,
    description: str = "encoding captions",
) -> Iterator[tuple[int, HBITextOutput]]:
    """`(start, text outputs)` for `texts[start : start + batch_size]`, batch by batch, on the
    model's device."""
    device = _device(model)
    for start in tqdm(range(0, len(texts), batch_size), desc=description, unit="batch", disable=not progress):
        tokens = processor(text=list(texts[start : start + batch_size]), return_tensors="pt")
        yield start, model.get_text_features(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))


def _stacked_rows(rows: dict, order: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([rows[key][0] for key in order]), torch.stack([rows[key][1] for key in order])


@torch.no_grad()
def encode_corpus(
    model,
    collator: HBIDataCollator,
    records: Sequence[VideoTextRecord],
    batch_size: int = 64,
    *,
    progress: bool = True,
    num_workers: int | None = None,
) -> EncodedCorpus:
    """Encodes every caption and every distinct clip of `records` once, decoding in `num_workers`
    DataLoader workers (see `encode_clips`). Under torch.distributed each process encodes its share
    and every process gets the whole corpus."""
    device = _device(model)
    clips = unique_videos(records)
    caption_clip = text_to_video_index(records)

    local_clips = process_share(list(range(len(clips))))
    video_rows = {}
    for encoded in encode_clips(model, collator, [clips[i] for i in local_clips], batch_size, progress=progress,
                                num_workers=num_workers):
        for row, position in enumerate(encoded.positions):
            video_rows[local_clips[position]] = (
                encoded.videos.video_embeds[row].cpu(),
                encoded.videos.video_mask[row].cpu(),
            )
    video_rows = merge_from_all_processes(video_rows)

    kept_clips = sorted(video_rows)
    row_of_clip = {clip: row for row, clip in enumerate(kept_clips)}
    caption_records = [index for index, clip in enumerate(caption_clip) if clip in row_of_clip]
    local_captions = process_share(caption_records)
    text_rows = {}
    captions = [records[index].caption for index in local_captions]
    for start, texts in encode_texts(model, collator.processor, captions, batch_size, progress=progress):
        for row in range(texts.text_embeds.shape[0]):
            text_rows[local_captions[start + row]] = (texts.text_embeds[row].cpu(), texts.attention_mask[row].cpu())
    text_rows = merge_from_all_processes(text_rows)

    if not video_rows or not text_rows:
        raise ValueError("nothing to encode: no caption with a decodable video")
    text_embeds, attention_mask = _stacked_rows(text_rows, caption_records)
    video_embeds, video_mask = _stacked_rows(video_rows, kept_clips)
    return EncodedCorpus(
        texts=HBITextOutput(text_embeds=text_embeds.to(device), attention_mask=attention_mask.to(device)),
        videos=HBIVideoOutput(video_embeds=video_embeds.to(device), video_mask=video_mask.to(device)),
        text_to_video=[row_of_clip[caption_clip[index]] for index in caption_records],
        caption_records=caption_records,
        clips=[clips[index] for index in kept_clips],
    )
