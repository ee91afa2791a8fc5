"""Throughput of `hbi_transformers.video_io` per decoding backend, on clips shaped like the data.

    python benchmarks/bench_video_io.py
    python benchmarks/bench_video_io.py --clips 8 --seconds 15 --gop 12 --repeats 5
    python benchmarks/bench_video_io.py --dir my_videos   # writes the clips there and keeps them

Writes `--clips` H.264 clips of moving texture, then for each installed backend reads the 12 frames
the MSR-VTT sampling takes (1 fps, linspace to 12) from every clip, and, when
`HBIVideoProcessor` is available, also preprocesses them to 224 x 224. A reference row decodes
with PyAV every frame up to the last sampled one (no seeking), the simple way to read a clip.
Ratios are against --baseline, measured in the same run.
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from hbi_transformers.models.hbi.video_io import available_backends, read_video, sample_frame_indices

SEQUENTIAL_REFERENCE = "pyav, no seeking"


def write_clip(path: Path, seconds: float, fps: float, width: int, height: int, gop: int | None, seed: int) -> None:
    """A panning, blocky random texture: enough detail and motion that decoding costs as in real video."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 4 + 40, width // 4 + 40, 3), dtype=np.uint8)
    texture = blocks.repeat(4, axis=0).repeat(4, axis=1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for index in range(round(seconds * fps)):
            x = int(80 + 70 * np.sin(index / 40))
            y = int(80 + 70 * np.cos(index / 55))
            frame = np.ascontiguousarray(texture[y : y + height, x : x + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def read_without_seeking(path: Path, max_frames: int) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        wanted = sample_frame_indices(stream.frames, float(stream.average_rate), max_frames=max_frames)
        frames = []
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
            if index == wanted[-1]:
                return np.stack(frames)
    raise RuntimeError(f"{path} ended early")


def load_video_processor():
    try:
        from hbi_transformers.models.hbi.processing_hbi import HBIVideoProcessor
    except ImportError:
        return None
    return HBIVideoProcessor()


def make_readers(backends: list[str], max_frames: int, processor) -> dict[str, Callable[[Path], object]]:
    readers = {}
    for backend in backends:
        readers[backend] = lambda path, backend=backend: read_video(path, backend=backend, max_frames=max_frames).frames
    readers[SEQUENTIAL_REFERENCE] = lambda path: read_without_seeking(path, max_frames)
    if processor is not None:
        for backend in backends:
            read = readers[backend]
            readers[f"{backend} + preprocessing"] = lambda path, read=read: preprocess(processor, read(path))
    return readers


def preprocess(processor, frames: np.ndarray):
    pixel_values = processor(videos=[frames], return_tensors="pt")["pixel_values_videos"]
    first_video = pixel_values[0]  # a batch tensor or a list of videos, depending on the processor version
    assert tuple(first_video.shape[-2:]) == (224, 224), first_video.shape
    return pixel_values


def seconds_per_pass(readers: dict, clips: list[Path], repeats: int) -> dict[str, float]:
    """Median time of one pass over all clips for each reader, after an untimed warm-up pass.

    The readers take turns within each repeat, so a busy machine slows them all alike.
    """
    timings = {name: [] for name in readers}
    for repeat in tqdm(range(repeats + 1), desc="timing passes"):
        for name, read in readers.items():
            start = time.perf_counter()
            for path in clips:
                read(path)
            if repeat > 0:
                timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in timings.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="where to write the clips (default: a temporary folder)")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--gop", type=int, help="keyframe interval in frames (default: libx264's, up to 250)")
    parser.add_argument("--max-frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the clips")
    parser.add_argument("--baseline", default="pyav", help="the row the ratios are against")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        clips = [folder / f"clip_{index}.mp4" for index in range(args.clips)]
        for seed, path in enumerate(tqdm(clips, desc="writing clips")):
            write_clip(path, args.seconds, args.fps, args.width, args.height, args.gop, seed)

        processor = load_video_processor()
        readers = make_readers(available_backends(), args.max_frames, processor)
        timings = seconds_per_pass(readers, clips, args.repeats)

    gop = args.gop or "libx264 default"
    print(
        f"\n{args.clips} clips of {args.seconds:g} s, {args.fps:g} fps, {args.width}x{args.height}, H.264 "
        f"(GOP {gop}); {args.max_frames} frames at 1 fps; median of {args.repeats} passes"
    )
    if processor is None:
        print("HBIVideoProcessor is not importable: decoding and sampling only, no preprocessing rows.")
    baseline = timings.get(args.baseline)
    print(f"\n{'reader':<32} {'clips/s':>8} {'ms/clip':>8} {'speed vs ' + args.baseline:>16}")
    for name, seconds in timings.items():
        ratio = f"{baseline / seconds:.2f}x" if baseline else "-"
        print(f"{name:<32} {args.clips / seconds:8.1f} {1000 * seconds / args.clips:8.1f} {ratio:>16}")


if __name__ == "__main__":
    main()
