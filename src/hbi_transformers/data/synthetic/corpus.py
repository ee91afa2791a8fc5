"""The corpus as files: its settings, each clip's plan, the videos rendered in parallel, the splits
of whole families, the caption and question files and the manifest, and `make_synthetic_corpus`,
which writes them all (see the package docstring for the files)."""

import itertools
import json
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from .captions import MIN_FRAMES_PER_EVENT, _captions, _event_windows, _events, clip_questions
from .planning import EVENT_COUNTS, FAMILY_SIZE, family_scripts
from .randomness import BACKGROUND_STREAM, CAPTION_STREAM, SPLIT_STREAM, TIMING_STREAM, _rng
from .rendering import render_clip, write_mp4
from .scripts import ClipPlan, _video_id
from .vocabulary import ANSWERS

GENERATOR_VERSION = 1

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class CorpusSettings:
    """The settings that decide a corpus's content; the manifest records them."""

    num_clips: int
    seed: int
    split_fractions: tuple[float, float, float]
    size: tuple[int, int]  # (height, width)
    fps: int
    seconds: tuple[float, float]  # shortest and longest clip
    captions_per_clip: int

    def __post_init__(self):
        height, width = self.size
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be at least 1, got {self.num_clips}")
        if height % 2 or width % 2 or min(height, width) < 16:
            raise ValueError(f"size must be even and at least 16 pixels (yuv420p), got {self.size}")
        if (
            len(self.split_fractions) != 3
            or min(self.split_fractions) < 0
            or not math.isclose(sum(self.split_fractions), 1)
        ):
            raise ValueError(
                f"split_fractions are three non-negative fractions summing to 1, got {self.split_fractions}"
            )
        if not 0 < self.seconds[0] <= self.seconds[1]:
            raise ValueError(f"seconds must be (shortest, longest) with 0 < shortest <= longest, got {self.seconds}")
        if self.frame_range[0] < MIN_FRAMES_PER_EVENT * max(EVENT_COUNTS):
            raise ValueError(
                f"clips of {self.seconds[0]} s at {self.fps} fps are too short for {max(EVENT_COUNTS)} events "
                f"of {MIN_FRAMES_PER_EVENT} frames"
            )
        if self.captions_per_clip < 1:
            raise ValueError(f"captions_per_clip must be at least 1, got {self.captions_per_clip}")

    @property
    def frame_range(self) -> tuple[int, int]:
        return round(self.seconds[0] * self.fps), round(self.seconds[1] * self.fps)

    def as_json(self) -> dict:
        """The settings as the manifest holds them (tuples read back as lists)."""
        return json.loads(json.dumps(asdict(self)))


def plan_clip(settings: CorpusSettings, index: int) -> ClipPlan:
    """Script, timing and captions of clip `index` (a pure function of the seed and index)."""
    script = family_scripts(settings.seed, index // FAMILY_SIZE)[index % FAMILY_SIZE]
    timing = _rng(settings.seed, TIMING_STREAM, index)
    num_frames = int(timing.integers(settings.frame_range[0], settings.frame_range[1] + 1))
    events = _events(script, _event_windows(len(script.steps), num_frames, timing))
    captions = _captions(events, settings.captions_per_clip, _rng(settings.seed, CAPTION_STREAM, index))
    return ClipPlan(index, script, events, num_frames, captions)


def _render_and_write(job: tuple[str, ClipPlan, CorpusSettings]) -> None:
    output_dir, plan, settings = job
    frames = render_clip(plan, settings.size, _rng(settings.seed, BACKGROUND_STREAM, plan.index))
    write_mp4(os.path.join(output_dir, plan.video), frames, settings.fps)


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _render_videos(
    output_dir: str, plans: Sequence[ClipPlan], settings: CorpusSettings, num_workers: int | None, progress: bool
) -> None:
    jobs = [(output_dir, plan, settings) for plan in plans]
    workers = min(num_workers or _default_workers(), len(jobs))
    with (
        tqdm(total=len(jobs), desc="rendering clips", unit="clip", disable=not progress) as bar,
        multiprocessing.Pool(workers) if workers > 1 else nullcontext() as pool,
    ):
        rendered = map(_render_and_write, jobs) if pool is None else pool.imap_unordered(_render_and_write, jobs, 4)
        for _ in rendered:
            bar.update()


def split_families(num_clips: int, seed: int, fractions: Sequence[float]) -> dict[str, list[int]]:
    """Clip indices of each split. Whole families go to one split, so that every split holds
    confusable clips side by side (what makes retrieval within it hard) and no split sees a
    variant of another's clip. Each split with a non-zero fraction gets at least one family
    when there are enough."""
    num_families = math.ceil(num_clips / FAMILY_SIZE)
    order = _rng(seed, SPLIT_STREAM).permutation(num_families)
    counts = [round(fraction * num_families) for fraction in fractions[1:]]
    if num_families >= len(SPLITS):
        counts = [max(count, 1) if fraction > 0 else count for count, fraction in zip(counts, fractions[1:])]
    boundaries = np.cumsum([num_families - sum(counts), *counts])[:-1]
    return {
        name: sorted(index for family in families for index in _family_members(int(family), num_clips))
        for name, families in zip(SPLITS, np.split(order, boundaries))
    }


def _family_members(family: int, num_clips: int) -> range:
    return range(family * FAMILY_SIZE, min((family + 1) * FAMILY_SIZE, num_clips))


def corpus_paths(output_dir: str | os.PathLike) -> dict[str, str]:
    """Where a corpus in `output_dir` keeps its parts."""
    root = os.fspath(output_dir)
    paths = {"output_dir": root, "videos": os.path.join(root, "videos")}
    for split in SPLITS:
        paths[split] = os.path.join(root, f"{split}.jsonl")
        paths[f"{split}_qa"] = os.path.join(root, f"{split}_qa.jsonl")
    paths["answers"] = os.path.join(root, "answers.json")
    paths["manifest"] = os.path.join(root, "corpus.json")
    return paths


def _caption_row(plan: ClipPlan, fps: int) -> dict:
    return {
        "video": plan.video,
        "video_id": plan.video_id,
        "captions": list(plan.captions),
        "events": [asdict(event) for event in plan.events],
        "shapes": [{"shape": shape.shape, "colour": shape.colour} for shape in plan.script.shapes],
        "num_frames": plan.num_frames,
        "fps": fps,
    }


def _question_rows(plan: ClipPlan) -> list[dict]:
    return [
        {"video": plan.video, "video_id": plan.video_id, **asdict(question)}
        for question in clip_questions(plan.script.shapes, plan.events)
    ]


def _write_jsonl(path: str, rows: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2)
        handle.write("\n")


def _write_annotations(paths: dict[str, str], plans: Sequence[ClipPlan], settings: CorpusSettings) -> dict:
    """Writes the caption and question files of each split and the answer vocabulary; returns the counts."""
    counts = {"clips": {}, "captions": {}, "questions": {}}
    for split, indices in split_families(settings.num_clips, settings.seed, settings.split_fractions).items():
        caption_rows = [_caption_row(plans[index], settings.fps) for index in indices]
        question_rows = [row for index in indices for row in _question_rows(plans[index])]
        _write_jsonl(paths[split], caption_rows)
        _write_jsonl(paths[f"{split}_qa"], question_rows)
        counts["clips"][split] = len(caption_rows)
        counts["captions"][split] = sum(len(row["captions"]) for row in caption_rows)
        counts["questions"][split] = len(question_rows)
    _write_json(paths["answers"], {answer: label for label, answer in enumerate(ANSWERS)})
    counts["answers"] = len(ANSWERS)
    return counts


def _is_complete(paths: dict[str, str], settings: CorpusSettings) -> bool:
    """Whether the folder holds a finished corpus of this generator version and these settings."""
    try:
        with open(paths["manifest"], encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return False
    if manifest.get("generator_version") != GENERATOR_VERSION or manifest.get("settings") != settings.as_json():
        return False
    files = [path for key, path in paths.items() if key not in ("output_dir", "videos")]
    videos = (os.path.join(paths["videos"], f"{_video_id(index)}.mp4") for index in range(settings.num_clips))
    return all(os.path.isfile(path) for path in itertools.chain(files, videos))


def make_synthetic_corpus(
    output_dir: str | os.PathLike,
    num_clips: int = 2000,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    size: tuple[int, int] = (96, 96),
    fps: int = 8,
    seconds: tuple[float, float] = (4, 8),
    captions_per_clip: int = 3,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Renders the corpus into `output_dir` (see the package docstring for its files), or does
    nothing when the folder already holds a complete corpus with the same settings.

    Args:
        num_clips: clips in all splits together.
        split_fractions: train / validation / test shares (whole families of clips are split).
        size: (height, width) of the frames, even numbers.
        fps: frames per second.
        seconds: (shortest, longest) clip duration; each clip draws its own.
        captions_per_clip: captions of each clip (distinct phrasings of its events).
        num_workers: processes rendering clips (default: the CPUs this process may use).
        progress: show a progress bar.

    Returns:
        The paths of the parts, as `corpus_paths`: `output_dir`, `videos`, `train`,
        `validation`, `test`, `train_qa`, `validation_qa`, `test_qa`, `answers`, `manifest`.
    """
    settings = CorpusSettings(
        num_clips, seed, tuple(split_fractions), tuple(size), fps, tuple(seconds), captions_per_clip
    )
    paths = corpus_paths(output_dir)
    if _is_complete(paths, settings):
        return paths
    os.makedirs(paths["videos"], exist_ok=True)
    if os.path.exists(paths["manifest"]):  # a corpus of other settings is being replaced
        os.remove(paths["manifest"])
    started = time.perf_counter()
    plans = [plan_clip(settings, index) for index in range(num_clips)]
    _render_videos(paths["output_dir"], plans, settings, num_workers, progress)
    counts = _write_annotations(paths, plans, settings)
    manifest = {
        "generator": "hbi_transformers.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "settings": settings.as_json(),
        "family_size": FAMILY_SIZE,
        "counts": counts,
        "seconds_taken": round(time.perf_counter() - started, 1),
    }
    _write_json(paths["manifest"], manifest)
    return paths
