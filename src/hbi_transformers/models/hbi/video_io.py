"""Video decoding and frame sampling, as the official HBI data loaders do it.

`read_video(source)` decodes a path, bytes or binary file object with one of the installed
backends (decord, PyAV, torchcodec) and returns the sampled RGB frames as a `DecodedVideo`.

Two samplers reproduce the official loaders index for index:
- `sample_frame_indices` ("fps"): MSR-VTT and MSRVTT-QA (decord) take `video_framerate` frames
  per second over the segment, then at most `max_frames` evenly spaced ones.
- `sample_frame_indices_per_second` ("per_second"): ActivityNet and DiDeMo (OpenCV) take one frame
  per whole second at an integer frame rate, then at most `max_frames` evenly spaced ones.

Frame indices count frames in presentation order, and seconds are mapped to indices with the
stream's average frame rate, as decord does. For a variable frame rate stream this keeps the
official index arithmetic (the frames are exactly the indexed ones, but a "second" is
`fps` frames, not a wall-clock second) and `timestamps` are these nominal `index / fps` times.

decord and PyAV return identical frames (every byte) for MP4 / MKV / WebM / AVI with H.264,
MPEG-4 Part 2 and VP9, constant or variable frame rate. decord returns wrong frames for MPEG-PS
(.mpg) and MPEG-TS (.ts) or fails on them, and cannot open raw .h264 / .m4v streams, so it (like
torchcodec) is only given MP4 / MOV, Matroska / WebM and AVI files: use `backend="pyav"` for the
others. PyAV is therefore the default (`backend="auto"` takes the first installed of PyAV,
decord, torchcodec): it is as fast as decord on H.264 with seeking (measured with
benchmarks/bench_video_io.py) and right on every container.

Frames come upright (the rotation of the display matrix applied), no input can make a backend
open a URL or another file (video_backends.py), and every failure, truncated files included, is
a `VideoDecodingError` naming the input.
"""

import math
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from .video_backends import BACKEND_PREFERENCE, Unreadable, available_backends, open_video

VideoSource = str | os.PathLike | bytes | bytearray | BinaryIO

SAMPLINGS = ("fps", "per_second")


class VideoDecodingError(ValueError):
    """A video that cannot give the requested frames; `source` names it and `reason` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot decode video {source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):  # DataLoader workers pickle exceptions; the default would drop `reason`
        return type(self), (self.source, self.reason)


@dataclass
class DecodedVideo:
    """Sampled frames of one video and where they come from in its stream."""

    frames: np.ndarray  # uint8 [n, H, W, 3] RGB
    indices: list[int]  # frame indices in the stream, presentation order
    timestamps: list[float]  # seconds, index / fps
    fps: float  # average frame rate of the stream
    num_frames: int  # frames in the stream
    duration: float  # num_frames / fps seconds
    source: str  # the name used in errors


# --------------------------------------------------------------------------------------------
# Sampling


def _check_sampling_arguments(num_frames: int, fps: float, video_framerate: float, max_frames: int) -> None:
    if num_frames < 0 or fps <= 0:
        raise ValueError(f"need num_frames >= 0 and fps > 0, got {num_frames} and {fps}")
    _check_sampling_options(video_framerate, max_frames)


def _check_sampling_options(video_framerate: float, max_frames: int) -> None:
    if int(video_framerate) < 1:
        raise ValueError(f"video_framerate must be at least 1 frame per second, got {video_framerate}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")


def _whole_second_segment(start: float | None, end: float | None) -> tuple[int | None, int | None]:
    """The official segment clean-up: whole seconds, not negative, ordered, at least one second."""
    start = None if start is None else max(int(start), 0)
    end = None if end is None else max(int(end), 0)
    if start is not None and end is not None:
        if start > end:
            start, end = end, start
        elif start == end:
            end = start + 1
    return start, end


def _evenly_spaced(positions: list[int], max_frames: int) -> list[int]:
    if len(positions) <= max_frames:
        return list(positions)
    return [positions[i] for i in np.linspace(0, len(positions) - 1, num=max_frames, dtype=int)]


def sample_frame_indices(
    num_frames: int,
    fps: float,
    video_framerate: float = 1,
    start: float | None = None,
    end: float | None = None,
    max_frames: int = 12,
) -> list[int]:
    """Frame indices of the official MSR-VTT (decord) sampling; empty when the segment holds none.

    Every `round(fps / video_framerate)`-th frame from `int(start * fps)` to
    `min(int(end * fps), num_frames - 1)`, then at most `max_frames` evenly spaced ones.
    """
    _check_sampling_arguments(num_frames, fps, video_framerate, max_frames)
    start, end = _whole_second_segment(start, end)
    first = 0 if start is None else int(start * fps)
    last = int(min(1e9 if end is None else end * fps, num_frames - 1))
    # Python's round (half to even) as in the official code; under 1 frame means every frame.
    stride = max(int(round(fps / int(video_framerate))), 1)
    return _evenly_spaced(list(range(first, last + 1, stride)), max_frames)


def sample_frame_indices_per_second(
    num_frames: int,
    fps: float,
    video_framerate: float = 1,
    start: float | None = None,
    end: float | None = None,
    max_frames: int = 12,
) -> list[int]:
    """Frame indices of the official ActivityNet / DiDeMo (OpenCV) extractor.

    With the integer frame rate `r = int(fps)`, the clip lasts `ceil(num_frames / r)` seconds;
    each whole second `s` from `start` to `min(end, that duration)` inclusive gives frame `s * r`
    (plus `video_framerate - 1` more frames spaced `r // video_framerate` apart), the reading
    stops at the first index past the end of the stream, then at most `max_frames` evenly spaced
    ones are kept.
    """
    _check_sampling_arguments(num_frames, fps, video_framerate, max_frames)
    whole_fps = max(int(fps), 1)  # OpenCV's integer rate; a stream under 1 fps still has frames
    duration = -(-num_frames // whole_fps)
    start, end = _whole_second_segment(start, end)
    first_second = 0 if start is None else start
    last_second = duration if end is None else min(end, duration)
    per_second = int(video_framerate)
    offsets = list(range(0, whole_fps, max(whole_fps // per_second, 1)))[:per_second]
    positions = [second * whole_fps + offset for second in range(first_second, last_second + 1) for offset in offsets]
    # Positions only grow, so dropping those past the end is stopping at the first failed read.
    return _evenly_spaced([position for position in positions if position < num_frames], max_frames)


_SAMPLERS = {"fps": sample_frame_indices, "per_second": sample_frame_indices_per_second}


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", *BACKEND_PREFERENCE):
        raise ValueError(f"unknown video backend {backend!r}; choose 'auto' or one of {BACKEND_PREFERENCE}")
    available = available_backends()
    if backend == "auto":
        if not available:
            raise ImportError("no video backend is installed: pip install decord or av (PyAV)")
        return available[0]
    if backend not in available:
        raise ImportError(f"video backend {backend!r} is not installed or does not load; available: {available}")
    return backend


# --------------------------------------------------------------------------------------------
# Reading


def _describe(source: VideoSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else "<file-like>"


def _path_or_bytes(source: VideoSource) -> str | bytes:
    """A checked absolute path, or the bytes of an in-memory / file-like input (decord reads it all
    anyway). Absolute, so that FFmpeg never reads a relative path such as `http:x` as a URL."""
    if isinstance(source, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(source))
        if not os.path.exists(path):
            raise Unreadable("no such file")
        if os.path.isdir(path):
            raise Unreadable("it is a directory")
        if os.path.getsize(path) == 0:
            raise Unreadable("the file is empty")
        return path
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif hasattr(source, "read"):
        try:
            data = source.read()
        except OSError as error:
            raise Unreadable(f"cannot read it: {error}") from error
    else:
        raise TypeError(f"a video is a path, bytes or a binary file object, not {type(source).__name__}")
    if not data:
        raise Unreadable("the input is empty")
    return data


def read_video(
    source: VideoSource,
    *,
    video_framerate: float = 1,
    max_frames: int = 12,
    start: float | None = None,
    end: float | None = None,
    backend: str = "auto",
    sampling: str = "fps",
    name: str | None = None,
) -> DecodedVideo:
    """Decode the frames of `source` that the official HBI loaders sample.

    Args:
        source: a path, the encoded bytes, or a binary file object (read from its position).
        video_framerate: frames sampled per second of video.
        max_frames: at most this many frames, evenly spaced over the sampled ones.
        start, end: optional segment in seconds (truncated to whole seconds, as officially).
        backend: "auto" (the first of `available_backends()`), "decord", "pyav" or "torchcodec".
        sampling: "fps" (MSR-VTT, `sample_frame_indices`) or "per_second" (ActivityNet / DiDeMo,
            `sample_frame_indices_per_second`).
        name: how errors name the video (defaults to the path, `<bytes>` or `<file-like>`).

    Raises:
        VideoDecodingError: the input is missing, empty, not a video, a playlist or stream
            description, truncated or corrupt, has no video stream or no frames, changes frame size
            mid-stream, its decoder fails, or the segment is not finite or holds no frame.
    """
    if sampling not in _SAMPLERS:
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {SAMPLINGS}")
    _check_sampling_options(video_framerate, max_frames)
    backend = _resolve_backend(backend)
    name = name or _describe(source)
    video = None
    try:
        # A corpus annotation can hold NaN or infinite times: that clip is skipped, not the run.
        if not all(bound is None or math.isfinite(bound) for bound in (start, end)):
            raise Unreadable(f"the segment [{start}, {end}] s is not finite")
        video = open_video(backend, _path_or_bytes(source))
        indices = _sampled_indices(video, _SAMPLERS[sampling], video_framerate, start, end, max_frames)
        frames = np.ascontiguousarray(video.frames_at(indices))
    except Unreadable as error:
        raise VideoDecodingError(name, str(error)) from error
    finally:
        if video is not None:
            video.close()
    return DecodedVideo(
        frames=frames,
        indices=indices,
        timestamps=[index / video.fps for index in indices],
        fps=video.fps,
        num_frames=video.num_frames,
        duration=video.num_frames / video.fps,
        source=name,
    )


def _sampled_indices(video, sample, video_framerate, start, end, max_frames) -> list[int]:
    if video.num_frames == 0:
        raise Unreadable("its video stream has no frames")
    if not video.fps > 0:
        raise Unreadable("its video stream has no frame rate")
    indices = sample(video.num_frames, video.fps, video_framerate, start, end, max_frames)
    if not indices:
        duration = video.num_frames / video.fps
        raise Unreadable(f"no frame in the segment [{start}, {end}] s of a {duration:.2f} s video")
    return indices
