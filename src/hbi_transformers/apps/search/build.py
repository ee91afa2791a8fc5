"""Building an index: `build_index` scans a folder of videos, compares it with the index, encodes
new and changed files (whole, or in fixed windows) through the project's corpus encoder and drops
deleted ones; `index_from_features` writes an index of already computed frame embeddings."""

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...data import VIDEO_EXTENSIONS, BadItem, HBIDataCollator, VideoClip
from ...models.hbi.modeling_hbi import HBIVideoOutput
from ...training.evaluation.encoding import encode_clips
from ...training.model_identity import model_identity
from .identity import IndexModelMismatchError, check_same_model
from .index import (
    DEFAULT_ANN_MIN_ROWS,
    DEFAULT_BATCH_ROWS,
    INFO_NAME,
    OLD_MANIFEST_NAME,
    VideoIndex,
    remove_index,
)
from .results import IndexReport
from .writing import IndexWriter, entry_tensors, new_info

# Video processor settings an index is built with; an update must use the same.
VIDEO_SETTING_KEYS = (
    "max_frames",
    "video_framerate",
    "frame_sampling",
    "size",
    "crop_size",
    "do_resize",
    "do_center_crop",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "resample",
)
# Below this, a window start is taken to be the end of the video (float noise in durations).
WINDOW_EPSILON = 1e-6


@dataclass
class _EncodedWindow:
    """One entry of a file, encoded: its entry record and its model outputs (a row each)."""

    start: float | None
    end: float | None
    timestamps: list[float]
    duration: float
    video_embeds: torch.Tensor  # [frames, D]
    video_mask: torch.Tensor  # [frames]

    @property
    def record(self) -> dict:
        return {"start": self.start, "end": self.end, "timestamps": self.timestamps}


def _file_state(path: Path, hash_contents: bool) -> dict:
    stat = path.stat()
    state = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "content_hash": None}
    if hash_contents:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        state["content_hash"] = digest.hexdigest()
    return state


def _is_unchanged(recorded: dict, path: Path, hash_contents: bool) -> tuple[bool, dict]:
    """Whether a file is as recorded (same size and modification time, or, with `hash_contents`,
    the same bytes), with its current state."""
    state = _file_state(path, hash_contents=False)
    if state["size"] == recorded["size"] and state["mtime_ns"] == recorded["mtime_ns"]:
        return True, {**state, "content_hash": recorded.get("content_hash")}
    if hash_contents and recorded.get("content_hash") is not None:
        state = _file_state(path, hash_contents=True)
        return state["content_hash"] == recorded["content_hash"], state
    return False, state


def _scan(video_dir: Path, extensions: Sequence[str]) -> dict[str, Path]:
    suffixes = {extension.lower() if extension.startswith(".") else f".{extension.lower()}" for extension in extensions}
    return {
        path.relative_to(video_dir).as_posix(): path
        for path in sorted(video_dir.rglob("*"))
        if path.is_file() and path.suffix.lower() in suffixes
    }


def _video_processing_settings(video_processor) -> dict:
    settings = video_processor.to_dict()
    # Tuples as lists, enums as their values: what index.json gives back when read.
    return json.loads(json.dumps({key: settings.get(key) for key in VIDEO_SETTING_KEYS}))


def _check_segment_seconds(segment_seconds) -> None:
    # The decoders cut segments at whole seconds (as the official loaders do).
    if segment_seconds is not None and (int(segment_seconds) != segment_seconds or segment_seconds < 1):
        raise ValueError(f"segment_seconds must be a whole number of seconds >= 1, got {segment_seconds}")


def build_index(
    video_dir: str | os.PathLike,
    model,
    processor,
    index_dir: str | os.PathLike,
    batch_size: int = 8,
    segment_seconds: int | None = None,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    progress: bool = True,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    hash_contents: bool = False,
    storage_dtype: str = "float32",
    ann_min_rows: int = DEFAULT_ANN_MIN_ROWS,
    rebuild: bool = False,
) -> IndexReport:
    """Encodes every video under `video_dir` (recursively, files ending in `extensions`) into an
    index at `index_dir`, or brings an existing index up to date.

    Args:
        video_dir: the folder of videos; entries record paths relative to it.
        model: the `HBIModel` (on any device; its frame embeddings are stored as float32).
        processor: an `HBIProcessor` (or `HBIVideoProcessor`): how frames are sampled and
            preprocessed. An update must use the same settings.
        index_dir: the index folder, created if needed.
        batch_size: videos (or windows) encoded at once.
        segment_seconds: index fixed windows of this many (whole) seconds instead of whole files,
            so that a hit points at a moment. An update must use the same value.
        extensions: which files are videos.
        progress: show a progress bar.
        batch_rows: entries per commit (files are never split across commits).
        hash_contents: also record a hash of each file's bytes, so that a file whose modification
            time changed but whose contents did not (a copy, a `touch`) is not re-encoded.
        storage_dtype: "float32" or "float16" for the stored tokens (half the disk).
        ann_min_rows: build the first stage's approximate (RaBitQ) index from this many entries on.
        rebuild: delete what the folder holds of an index (this format or the earlier one, damaged
            or not) and encode everything again.

    Files are compared with the index by size and modification time. A file that fails to decode
    is logged, reported in `IndexReport.bad_files` and skipped; it is tried again once it changes.

    Raises:
        IndexModelMismatchError: `index_dir` holds an index built with another model, other video
            settings or another `segment_seconds`.
        IndexBusyError: another process is writing to `index_dir`.
        IndexDamagedError / OldIndexFormatError: the index must be rebuilt (`rebuild=True`).
    """
    _check_segment_seconds(segment_seconds)
    video_dir, index_dir = Path(video_dir).resolve(), Path(index_dir)
    if not video_dir.is_dir():
        raise NotADirectoryError(f"no folder of videos at {video_dir}")
    video_processor = getattr(processor, "video_processor", processor)
    identity = model_identity(model)
    settings = _video_processing_settings(video_processor)
    writer = IndexWriter(index_dir)
    try:
        return _update(writer, video_dir, model, processor, video_processor, identity, settings, batch_size,
                       segment_seconds, extensions, progress, batch_rows, hash_contents, storage_dtype, ann_min_rows,
                       rebuild)
    finally:
        writer.close()


def _update(writer, video_dir, model, processor, video_processor, identity, settings, batch_size, segment_seconds,
            extensions, progress, batch_rows, hash_contents, storage_dtype, ann_min_rows, rebuild) -> IndexReport:
    index_dir = writer.index_dir
    if rebuild:
        remove_index(index_dir)
    if (index_dir / INFO_NAME).exists() or (index_dir / OLD_MANIFEST_NAME).exists():
        index = VideoIndex.open(index_dir)
        info = index.info
        _check_can_update(info, identity, settings, segment_seconds, index_dir)
        recorded_files = index.files()
        writer.attach(info, index.table)
    else:
        info = new_info(identity, settings, segment_seconds, storage_dtype)
        recorded_files = {}
        writer.attach(info, None)
    info["video_dir"] = str(video_dir)
    info["model"]["name_or_path"] = identity["name_or_path"] or info["model"]["name_or_path"]
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        info["tokenizer"] = {"name_or_path": tokenizer.name_or_path, "max_words": processor.max_words}

    found = _scan(video_dir, extensions)
    report = IndexReport(index_dir=str(index_dir), num_entries=0, num_files=0)
    touched = {}
    for file, recorded in recorded_files.items():
        if file not in found:
            report.removed.append(file)
            continue
        unchanged, state = _is_unchanged(recorded, found[file], hash_contents)
        if unchanged:
            if (state["size"], state["mtime_ns"]) != (recorded["size"], recorded["mtime_ns"]):
                touched[file] = state
            report.unchanged += 1
        else:
            report.updated.append(file)
    known_bad = []
    for file, recorded in list(info["bad_files"].items()):
        if file in found and _is_unchanged(recorded, found[file], hash_contents)[0]:
            known_bad.append(BadItem(file, recorded["reason"]))
        else:
            # Deleted, or changed and worth another try (then it is new to the index).
            del info["bad_files"][file]
    report.added = [file for file in found if file not in recorded_files and file not in info["bad_files"]]
    writer.drop_files(set(report.removed) | set(report.updated))
    if touched:
        writer.update_file_states(touched)
    changed_or_new = {*report.added, *report.updated}
    to_encode = [file for file in found if file in changed_or_new]

    was_training = model.training
    model.eval()
    try:
        bad_files = _encode_files(
            writer, model, video_processor, found, to_encode, batch_size, segment_seconds, batch_rows, hash_contents,
            progress,
        )
    finally:
        model.train(was_training)
    writer.flush()
    writer.commit_info()
    writer.maintain_ann_index(ann_min_rows)

    # A file that fails now is neither added nor updated.
    failed = {item.name for item in bad_files}
    report.added = [file for file in report.added if file not in failed]
    report.updated = [file for file in report.updated if file not in failed]
    report.bad_files = known_bad + bad_files
    index = VideoIndex.open(index_dir)
    report.num_files = len(index.files())
    report.num_entries = len(index)
    return report


def _check_can_update(info: dict, identity: dict, settings: dict, segment_seconds, index_dir) -> None:
    if info["video_processing"] is None:
        raise ValueError(f"the index at {index_dir} was made from features (index_from_features): it has no files to update")
    check_same_model(info["model"], identity, index_dir)
    if info["video_processing"] != settings:
        changed = sorted(key for key in settings if info["video_processing"].get(key) != settings[key])
        raise IndexModelMismatchError(
            f"the index at {index_dir} was built with other video processing settings ({', '.join(changed)}): "
            "use the same processor, or build a new index"
        )
    if info["segment_seconds"] != segment_seconds:
        raise IndexModelMismatchError(
            f"the index at {index_dir} holds {_describe_segments(info['segment_seconds'])}, not "
            f"{_describe_segments(segment_seconds)}: pass the same segment length, or build a new index"
        )


def _describe_segments(segment_seconds) -> str:
    return "whole videos" if segment_seconds is None else f"{segment_seconds}-second windows"


def _encode_files(
    writer, model, video_processor, found, to_encode, batch_size, segment_seconds, batch_rows, hash_contents, progress
) -> list[BadItem]:
    """Encodes `to_encode` into `writer` and returns the files that failed to decode (at any
    window: a file is dropped whole), with the reason, also recorded in the index's info.

    Files go `batch_size` at a time through `_encode_group`, so that only their encoded windows
    are held. Their entries are then stored in file order, `batch_size` windows at a time across
    files (the batches the token merging sees, see the package docstring), and a commit is made
    only between files, so that a committed version never holds part of a file."""
    # Every failure is reported; none stops the run.
    collator = HBIDataCollator(video_processor, max_bad_fraction=1.0)
    bad_files = []
    queue: list[tuple[str, _EncodedWindow]] = []

    def store_queue():
        if queue:
            entries = [{"file": file, **window.record} for file, window in queue]
            video_embeds = torch.stack([window.video_embeds for _, window in queue])
            video_mask = torch.stack([window.video_mask for _, window in queue])
            writer.add(entries, entry_tensors(model, video_embeds, video_mask))
            queue.clear()

    with tqdm(total=len(to_encode), desc="indexing videos", unit="video", disable=not progress) as bar:
        for group_start in range(0, len(to_encode), batch_size):
            group = to_encode[group_start : group_start + batch_size]
            # Taken before decoding: a file changed meanwhile then looks changed to the next run.
            states = {file: _file_state(found[file], hash_contents) for file in group}
            windows, reasons = _encode_group(model, collator, {file: found[file] for file in group}, segment_seconds,
                                             batch_size)
            for file in group:
                bar.update()
                if file in reasons:
                    bad_files.append(BadItem(file, reasons[file]))
                    writer.info["bad_files"][file] = {**states[file], "reason": reasons[file]}
                    continue
                for window in windows[file]:
                    queue.append((file, window))
                    if len(queue) >= batch_size:
                        store_queue()
                writer.pending_files[file] = {**states[file], "duration": windows[file][-1].duration}
                if len(writer) + len(queue) >= batch_rows:
                    store_queue()
                    writer.flush()
    store_queue()
    return bad_files


def _encode_group(
    model, collator: HBIDataCollator, paths: dict[str, Path], segment_seconds: int | None, batch_size: int
) -> tuple[dict[str, list[_EncodedWindow]], dict[str, str]]:
    """The encoded windows of each file of `paths` (by relative name), in order, and why each file
    that failed to decode failed.

    First the whole video (or with `segment_seconds` the first window) of every file goes through
    `encode_clips`; its decoding tells each file's duration, hence how many windows follow, and
    those of the files that decoded go through `encode_clips` next."""
    windows = {file: [] for file in paths}
    reasons: dict[str, str] = {}
    first_window = (None, None) if segment_seconds is None else (0, segment_seconds)
    first = [VideoClip(file, str(path), *first_window) for file, path in paths.items()]
    _encode_windows(model, collator, first, batch_size, windows, reasons)
    if segment_seconds is not None:
        following = []
        for file, path in paths.items():
            if file in reasons:
                continue
            # A window starting at (or within float noise of) the end would hold no frame.
            num_windows = max(1, math.ceil(windows[file][0].duration / segment_seconds - WINDOW_EPSILON))
            following += [
                VideoClip(file, str(path), number * segment_seconds, (number + 1) * segment_seconds)
                for number in range(1, num_windows)
            ]
        _encode_windows(model, collator, following, batch_size, windows, reasons)
    return windows, reasons


def _encode_windows(
    model, collator: HBIDataCollator, clips: list[VideoClip], batch_size: int, windows: dict, reasons: dict
) -> None:
    """Encodes `clips` (windows of files, `video_id` the file's relative name) through
    `encode_clips`, appending each one that decodes to its file's `windows` and recording in
    `reasons` the first failure of each file."""
    num_bad_before = len(collator.counter.bad_items)
    for encoded in encode_clips(model, collator, clips, batch_size, with_metadata=True, progress=False):
        for row, (position, info) in enumerate(zip(encoded.positions, encoded.metadata)):
            clip = clips[position]
            duration = info["duration"]
            windows[clip.video_id].append(
                _EncodedWindow(
                    start=clip.start,
                    end=None if clip.end is None else min(clip.end, duration),
                    timestamps=[float(time) for time in info["timestamps"]],
                    duration=duration,
                    video_embeds=encoded.videos.video_embeds[row],
                    video_mask=encoded.videos.video_mask[row],
                )
            )
    file_of = {clip.name: clip.video_id for clip in clips}
    for item in collator.counter.bad_items[num_bad_before:]:
        reasons.setdefault(file_of[item.name], item.reason)


def index_from_features(
    index_dir: str | os.PathLike,
    model,
    video_outputs: HBIVideoOutput,
    names: Sequence[str],
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_size: int = 256,
    storage_dtype: str = "float32",
    ann_min_rows: int = DEFAULT_ANN_MIN_ROWS,
) -> VideoIndex:
    """A new index of already computed frame embeddings (e.g. from `get_video_features`, or
    synthetic ones for a benchmark), without decoding any file. Entries are named by `names` and
    have no timestamps (hits then have no time window); the index cannot be updated with
    `build_index`."""
    if len(names) != video_outputs.video_embeds.shape[0]:
        raise ValueError(f"{len(names)} names for {video_outputs.video_embeds.shape[0]} videos")
    index_dir = Path(index_dir)
    with IndexWriter(index_dir) as writer:
        # Checked under the lock: a writer that finished meanwhile has made an index here.
        if (index_dir / INFO_NAME).exists() or (index_dir / OLD_MANIFEST_NAME).exists():
            raise FileExistsError(f"{index_dir} already holds an index")
        writer.attach(new_info(model_identity(model), None, None, storage_dtype), None)
        step = min(batch_size, batch_rows)
        for start in range(0, len(names), step):
            batch_names = names[start : start + step]
            writer.add(
                [{"file": name, "start": None, "end": None, "timestamps": None} for name in batch_names],
                entry_tensors(
                    model,
                    video_outputs.video_embeds[start : start + step].to(model.device),
                    video_outputs.video_mask[start : start + step].to(model.device),
                ),
            )
            writer.pending_files.update(
                {name: {"size": None, "mtime_ns": None, "content_hash": None, "duration": None} for name in batch_names}
            )
            if len(writer) >= batch_rows:
                writer.flush()
        writer.flush()
        writer.commit_info()
        writer.maintain_ann_index(ann_min_rows)
    return VideoIndex.open(index_dir)
