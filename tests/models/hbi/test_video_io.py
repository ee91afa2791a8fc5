"""Video decoding and frame sampling, on small clips written here with PyAV.

Every frame shows its own index as a 4 x 3 grid of black / white 16-pixel cells (one bit each),
which survives lossy compression, so a test can read back which frame a backend returned.
"""

import io
import pickle
from fractions import Fraction

import numpy as np
import pytest

from hbi_transformers.models.hbi.video_io import (
    DecodedVideo,
    VideoDecodingError,
    available_backends,
    read_video,
    sample_frame_indices,
    sample_frame_indices_per_second,
)

av = pytest.importorskip("av")

WIDTH, HEIGHT, CELL = 64, 48, 16
GRID_COLUMNS = WIDTH // CELL
BITS = GRID_COLUMNS * (HEIGHT // CELL)


def frame_showing(index: int) -> np.ndarray:
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for bit in range(BITS):
        if index >> bit & 1:
            row, column = divmod(bit, GRID_COLUMNS)
            frame[row * CELL : (row + 1) * CELL, column * CELL : (column + 1) * CELL] = 255
    return frame


def index_shown(frame: np.ndarray) -> int:
    index = 0
    for bit in range(BITS):
        row, column = divmod(bit, GRID_COLUMNS)
        centre = frame[row * CELL + 4 : (row + 1) * CELL - 4, column * CELL + 4 : (column + 1) * CELL - 4]
        index |= int(centre.mean() > 127) << bit
    return index


def write_clip(path, num_frames, fps=30, codec="libx264", gop=None, durations_ms=None, format=None, options=None):
    """An RGB clip of `num_frames` coded frames; `durations_ms` gives each frame's own duration (VFR)."""
    with av.open(str(path), "w", format=format, options=options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        if durations_ms:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_showing(index), format="rgb24")
            if durations_ms:
                frame.pts, frame.time_base = sum(durations_ms[:index]), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_audio(container, seconds=0.5, rate=16000):
    """Writes a silent audio stream; video streams added before it stay without frames."""
    stream = container.add_stream("aac", rate=rate)
    container.start_encoding()
    for start in range(0, int(seconds * rate), 1024):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {
        "30fps": write_clip(folder / "30fps.mp4", 90),
        "29.97fps": write_clip(folder / "ntsc.mp4", 150, fps=30000 / 1001),
        "mpeg4": write_clip(folder / "mpeg4.mp4", 60, fps=25, codec="mpeg4"),
        "short gops": write_clip(folder / "gop10.mp4", 300, gop=10),
        "mkv": write_clip(folder / "clip.mkv", 45),
        "vfr": write_clip(folder / "vfr.mp4", 60, durations_ms=[20 + 25 * (i % 3) for i in range(60)]),
        "5 frames": write_clip(folder / "five.mp4", 5, fps=10),
    }


BACKENDS = [
    "pyav",
    pytest.param("decord", marks=pytest.mark.skipif("decord" not in available_backends(), reason="no decord")),
]


# --------------------------------------------------------------------------------------------
# Sampling, against the official loaders' arithmetic written out step by step


def official_msrvtt_indices(num_frames, fps, video_framerate, start, end, max_frames):
    if start is not None:
        start, end = int(start), int(end)
        start = start if start >= 0 else 0
        end = end if end >= 0 else 0
        if start > end:
            start, end = end, start
        elif start == end:
            end = start + 1
    first = 0 if start is None else int(start * fps)
    last = int(min(1000000000 if end is None else end * fps, num_frames - 1))
    if last - first + 1 <= 0:
        return []
    stride = int(round(float(fps) / int(video_framerate)))
    positions = list(range(first, last + 1, stride))
    if len(positions) > max_frames:
        return [positions[i] for i in np.linspace(0, len(positions) - 1, num=max_frames, dtype=int)]
    return positions


def official_opencv_indices(num_frames, fps, video_framerate, start, end, max_frames):
    """The OpenCV loop, with reads failing past the end of the stream."""
    start, end = int(start), int(end)
    start, end = max(start, 0), max(end, 0)
    if start > end:
        start, end = end, start
    elif start == end:
        end = end + 1
    fps = int(fps)
    total_duration = (num_frames + fps - 1) // fps
    start_sec, end_sec = start, end if end <= total_duration else total_duration
    interval = max(fps // video_framerate, 1)
    inds = list(np.arange(0, fps, interval))[:video_framerate]
    read = []
    ok = True
    for sec in np.arange(start_sec, end_sec + 1):
        if not ok:
            break
        for ind in inds:
            position = int(sec * fps) + ind
            ok = position < num_frames
            if not ok:
                break
            read.append(int(position))
    if len(read) > max_frames:
        read = [read[i] for i in np.linspace(0, len(read) - 1, num=max_frames, dtype=int)]
    return read


MSRVTT_CASES = [
    # num_frames, fps, video_framerate, start, end, max_frames
    (900, 30, 1, None, None, 12),
    (150, 30000 / 1001, 1, None, None, 12),
    (900, 29.97, 1, 3.7, 17.2, 12),
    (300, 30, 1, 4, 4, 12),  # start == end: one second
    (300, 30, 1, 7.9, 2.5, 12),  # start > end: swapped
    (300, 30, 1, 6, 40, 12),  # segment runs past the end
    (300, 30, 1, 15, 40, 12),  # segment starts after the end
    (300, 30, 1, -4, 3, 12),  # negative start
    (90, 30, 1, None, None, 100),  # fewer frames than max_frames
    (5, 10, 1, None, None, 12),  # half a second
    (250, 25, 10, None, None, 12),  # stride round(2.5) == 2
    (100, 24, 3, None, None, 7),
    (3000, 23.976, 1, 10, 100, 12),
]


@pytest.mark.parametrize("case", MSRVTT_CASES)
def test_fps_sampling_is_the_official_msrvtt_one(case):
    assert sample_frame_indices(*case) == official_msrvtt_indices(*case)


def test_fps_sampling_known_values():
    assert sample_frame_indices(150, 30000 / 1001) == [0, 30, 60, 90, 120]
    assert sample_frame_indices(900, 30) == [0, 60, 150, 210, 300, 390, 450, 540, 630, 690, 780, 870]
    assert sample_frame_indices(300, 30, start=4, end=4) == [120, 150]
    assert sample_frame_indices(300, 30, start=15, end=40) == []
    assert sample_frame_indices(5, 10) == [0]
    assert sample_frame_indices(10, 0.5) == list(range(10))  # stride rounds to 0: every frame


PER_SECOND_CASES = [
    (900, 30, 1, 0, 30, 100),  # 30 s exactly: second 30 is past the end
    (905, 30, 1, 0, 31, 100),  # a partial last second still gives a frame
    (900, 29.97, 1, 0, 40, 12),  # integer fps 29, linspace to 12
    (300, 25, 1, 3, 3, 12),
    (300, 25, 1, 9, 2, 12),
    (300, 25, 1, 20, 30, 12),  # starts after the end
    (5, 10, 1, 0, 1, 12),
    (300, 30, 2, 0, 5, 12),  # two frames a second, 15 apart
    (200, 0.6, 1, 0, 20, 12),  # under 1 fps: one frame per frame
]


@pytest.mark.parametrize("case", PER_SECOND_CASES)
def test_per_second_sampling_is_the_official_opencv_one(case):
    num_frames, fps = case[:2]
    if fps < 1:  # the official extractor divides by int(fps) == 0; here the rate counts as 1
        assert sample_frame_indices_per_second(*case) == official_opencv_indices(num_frames, 1, *case[2:])
    else:
        assert sample_frame_indices_per_second(*case) == official_opencv_indices(*case)


def test_per_second_sampling_known_values():
    assert sample_frame_indices_per_second(905, 30, max_frames=100)[-2:] == [870, 900]
    assert sample_frame_indices_per_second(300, 30, 2, start=0, end=1) == [0, 15, 30, 45]
    # No segment: the whole clip, from second 0 to its rounded-up duration.
    assert sample_frame_indices_per_second(90, 30) == [0, 30, 60]


def test_sampling_rejects_impossible_settings():
    with pytest.raises(ValueError, match="max_frames"):
        sample_frame_indices(90, 30, max_frames=0)
    with pytest.raises(ValueError, match="video_framerate"):
        sample_frame_indices_per_second(90, 30, video_framerate=0.5)


# --------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", ["30fps", "29.97fps", "mpeg4", "short gops", "mkv", "vfr", "5 frames"])
def test_frames_are_the_sampled_ones(clips, clip, backend):
    video = read_video(clips[clip], backend=backend, max_frames=8)
    assert isinstance(video, DecodedVideo)
    assert video.frames.dtype == np.uint8 and video.frames.shape == (len(video.indices), HEIGHT, WIDTH, 3)
    assert video.indices == sample_frame_indices(video.num_frames, video.fps, max_frames=8)
    assert [index_shown(frame) for frame in video.frames] == video.indices
    assert video.timestamps == pytest.approx([index / video.fps for index in video.indices])
    assert video.duration == pytest.approx(video.num_frames / video.fps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_properties(clips, backend):
    ntsc = read_video(clips["29.97fps"], backend=backend)
    assert (ntsc.num_frames, ntsc.fps) == (150, pytest.approx(30000 / 1001))
    assert ntsc.indices == [0, 30, 60, 90, 120]
    assert read_video(clips["mkv"], backend=backend).num_frames == 45  # MKV has no frame count
    vfr = read_video(clips["vfr"], backend=backend)
    assert vfr.num_frames == 60 and 20 < vfr.fps < 25  # 60 frames over ~2.7 s


@pytest.mark.parametrize("backend", BACKENDS)
def test_segments_and_per_second_sampling(clips, backend):
    path = clips["short gops"]  # 10 s at 30 fps
    segment = read_video(path, backend=backend, start=2.5, end=6.9, video_framerate=2, max_frames=100)
    assert segment.indices == list(range(60, 181, 15))
    assert [index_shown(frame) for frame in segment.frames] == segment.indices
    per_second = read_video(path, backend=backend, sampling="per_second", max_frames=100)
    assert per_second.indices == list(range(0, 300, 30))
    assert [index_shown(frame) for frame in per_second.frames] == per_second.indices


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_shorter_than_a_second(clips, backend):
    path = clips["5 frames"]
    assert read_video(path, backend=backend).indices == [0]
    every_frame = read_video(path, backend=backend, video_framerate=30)
    assert [index_shown(frame) for frame in every_frame.frames] == [0, 1, 2, 3, 4]


def test_decord_and_pyav_frames_are_identical(clips):
    pytest.importorskip("decord")
    for path in clips.values():
        from_pyav = read_video(path, backend="pyav", video_framerate=5, max_frames=16)
        from_decord = read_video(path, backend="decord", video_framerate=5, max_frames=16)
        assert from_pyav.indices == from_decord.indices
        np.testing.assert_array_equal(from_pyav.frames, from_decord.frames)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_and_file_objects(clips, backend):
    path = clips["30fps"]
    data = path.read_bytes()
    from_bytes = read_video(data, backend=backend)
    from_file = read_video(io.BytesIO(data), backend=backend, name="clip-7")
    assert from_bytes.source == "<bytes>" and from_file.source == "clip-7"
    assert from_bytes.indices == from_file.indices == [0, 30, 60]
    np.testing.assert_array_equal(from_bytes.frames, from_file.frames)
    with open(path, "rb") as file:
        assert read_video(file, backend=backend).source == "<file-like>"


def test_pyav_reads_streams_without_timestamps_or_exact_seeks(tmp_path):
    raw = write_clip(tmp_path / "raw.h264", 60, fps=25, format="h264")  # no timestamps at all
    transport = write_clip(tmp_path / "clip.ts", 90, gop=10, format="mpegts")  # seeks overshoot
    for path in (raw, transport):
        video = read_video(path, backend="pyav", video_framerate=3, max_frames=20)
        assert len(video.indices) > 3
        assert [index_shown(frame) for frame in video.frames] == video.indices


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture(scope="module")
def bad_inputs(clips, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "folder.mp4").mkdir()
    (folder / "empty.mp4").write_bytes(b"")
    whole = clips["short gops"].read_bytes()
    (folder / "first_half.mp4").write_bytes(whole[: len(whole) // 2])
    faststart = write_clip(folder / "faststart.mp4", 300, gop=10, options={"movflags": "faststart"}).read_bytes()
    (folder / "faststart_half.mp4").write_bytes(faststart[: len(faststart) // 2])
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with av.open(str(folder / "audio_only.mp4"), "w") as container:
        write_audio(container)
    with av.open(str(folder / "no_frames.mkv"), "w") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        write_audio(container)
    return folder


BAD_FILES = [
    "missing.mp4",
    "folder.mp4",
    "empty.mp4",
    "first_half.mp4",
    "faststart_half.mp4",
    "garbage.mp4",
    "audio_only.mp4",
    "no_frames.mkv",
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("file_name", BAD_FILES)
def test_bad_files_raise_a_decoding_error_naming_them(bad_inputs, file_name, backend):
    with pytest.raises(VideoDecodingError, match=file_name) as raised:
        read_video(bad_inputs / file_name, backend=backend)
    assert raised.value.source == str(bad_inputs / file_name) and raised.value.reason


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_bytes_raise_a_decoding_error(bad_inputs, backend):
    for file_name in BAD_FILES[2:]:
        data = (bad_inputs / file_name).read_bytes()
        with pytest.raises(VideoDecodingError, match="<bytes>"):
            read_video(data, backend=backend)
        with pytest.raises(VideoDecodingError, match="upload-3"):
            read_video(io.BytesIO(data), backend=backend, name="upload-3")


@pytest.mark.parametrize("backend", BACKENDS)
def test_segment_without_frames(clips, backend):
    path = clips["30fps"]  # 3 s
    with pytest.raises(VideoDecodingError, match=r"30fps\.mp4: no frame in the segment"):
        read_video(path, backend=backend, start=5, end=9)
    # An end before the start is swapped and negative times are clipped, as officially.
    assert read_video(path, backend=backend, start=-6, end=-2).indices == [0, 30]


def test_reasons_are_specific(bad_inputs):
    reasons = {
        "missing.mp4": "no such file",
        "folder.mp4": "directory",
        "empty.mp4": "empty",
        "faststart_half.mp4": "truncated",
        "audio_only.mp4": "no video stream",
        "no_frames.mkv": "no frames",
    }
    for file_name, reason in reasons.items():
        with pytest.raises(VideoDecodingError, match=reason):
            read_video(bad_inputs / file_name, backend="pyav")


def test_decoding_error_survives_pickling():
    error = pickle.loads(pickle.dumps(VideoDecodingError("a.mp4", "it is a directory")))
    assert (error.source, error.reason) == ("a.mp4", "it is a directory")
    assert str(error) == "cannot decode video a.mp4: it is a directory"


def test_backend_choice(clips):
    assert "pyav" in available_backends()
    assert read_video(clips["30fps"]).indices == [0, 30, 60]  # "auto"
    with pytest.raises(ValueError, match="unknown video backend"):
        read_video(clips["30fps"], backend="opencv")
    with pytest.raises(ValueError, match="unknown sampling"):
        read_video(clips["30fps"], sampling="uniform")
    if "torchcodec" not in available_backends():
        with pytest.raises(ImportError, match="torchcodec"):
            read_video(clips["30fps"], backend="torchcodec")
