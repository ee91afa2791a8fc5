"""Fault injection: every way a video fails to decode is a `VideoDecodingError` naming it (so that
a corpus skips and counts the clip instead of crashing training), a rotated video comes out
upright, and no input makes a backend reach the network. Clips are tiny (32 pixels, <= 4 s)."""

import io
import socket
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from conftest import textured_frames

from hbi_transformers.models.hbi.video_io import VideoDecodingError, available_backends, read_video

av = pytest.importorskip("av")

BACKENDS = [
    "pyav",
    *(
        pytest.param(name, marks=pytest.mark.skipif(name not in available_backends(), reason=f"no {name}"))
        for name in ("decord", "torchcodec")
    ),
]
CODECS = {"mp4": "libx264", "mkv": "libx264", "webm": "libvpx-vp9", "avi": "mpeg4"}
FPS = 10


def write_clip(path, frames, rotation=None, audio_seconds=0.0, options=None):
    """`frames` at 10 fps in the container of `path`'s suffix: H.264 4:4:4 at crf 0 where the codec
    is H.264 (decoded frames within 2 of the written ones), with a display matrix rotating them
    `rotation` degrees counter-clockwise, and a silent track of `audio_seconds`."""
    container_format = path.suffix[1:]
    with av.open(str(path), "w", format={"mkv": "matroska"}.get(container_format), options=options or {}) as output:
        video = output.add_stream(CODECS[container_format], rate=FPS)
        video.height, video.width = frames.shape[1:3]
        if CODECS[container_format] == "libx264":
            video.pix_fmt, video.options = "yuv444p", {"crf": "0"}
        else:
            video.pix_fmt = "yuv420p"
        if rotation is not None:
            video.set_display_rotation(rotation)
        audio_codec = "libopus" if container_format == "webm" else "aac"
        audio = output.add_stream(audio_codec, rate=48000) if audio_seconds else None
        for frame in frames:
            output.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(video.encode())
        for start in range(0, int(audio_seconds * 48000), 960):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 48000, start
            output.mux(audio.encode(samples))
        if audio:
            output.mux(audio.encode())
    return path


def raw_h264(frames) -> bytes:
    """An Annex B H.264 stream, which carries its own parameter sets: two of them concatenated
    are one stream that changes frame size."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="h264") as output:
        video = output.add_stream("libx264", rate=FPS)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt, video.options = "yuv420p", {"bf": "0"}
        for frame in frames:
            output.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(video.encode())
    return buffer.getvalue()


def write_size_change(path, first, then):
    """`first` then `then` (frames of another size) remuxed into one stream of `path`'s container."""
    stream_bytes = raw_h264(first) + raw_h264(then)
    with av.open(io.BytesIO(stream_bytes), format="h264") as source, av.open(str(path), "w") as output:
        video = output.add_stream_from_template(source.streams.video[0])
        for index, packet in enumerate(packet for packet in source.demux(video=0) if packet.size):
            packet.pts = packet.dts = index
            packet.duration, packet.time_base, packet.stream = 1, Fraction(1, FPS), video
            output.mux(packet)
    return path


def video_packet_position(path, index) -> int:
    """The byte offset of the `index`-th video packet: cutting the file there keeps `index` frames."""
    with av.open(str(path)) as container:
        positions = [packet.pos for packet in container.demux(video=0) if packet.size]
    return positions[index]


# --------------------------------------------------------------------------------------------
# Errors that escaped as other exceptions


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("container", ["mkv", "mp4"])
def test_frame_size_change_mid_stream(tmp_path, container, backend):
    path = write_size_change(tmp_path / f"sizes.{container}", textured_frames(5, 32, 32), textured_frames(5, 32, 64))
    reason = r"sizes\.\w+: its frame size changes mid-stream \(32x32, then 64x32\)"
    if backend == "pyav":
        with pytest.raises(VideoDecodingError, match=reason):
            read_video(path, backend=backend, video_framerate=FPS)
    else:  # decord scales every frame to the size in the stream's header: nothing to raise
        assert len(read_video(path, backend=backend, video_framerate=FPS).frames) == 10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("segment", [(float("nan"), 5), (0, float("inf")), (float("-inf"), float("nan"))])
def test_non_finite_segment_bounds(tmp_path, segment, backend):
    path = write_clip(tmp_path / "clip.mp4", textured_frames(10, 32, 32))
    with pytest.raises(VideoDecodingError, match=r"clip\.mp4: the segment \[.*\] s is not finite") as raised:
        read_video(path, backend=backend, start=segment[0], end=segment[1])
    assert raised.value.source == str(path)


def test_processor_raises_a_decoding_error_for_non_finite_segments(tmp_path):
    from hbi_transformers import HBIVideoProcessor

    path = write_clip(tmp_path / "clip.mp4", textured_frames(10, 32, 32))
    processor = HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, max_frames=4)
    with pytest.raises(VideoDecodingError, match="not finite"):
        processor([str(path)], video_segments=[(float("nan"), 5)])


# --------------------------------------------------------------------------------------------
# Truncation


@pytest.fixture(scope="module")
def whole_clips(tmp_path_factory):
    """4 s clips (40 frames): Matroska, WebM, faststart MP4 (whose header survives a cut), AVI,
    and some with an audio track that outlasts the video by 1 s."""
    folder = tmp_path_factory.mktemp("whole")
    frames = textured_frames(40, 32, 32)
    return {
        "mkv": write_clip(folder / "clip.mkv", frames),
        "webm": write_clip(folder / "clip.webm", frames),
        "mp4": write_clip(folder / "clip.mp4", frames, options={"movflags": "faststart"}),
        "avi": write_clip(folder / "clip.avi", frames),
        "mkv with audio": write_clip(folder / "audio.mkv", frames, audio_seconds=5),
        "webm with audio": write_clip(folder / "audio.webm", frames, audio_seconds=5),
        "mp4 with audio": write_clip(folder / "audio.mp4", frames, audio_seconds=5),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", ["mkv", "webm", "mp4", "avi", "mkv with audio", "webm with audio", "mp4 with audio"])
def test_whole_clips_are_not_taken_for_truncated(whole_clips, clip, backend):
    video = read_video(whole_clips[clip], backend=backend, video_framerate=FPS, max_frames=40)
    assert video.num_frames == 40 and video.indices == list(range(40))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", ["mkv", "webm", "mp4", "mkv with audio", "webm with audio"])
def test_truncated_clips_raise(whole_clips, clip, backend, tmp_path):
    path = whole_clips[clip]
    cut = tmp_path / f"cut{path.suffix}"
    cut.write_bytes(path.read_bytes()[: video_packet_position(path, 15)])  # 1.5 s of 4 s left
    with pytest.raises(VideoDecodingError, match=r"cut\.\w+: truncated: "):
        read_video(cut, backend=backend)
    with pytest.raises(VideoDecodingError, match="<bytes>: truncated: "):
        read_video(cut.read_bytes(), backend=backend)


# --------------------------------------------------------------------------------------------
# Rotation


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("container", ["mp4", "mkv"])
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_clips_come_upright(tmp_path, container, degrees, backend):
    frames = textured_frames(3, 64, 32)  # portrait: a quarter turn swaps height and width
    path = write_clip(tmp_path / f"rotated.{container}", frames, rotation=degrees)
    video = read_video(path, backend=backend, video_framerate=FPS)
    upright = np.rot90(frames, degrees // 90, axes=(1, 2))
    assert video.frames.shape == upright.shape
    assert np.abs(video.frames.astype(int) - upright).max() <= 2  # RGB -> YUV rounding


def test_rotation_keeps_decord_and_pyav_identical(tmp_path):
    pytest.importorskip("decord")
    for container in ("mp4", "mkv"):
        path = write_clip(tmp_path / f"rotated.{container}", textured_frames(3, 64, 32), rotation=90)
        from_pyav = read_video(path, backend="pyav", video_framerate=FPS).frames
        np.testing.assert_array_equal(from_pyav, read_video(path, backend="decord", video_framerate=FPS).frames)


# --------------------------------------------------------------------------------------------
# No network


@pytest.fixture
def listener():
    """The port of a TCP server on 127.0.0.1, and the connections it got: it drops each at once,
    so that a decoder reaching it fails fast instead of waiting for an answer."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    connections, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, address = server.accept()
            except TimeoutError:
                continue
            connections.append(address)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], connections
    stop.set()
    thread.join()
    server.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# An SDP description makes FFmpeg open RTP sockets on its port and wait 10 s for packets there.
PLAYLISTS = {
    "hls": "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1:{tcp}/x.ts\n#EXT-X-ENDLIST\n",
    "hls, minimal": "#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:{tcp}/x.ts\n",
    "hls variants": "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhttp://127.0.0.1:{tcp}/x.m3u8\n",
    "concat": "ffconcat version 1.0\nfile 'http://127.0.0.1:{tcp}/x.mp4'\n",
    "dash": '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><Period><AdaptationSet>'
    '<Representation id="1" bandwidth="1"><BaseURL>http://127.0.0.1:{tcp}/x.mp4</BaseURL></Representation>'
    "</AdaptationSet></Period></MPD>",
    "sdp": "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video {udp} RTP/AVP 96\n"
    "a=rtpmap:96 H264/90000\n",
    # FFmpeg finds SDP by a "c=IN IP" line anywhere: only the backends' own guards stop this one.
    "sdp without its header": "s=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video {udp} RTP/AVP 96\na=rtpmap:96 H264/90000\n",
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "path"])
@pytest.mark.parametrize("playlist", PLAYLISTS)
def test_playlists_and_stream_descriptions_reach_no_network(listener, playlist, as_bytes, backend, tmp_path,
                                                            monkeypatch):
    port, connections = listener
    data = PLAYLISTS[playlist].format(tcp=port, udp=free_udp_port()).encode()
    path = tmp_path / ("stream.sdp" if "sdp" in playlist else "playlist.m3u8")
    path.write_bytes(data)

    def no_connection(*args):
        raise AssertionError("a decoder opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_connection)
    started = time.monotonic()
    with pytest.raises(VideoDecodingError, match="<bytes>" if as_bytes else r"playlist\.m3u8|stream\.sdp"):
        read_video(data if as_bytes else path, backend=backend)
    assert time.monotonic() - started < 5
    time.sleep(0.1)  # the server's accept loop
    assert connections == []


# --------------------------------------------------------------------------------------------
# Library exceptions


class FailingDecode:
    """A PyAV container whose decoding raises `error`."""

    def __init__(self, container, error):
        self._container, self._error = container, error

    def __getattr__(self, name):
        return getattr(self._container, name)

    def decode(self, *args, **kwargs):
        raise self._error

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self._container.close()


PYAV_ERRORS = {
    "InvalidDataError": lambda: av.error.InvalidDataError(1094995529, "Invalid data found when processing input"),
    "av EOFError": lambda: av.error.EOFError(541478725, "End of file"),
    "MemoryError": lambda: av.error.MemoryError(12, "Cannot allocate memory"),
    "OSError": lambda: OSError(5, "Input/output error"),
    "EOFError": lambda: EOFError("end of stream"),
}


@pytest.mark.parametrize("phase", ["open", "decode"])
@pytest.mark.parametrize("error", PYAV_ERRORS)
def test_pyav_exceptions_become_decoding_errors(tmp_path, monkeypatch, phase, error):
    path = write_clip(tmp_path / "clip.mp4", textured_frames(10, 32, 32))
    real_open = av.open

    def failing_open(*args, **kwargs):
        if phase == "open":
            raise PYAV_ERRORS[error]()
        return FailingDecode(real_open(*args, **kwargs), PYAV_ERRORS[error]())

    monkeypatch.setattr(av, "open", failing_open)
    with pytest.raises(VideoDecodingError, match=r"clip\.mp4: pyav failed: \S") as raised:
        read_video(path, backend="pyav")
    assert raised.value.source == str(path)
    with pytest.raises(VideoDecodingError, match="upload-1: pyav failed"):
        read_video(path.read_bytes(), backend="pyav", name="upload-1")


def raising(error):
    """A stand-in for a library function: it raises `error`, whatever it is called with."""

    def function(*args, **kwargs):
        raise error

    return function


def test_decord_exceptions_become_decoding_errors(tmp_path, monkeypatch):
    decord = pytest.importorskip("decord")
    from decord._ffi.base import DECORDError

    path = write_clip(tmp_path / "clip.mp4", textured_frames(10, 32, 32))
    errors = [
        DECORDError("[10:00:00] src/video/video_reader.cc:99: cannot decode"),
        RuntimeError("Error reading x..."),
        AssertionError("Invalid frame count: 0"),
    ]
    for error in errors:
        with monkeypatch.context() as patch:
            patch.setattr(decord, "VideoReader", raising(error))
            with pytest.raises(VideoDecodingError, match=r"clip\.mp4: decord failed: \S"):
                read_video(path, backend="decord")
        with monkeypatch.context() as patch:
            patch.setattr(decord.VideoReader, "get_batch", raising(error))
            with pytest.raises(VideoDecodingError, match="<bytes>: decord failed"):
                read_video(path.read_bytes(), backend="decord")


@pytest.mark.parametrize("backend", BACKENDS[:2])
def test_programming_errors_are_not_hidden(tmp_path, monkeypatch, backend):
    """A TypeError from a library means we called it wrong: a bug to see, not a video to skip."""
    path = write_clip(tmp_path / "clip.mp4", textured_frames(10, 32, 32))
    if backend == "pyav":
        monkeypatch.setattr(av, "open", raising(TypeError("bad argument")))
    else:
        import decord

        monkeypatch.setattr(decord.VideoReader, "get_batch", raising(TypeError("bad argument")))
    with pytest.raises(TypeError, match="bad argument"):
        read_video(path, backend=backend)
