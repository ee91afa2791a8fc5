"""`prepare_corpus`: decodes every distinct clip of a corpus once, in worker processes, into the
shards of a prepared-frame corpus (see `prepared`), resuming where an interrupted run stopped
and counting the videos that fail to decode as training does. The format is described in
docs/video_input.md."""

import hashlib
import io
import json
import multiprocessing
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ..models.hbi.video_io import VideoDecodingError
from ..models.hbi.video_processing_hbi import HBI_VIDEO_OPTIONS
from .bad_items import BadItemCounter
from .collator import stable_video_index
from .parallelism import available_cores
from .prepared import (
    CLIPS_FOLDER,
    FORMAT_VERSION,
    PREPARED_MANIFEST,
    RECORDS_FILE,
    PreparedCorpusError,
    PreparedSettings,
    prepared_reference,
)
from .records import VideoClip, VideoTextRecord, as_record, unique_videos

logger = logging.get_logger(__name__)


def _clip_schema():
    import pyarrow as pa

    return pa.schema([
        ("video_id", pa.string()), ("source", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
        ("frames", pa.list_(pa.binary())), ("height", pa.int32()), ("width", pa.int32()),
        ("frame_indices", pa.list_(pa.int64())), ("timestamps", pa.list_(pa.float64())),
        ("fps", pa.float64()), ("duration", pa.float64()),
    ])


def _record_schema():
    import pyarrow as pa

    return pa.schema([
        ("video", pa.string()), ("caption", pa.string()), ("video_id", pa.string()), ("start", pa.float64()),
        ("end", pa.float64()), ("question", pa.string()), ("answer", pa.string()),
    ])


# What each worker process keeps between clips (set by `_start_worker`).
_worker_state: dict = {}


def _start_worker(video_processor, video_options: dict, settings: PreparedSettings) -> None:
    # One compute thread per worker: the workers already use every core between them.
    torch.set_num_threads(1)
    _worker_state.update(video_processor=video_processor, video_options=video_options, settings=settings)


def _encode_frame(frame: np.ndarray, settings: PreparedSettings) -> bytes:
    if settings.frame_format == "raw":
        return frame.tobytes()
    from PIL import Image

    buffer = io.BytesIO()
    if settings.frame_format == "png":
        Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(frame).save(buffer, format="JPEG", quality=settings.jpeg_quality, subsampling=0)
    return buffer.getvalue()


def resized_frames(video_processor, frames: np.ndarray) -> np.ndarray:
    """`frames` (uint8 `[frames, H, W, 3]`) through the processor's own resize step, so that its
    resize leaves the stored frames unchanged when they are read (docs/video_input.md)."""
    if not video_processor.do_resize:
        return frames
    size = video_processor._standardize_kwargs(
        size=video_processor.size, crop_size=video_processor.crop_size, default_to_square=video_processor.default_to_square,
        image_mean=video_processor.image_mean, image_std=video_processor.image_std,
    )["size"]
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    resized = video_processor.resize(clip, size=size, resample=video_processor.resample)
    return resized.permute(0, 2, 3, 1).contiguous().numpy()


def prepare_clip(video_processor, clip: VideoClip, video_options: dict, settings: PreparedSettings) -> dict:
    """One clip's row of a shard: its frames sampled as the processor samples them (sampling rule,
    segment, `max_frames`), resized by its resize step, encoded in `settings.frame_format`.
    Raises `VideoDecodingError` for a video that does not decode."""
    options = {name: video_options.get(name, getattr(video_processor, name)) for name in HBI_VIDEO_OPTIONS}
    segment = None if clip.start is None and clip.end is None else (clip.start, clip.end)
    frames, info = video_processor._frames_of(clip.video, 0, segment, options)
    frames = resized_frames(video_processor, frames)
    return {
        "video_id": clip.video_id, "source": clip.name, "start": clip.start, "end": clip.end,
        "frames": [_encode_frame(frame, settings) for frame in frames],
        "height": frames.shape[1], "width": frames.shape[2],
        "frame_indices": [int(index) for index in info["frame_indices"]],
        "timestamps": [float(time) for time in info["timestamps"]],
        "fps": info["fps"], "duration": info["duration"],
    }


def _prepare_in_worker(task: tuple[int, VideoClip]) -> tuple[int, dict | None, str | None]:
    position, clip = task
    state = _worker_state
    try:
        return position, prepare_clip(state["video_processor"], clip, state["video_options"], state["settings"]), None
    except VideoDecodingError as error:
        return position, None, error.reason


def _fingerprint(clips: list[VideoClip], settings: PreparedSettings, shard_size: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([settings.to_json(), shard_size]).encode())
    for clip in clips:
        digest.update(repr(clip.clip_key).encode())
    return digest.hexdigest()


def _shard_name(index: int) -> str:
    return f"{CLIPS_FOLDER}/clips-{index:05d}.parquet"


def _write_shard(output_dir: Path, index: int, rows: list[dict], bad: list) -> None:
    """A shard (one clip per row group, so a clip is read alone) and its index of clips, each
    written under a temporary name then renamed: a shard whose index exists is whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = output_dir / _shard_name(index)
    temporary = path.with_suffix(".parquet.partial")
    positions = [row.pop("position") for row in rows]
    # Frames are stored uncompressed: raw pixels read fastest so, PNG and JPEG are compressed already.
    with pq.ParquetWriter(temporary, _clip_schema(), compression="none", use_dictionary=False) as writer:
        for row in rows:
            writer.write_table(pa.Table.from_pylist([row], schema=_clip_schema()))
    os.replace(temporary, path)
    index_file = path.with_suffix(".json")
    index_file.with_suffix(".json.partial").write_text(json.dumps({"positions": positions, "bad": bad}))
    os.replace(index_file.with_suffix(".json.partial"), index_file)


def prepare_corpus(
    records: Iterable[VideoTextRecord | Mapping],
    video_processor,
    output_dir: str | os.PathLike,
    *,
    frame_format: str = "raw",
    jpeg_quality: int = 95,
    shard_size: int = 256,
    num_workers: int | None = None,
    max_bad_fraction: float = 0.05,
    min_items: int = 50,
    progress: bool = True,
    **video_options,
) -> dict:
    """Writes the prepared-frame corpus of `records` to `output_dir` and returns its manifest.

    Every distinct clip is decoded once, in `num_workers` processes (None: every core), as
    `video_processor` (with `video_options`, e.g. `frame_sampling="per_second"`) samples it, and
    resized by its resize step; crop, augmentation and normalisation are left to each read. Clips
    go `shard_size` to a Parquet shard. A shard already written by an interrupted run with the same
    records and settings is kept. A video that fails to decode is logged, counted and its records
    left out; more than `max_bad_fraction` of them (after `min_items`) stops the run with
    `TooManyBadVideosError` (the shards written so far are kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [as_record(record) for record in records]
    clips = unique_videos(records)
    settings = PreparedSettings.from_processor(video_processor, video_options, frame_format, jpeg_quality)
    output_dir = Path(output_dir)
    (output_dir / CLIPS_FOLDER).mkdir(parents=True, exist_ok=True)
    manifest_path = output_dir / PREPARED_MANIFEST
    fingerprint = _fingerprint(clips, settings, shard_size)
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if previous.get("fingerprint") != fingerprint:
            raise PreparedCorpusError(
                f"{output_dir} holds a corpus prepared from other records or settings: give another output folder "
                "or delete it"
            )
    manifest = {"format_version": FORMAT_VERSION, "complete": False, "fingerprint": fingerprint,
                "settings": settings.to_json(), "shard_size": shard_size}
    manifest_path.write_text(json.dumps(manifest, indent=2))

    counter = BadItemCounter(max_bad_fraction, min_items)
    shard_count = -(-len(clips) // shard_size)
    done = {index for index in range(shard_count) if (output_dir / _shard_name(index)).with_suffix(".json").exists()}
    for index in sorted(done):
        for position, name, reason in json.loads((output_dir / _shard_name(index)).with_suffix(".json").read_text())["bad"]:
            counter.record_failure(stable_video_index(clips[position].clip_key), name, reason)
    pending = [position for position in range(len(clips)) if position // shard_size not in done]
    for position in range(len(clips)):
        if position // shard_size in done:
            counter.record_success(stable_video_index(clips[position].clip_key))
    if done:
        logger.warning(f"resuming: {len(done)} of {shard_count} shards already written in {output_dir}")

    workers = available_cores() if num_workers is None else num_workers
    rows, bad = [], []
    with tqdm(total=len(clips), initial=len(clips) - len(pending), desc="preparing clips", unit="clip",
              disable=not progress) as bar:
        for position, row, reason in _results(pending, clips, video_processor, video_options, settings, workers):
            key = clips[position].clip_key
            if row is None:
                counter.record_failure(stable_video_index(key), clips[position].name, reason)
                bad.append((position, clips[position].name, reason))
            else:
                counter.record_success(stable_video_index(key))
                rows.append({"position": position, **row})
            bar.update()
            counter.check()
            last_of_shard = position + 1 == len(clips) or (position + 1) % shard_size == 0
            if last_of_shard:
                _write_shard(output_dir, position // shard_size, rows, bad)
                rows, bad = [], []

    reference_of = {}
    for index in range(shard_count):
        positions = json.loads((output_dir / _shard_name(index)).with_suffix(".json").read_text())["positions"]
        reference_of.update({position: prepared_reference(_shard_name(index), row) for row, position in enumerate(positions)})
    clip_position = {clip.clip_key: position for position, clip in enumerate(clips)}
    kept = [
        {**record.__dict__, "video": reference_of[clip_position[record.clip_key]]}
        for record in records
        if clip_position[record.clip_key] in reference_of
    ]
    for row in kept:
        row.pop("name", None)  # the cached property of a record, not a column
    pq.write_table(pa.Table.from_pylist(kept, schema=_record_schema()), output_dir / RECORDS_FILE)
    manifest.update(
        complete=True, num_clips=len(reference_of), num_records=len(kept), shards=[_shard_name(i) for i in range(shard_count)],
        bad_videos=[[item.name, item.reason] for item in counter.bad_items],
        records_left_out=len(records) - len(kept),
    )
    manifest_path.write_text(json.dumps(manifest, indent=2))
    logger.warning(f"prepared {len(reference_of)} clips of {len(kept)} records in {output_dir}; {counter.report()}")
    return manifest


def _results(pending, clips, video_processor, video_options, settings, workers):
    """`(position, row or None, failure reason or None)` of each pending clip, in order."""
    tasks = [(position, clips[position]) for position in pending]
    if workers <= 1 or len(tasks) <= 1:
        _worker_state.update(video_processor=video_processor, video_options=video_options, settings=settings)
        yield from map(_prepare_in_worker, tasks)
        return
    # fork: the workers start at once, with the processor already in memory.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(workers, initializer=_start_worker, initargs=(video_processor, video_options, settings)) as pool:
        yield from pool.imap(_prepare_in_worker, tasks, chunksize=1)
