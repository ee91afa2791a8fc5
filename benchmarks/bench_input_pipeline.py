"""Clips per second the input pipeline delivers: decoding videos on the fly (in this process, then
in DataLoader workers) against reading a prepared-frame corpus (`hbi-prepare`), with the one-off
cost of preparing it, on generated H.264 clips shaped like MSR-VTT's (30 s, 320 x 240, 30 fps).

    python benchmarks/bench_input_pipeline.py
    python benchmarks/bench_input_pipeline.py --clips 32 --workers 2 --repeats 5

Each path runs the evaluation collator's batches (`decode_videos`: sample 12 frames at 1 fps,
resize, crop to 224, normalise) over every clip, `--batch_size` clips at a time, `--repeats`
times; medians are quoted. CPU-seconds count this process and its workers (reaped children), so
"per core" compares CPU-seconds per clip. The JPEG corpus's pixel difference from the exact
frames is measured on the stored frames and on the processor's output.
"""

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_video_io import write_clip  # noqa: E402

from hbi_transformers.data import HBIDataCollator, VideoClip, load_video_text_dataset, prepare_corpus  # noqa: E402
from hbi_transformers.data.prepared import read_prepared_clip  # noqa: E402
from hbi_transformers.models.hbi import HBIVideoProcessor  # noqa: E402
from hbi_transformers.data.records import unique_videos  # noqa: E402


class VideoBatches(Dataset):
    def __init__(self, collator, clips, batch_size):
        self.collator, self.clips, self.batch_size = collator, clips, batch_size

    def __len__(self):
        return -(-len(self.clips) // self.batch_size)

    def __getitem__(self, index):
        start = index * self.batch_size
        return self.collator.decode_videos(self.clips[start : start + self.batch_size])


def _unchanged(item):
    return item


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(run, repeats: int) -> tuple[float, float]:
    """Median wall seconds and CPU-seconds of `run()`."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, wall = cpu_seconds(), time.perf_counter()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_seconds() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def pipeline(collator, clips, batch_size, workers):
    def run():
        loader = DataLoader(VideoBatches(collator, clips, batch_size), batch_size=None, num_workers=workers,
                            collate_fn=_unchanged)
        for batch, failures in iter(loader):
            assert not failures and batch["pixel_values_videos"].shape[0] > 0
        del loader  # workers exit now, so that their CPU time is counted

    return run


def folder_megabytes(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of path (b), processes preparing")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument("--dir", default=None, help="keep the clips and corpora here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_input_pipeline"))
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for index in range(args.clips):
        path = videos / f"clip{index:03d}.mp4"
        if not path.exists():
            write_clip(path, args.seconds, args.fps, *args.size, gop=None, seed=index)
    clips = [VideoClip(f"clip{index:03d}", str(videos / f"clip{index:03d}.mp4"), None, None) for index in range(args.clips)]
    records = [{"video": clip.video, "caption": "a clip", "video_id": clip.video_id} for clip in clips]
    processor = HBIVideoProcessor()  # MSR-VTT's: 12 frames at 1 fps, 224 x 224
    collator = HBIDataCollator(processor)
    print(f"{args.clips} clips of {args.seconds:g} s, {args.size[0]}x{args.size[1]} at {args.fps:g} fps in {videos}; "
          f"{args.repeats} repeats, batches of {args.batch_size}, 1 torch thread")

    rows = {}
    rows["(a) decode on the fly, 0 workers"] = measure(pipeline(collator, clips, args.batch_size, 0), args.repeats)
    rows[f"(b) decode on the fly, {args.workers} workers"] = measure(
        pipeline(collator, clips, args.batch_size, args.workers), args.repeats)

    preparing, prepared_clips = {}, {}
    for frame_format in ("raw", "png", "jpeg"):
        folder = root / f"prepared-{frame_format}"
        shutil.rmtree(folder, ignore_errors=True)
        cpu, wall = cpu_seconds(), time.perf_counter()
        prepare_corpus(records, processor, folder, frame_format=frame_format, jpeg_quality=args.jpeg_quality,
                       num_workers=args.workers, progress=False)
        preparing[frame_format] = (time.perf_counter() - wall, cpu_seconds() - cpu, folder_megabytes(folder))
        prepared_clips[frame_format] = unique_videos(load_video_text_dataset(folder))
        rows[f"(c) prepared {frame_format}, 0 workers"] = measure(
            pipeline(collator, prepared_clips[frame_format], args.batch_size, 0), args.repeats)
    rows[f"(c) prepared raw, {args.workers} workers"] = measure(
        pipeline(collator, prepared_clips["raw"], args.batch_size, args.workers), args.repeats)

    baseline_cpu = rows["(a) decode on the fly, 0 workers"][1] / args.clips
    baseline_wall = rows["(a) decode on the fly, 0 workers"][0]
    print(f"\n{'path':<36} {'clips/s':>9} {'CPU-s/clip':>11} {'x clips/s':>10} {'x per core':>11}")
    for name, (wall, cpu) in rows.items():
        print(f"{name:<36} {args.clips / wall:9.1f} {cpu / args.clips:11.4f} {baseline_wall / wall:10.1f} "
              f"{baseline_cpu / (cpu / args.clips):11.1f}")

    print(f"\n{'preparing (one-off)':<36} {'wall s':>9} {'CPU-s/clip':>11} {'MB/clip':>10} {'= epochs of (a)':>16}")
    for frame_format, (wall, cpu, megabytes) in preparing.items():
        # How many on-the-fly epochs (CPU) the preparation costs.
        print(f"{frame_format:<36} {wall:9.1f} {cpu / args.clips:11.4f} {megabytes / args.clips:10.2f} "
              f"{cpu / args.clips / baseline_cpu:16.2f}")

    exact = np.concatenate([read_prepared_clip(clip.video)[0].ravel() for clip in prepared_clips["raw"]]).astype(np.int16)
    lossy = np.concatenate([read_prepared_clip(clip.video)[0].ravel() for clip in prepared_clips["jpeg"]]).astype(np.int16)
    difference = np.abs(exact - lossy)
    psnr = 10 * np.log10(255**2 / np.mean(difference.astype(np.float64) ** 2))
    decoded = collator.decode_videos(clips)[0]["pixel_values_videos"]
    from_jpeg = collator.decode_videos(prepared_clips["jpeg"])[0]["pixel_values_videos"]
    from_raw = collator.decode_videos(prepared_clips["raw"])[0]["pixel_values_videos"]
    print(f"\nraw and png frames equal the decoded ones: {torch.equal(decoded, from_raw)}")
    print(f"jpeg (quality {args.jpeg_quality}) stored frames: mean |difference| {difference.mean():.2f} grey levels, "
          f"99th percentile {np.percentile(difference, 99):.0f}, max {difference.max()}, PSNR {psnr:.1f} dB; "
          f"processor output: mean |difference| {(decoded - from_jpeg).abs().mean():.4f} (normalised units)")
    if not args.dir:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
