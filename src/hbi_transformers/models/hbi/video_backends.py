"""The decoding backends of `video_io`: PyAV, decord and torchcodec behind one small interface.

`open_video(backend, source)` opens a path (str) or in-memory bytes and returns an object with
`num_frames`, `fps`, `frames_at(indices) -> uint8 [n, H, W, 3]` (upright: rotation metadata
applied) and `close()`. Every failure, of the file or of the library, is an `Unreadable` with a
short reason; `read_video` turns it into a `VideoDecodingError` naming the file.

No input may make a backend reach the network or open other files: playlists and stream
descriptions are refused by their first bytes, PyAV opens inputs with FFmpeg's protocol and
demuxer whitelists, and decord and torchcodec, which cannot pass options to FFmpeg, only get
MP4 / MOV, Matroska / WebM and AVI files, the containers that win FFmpeg's probe outright.

The decoders are imported with `importlib.import_module` where they are used: transformers'
remote-code loader reads the `import` statements of every module of the model folder and refuses
to load it unless all the packages they name are installed, and a user needs only one decoder.
"""

import importlib
import io
import math
import re
from contextlib import contextmanager
from functools import cache

import numpy as np

BACKEND_PREFERENCE = ("pyav", "decord", "torchcodec")
_BACKEND_MODULES = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec.decoders"}
_DECORD_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")
_MAX_REASON = 200

# The first bytes of inputs that name other files or URLs for FFmpeg to open.
_REFERENCE_MARKERS = {
    b"#EXTM3U": "an HLS playlist",
    b"ffconcat": "an FFmpeg concat script",
    b"<?xml": "an XML document (a DASH manifest?)",
    b"<MPD": "a DASH manifest",
    b"v=0": "an SDP stream description",
}
# FFmpeg demuxers that open what their input names (the checks above only see the usual cases).
_REFERENCING_DEMUXERS = {"hls", "dash", "concat", "sdp", "rtsp", "rtp", "imf", "avisynth", "vapoursynth"}
_KNOWN_CONTAINERS_ONLY = (
    "{} only reads MP4 / MOV, Matroska / WebM and AVI files here (with other formats its FFmpeg "
    "could fetch files or URLs that the input names): use backend='pyav'"
)
# A cut file misses more than this; a whole one ends within about a frame of its declared
# duration (the last frame of a variable rate stream may have no duration of its own).
_TRUNCATION_SLACK_S = 1.0


class Unreadable(Exception):
    """A video that cannot be decoded; the message is the reason."""


@cache
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except (ImportError, OSError, RuntimeError):  # torchcodec installs but fails to load without FFmpeg
        return False
    return True


def available_backends() -> list[str]:
    """Installed backends that load, in order of preference: `backend="auto"` uses the first."""
    return [name for name in BACKEND_PREFERENCE if _importable(_BACKEND_MODULES[name])]


def open_video(backend: str, source: str | bytes):
    """`source` opened with `backend`, once its first bytes show it names nothing else to open."""
    head = _first_bytes(source)
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    for marker, kind in _REFERENCE_MARKERS.items():
        if text.startswith(marker):
            raise Unreadable(f"it is {kind}, which would make the decoder open other files or URLs")
    return _BACKENDS[backend](source, _container_kind(head))


def _container_kind(head: bytes) -> str | None:
    """"mp4" (ISO media: MP4, MOV, 3GP), "matroska" (MKV, WebM) or "avi" when the first bytes of
    a file say so unambiguously (each scores highest in FFmpeg's probe), else None."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3") and (b"matroska" in head or b"webm" in head):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    return None


def _first_bytes(source: str | bytes, size: int = 64) -> bytes:
    if isinstance(source, bytes):
        return source[:size]
    try:
        with open(source, "rb") as file:
            return file.read(size)
    except OSError as error:
        raise Unreadable(f"cannot read it: {error.strerror or error}") from error


@contextmanager
def _library_calls(backend: str, errors: tuple[type[BaseException], ...]):
    """Turns the exceptions a decoding library raises into `Unreadable`. Only the types that
    library raises for bad input are caught, so that errors of ours still surface as bugs."""
    try:
        yield
    except errors as error:
        raise Unreadable(f"{backend} failed: {_short_message(error)}") from error


def _short_message(error: BaseException) -> str:
    """The first line of a library's message, without decord's `[time] file.cc:line: ` prefix."""
    lines = str(error).strip().splitlines()
    message = _DECORD_LOG_PREFIX.sub("", lines[0]) if lines else type(error).__name__
    return message if len(message) <= _MAX_REASON else message[: _MAX_REASON - 3] + "..."


def _quarter_turns(degrees: float) -> int:
    """Counter-clockwise quarter turns (as np.rot90 counts) nearest a display matrix rotation."""
    return round(degrees / 90) % 4


class _PyAVVideo:
    """PyAV with exact, VFR-safe seeking.

    Opening demuxes the video packets without decoding them (a few ms for 900 frames): their
    count is the frame count (container metadata is absent from MKV / WebM and not needed), and
    their sorted timestamps map each frame index to its pts and to the keyframe before it.
    Reading then decodes forward, seeking to a target's keyframe only when that skips frames,
    and converts to RGB only the frames it keeps. On 30 s 320x240 H.264 clips this is as fast as
    decoding every frame up to the last one with 250-frame GOPs, and 4x faster with 30-frame GOPs
    (benchmarks/bench_video_io.py).
    Streams without timestamps (raw .h264 / .m4v), and MPEG-TS whose seeks land past their
    target, are decoded from the start, frames counted in the order they come out.
    A cut file shows by fewer packets than the header's frame count or, in Matroska (which has no
    frame count), by streams that end before the header's duration. Frames are turned upright by
    the rotation of their display matrix.
    """

    def __init__(self, source: str | bytes, kind: str | None):
        self._source = source
        self._matroska = kind == "matroska"
        with self._library_calls():
            self._container = self._open()
            try:
                self._read_stream_index()
            except BaseException:
                self._container.close()
                raise

    @staticmethod
    def _library_calls():
        av = importlib.import_module("av")

        # av.error.* are FFmpeg's failures (each also an OSError, ValueError, EOFError... as fits);
        # plain OSError and EOFError come from reading the input.
        return _library_calls("pyav", (av.FFmpegError, OSError, EOFError))

    def _open(self):
        av = importlib.import_module("av")

        is_path = isinstance(self._source, str)
        # The input itself and nothing else: no protocol but the file's ("none" names none), no
        # demuxer that opens what the input names.
        options = {"format_whitelist": _pyav_demuxers(), "protocol_whitelist": "file" if is_path else "none"}
        return av.open(self._source if is_path else io.BytesIO(self._source), container_options=options)

    def _read_stream_index(self) -> None:
        if not self._container.streams.video:
            raise Unreadable("it has no video stream")
        self._stream = self._container.streams.video[0]
        self.fps = float(self._stream.average_rate or self._stream.guessed_rate or 0)
        # Matroska has no frame count: where all its streams end shows whether it is cut.
        packets, present, end = [], 0, -math.inf
        for packet in self._container.demux(*(() if self._matroska else (self._stream,))):
            if not packet.size:
                continue
            if self._matroska and packet.pts is not None:
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            if packet.stream_index == self._stream.index:
                present += 1
                if not packet.is_discard:
                    packets.append((packet.pts, packet.is_keyframe))
        # FFmpeg stops quietly at the end of a cut file; the header's frame count or duration tells.
        if present < self._stream.frames:
            raise Unreadable(f"truncated: {present} of {self._stream.frames} frames are present")
        if self._matroska:
            self._check_declared_duration(end)
        self.num_frames = len(packets)
        self._has_timestamps = all(pts is not None for pts, _ in packets)
        if self._has_timestamps:
            self._index_packets(sorted(packets))

    def _check_declared_duration(self, end: float) -> None:
        if self._container.duration is None or end == -math.inf:
            return
        declared = self._container.duration / 1e6
        present = end - (self._container.start_time or 0) / 1e6
        if declared - present > max(_TRUNCATION_SLACK_S, 2 / self.fps if self.fps else 0):
            raise Unreadable(
                f"truncated: its streams end at {present:.2f} s of the {declared:.2f} s its header declares"
            )

    def _index_packets(self, packets: list[tuple[int, bool]]) -> None:
        self._pts = [pts for pts, _ in packets]
        self._index_of_pts = {pts: index for index, pts in enumerate(self._pts)}
        self._keyframe_before = []
        keyframe = 0
        for index, (_, is_keyframe) in enumerate(packets):
            keyframe = index if is_keyframe else keyframe
            self._keyframe_before.append(keyframe)

    def frames_at(self, indices: list[int]) -> np.ndarray:
        wanted = sorted(set(indices))
        with self._library_calls():
            decoded = self._decode_by_seeking(wanted) if self._has_timestamps else None
            if decoded is None:
                decoded = self._decode_in_order(wanted)
        sizes = list(dict.fromkeys(f"{frame.shape[1]}x{frame.shape[0]}" for frame in decoded.values()))
        if len(sizes) > 1:
            raise Unreadable(f"its frame size changes mid-stream ({', then '.join(sizes)})")
        return np.stack([decoded[index] for index in indices])

    def first_frame_turns(self) -> int:
        """The quarter turns that make the first frame upright (0 without frames)."""
        with self._library_calls(), self._open() as container:  # indexing left self._container at its end
            for frame in container.decode(video=0):
                return _quarter_turns(frame.rotation)
        return 0

    def _decode_by_seeking(self, wanted: list[int]) -> dict[int, np.ndarray] | None:
        """The wanted frames, or None when a seek lands past its frame (MPEG-TS seeks are coarse)."""
        decoded, frames, next_index = {}, None, 0
        for target in wanted:
            keyframe = self._keyframe_before[target]
            if frames is None or keyframe > next_index:
                self._container.seek(self._pts[keyframe], stream=self._stream)
                frames = self._container.decode(self._stream)
            for frame in frames:
                index = self._index_of_pts.get(frame.pts)
                if index is None or index < target:
                    continue
                if index > target:
                    return None
                decoded[target] = _upright(frame)
                next_index = index + 1
                break
            else:
                return None
        return decoded

    def _decode_in_order(self, wanted: list[int]) -> dict[int, np.ndarray]:
        decoded = {}
        with self._open() as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    decoded[index] = _upright(frame)
                    if len(decoded) == len(wanted):
                        return decoded
        raise Unreadable(f"the stream ended before frame {wanted[len(decoded)]}")

    def close(self) -> None:
        self._container.close()


def _upright(frame) -> np.ndarray:
    """RGB pixels of a PyAV frame as displayed: turned by its display matrix's rotation."""
    pixels = frame.to_ndarray(format="rgb24")
    turns = _quarter_turns(frame.rotation)
    return np.rot90(pixels, turns) if turns else pixels


@cache
def _pyav_demuxers() -> str:
    """FFmpeg's format whitelist: every format PyAV knows but those opening what their input names."""
    av = importlib.import_module("av")

    names = (name for name in av.formats_available if not set(name.split(",")) & _REFERENCING_DEMUXERS)
    return ",".join(sorted(names))


def _checked_by_pyav(source: str | bytes, kind: str, turns: bool) -> int:
    """For backends that stop quietly at the end of a cut file: PyAV, when installed, checks that
    the file is whole (frame count, or Matroska's duration) and, if asked, returns the quarter
    turns of its first frame (0 otherwise, and without PyAV)."""
    if not _importable("av"):
        return 0
    probe = _PyAVVideo(source, kind)
    try:
        return probe.first_frame_turns() if turns else 0
    finally:
        probe.close()


class _DecordVideo:
    """decord 0.6, with PyAV's checks of cut files and Matroska rotation, which it lacks."""

    def __init__(self, source: str | bytes, kind: str | None):
        if kind is None:
            raise Unreadable(_KNOWN_CONTAINERS_ONLY.format("decord"))
        # decord's FFmpeg (4.1) turns MP4 frames upright but does not read Matroska's display matrix.
        self._turns = _checked_by_pyav(source, kind, turns=kind == "matroska")
        decord = importlib.import_module("decord")

        with self._library_calls():
            # decord's default (FFmpeg-chosen) thread count, as the official loader uses.
            self._reader = decord.VideoReader(source if isinstance(source, str) else io.BytesIO(source))
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())

    @staticmethod
    def _library_calls():
        DECORDError = importlib.import_module("decord._ffi.base").DECORDError

        # DECORDError: FFmpeg's failures; RuntimeError: a file it cannot open; AssertionError: how
        # VideoReader rejects a stream without frames.
        return _library_calls("decord", (DECORDError, RuntimeError, AssertionError))

    def frames_at(self, indices: list[int]) -> np.ndarray:
        with self._library_calls():
            frames = self._reader.get_batch(indices).asnumpy()
        return np.rot90(frames, self._turns, axes=(1, 2)) if self._turns else frames

    def close(self) -> None:
        self._reader = None


class _TorchCodecVideo:
    """torchcodec; releases from 0.11 turn frames upright themselves, older ones cannot (they do
    not expose the rotation)."""

    def __init__(self, source: str | bytes, kind: str | None):
        if kind is None:
            raise Unreadable(_KNOWN_CONTAINERS_ONLY.format("torchcodec"))
        _checked_by_pyav(source, kind, turns=False)
        VideoDecoder = importlib.import_module("torchcodec.decoders").VideoDecoder

        with self._library_calls():
            self._decoder = VideoDecoder(source, dimension_order="NHWC", seek_mode="exact")
            metadata = self._decoder.metadata
            self.num_frames = len(self._decoder)
        self.fps = float(metadata.average_fps or 0)
        if metadata.num_frames_from_header and self.num_frames < metadata.num_frames_from_header:
            raise Unreadable(f"truncated: {self.num_frames} of {metadata.num_frames_from_header} frames are present")

    @staticmethod
    def _library_calls():
        # RuntimeError: FFmpeg's failures; ValueError: an input it cannot take; IndexError: a
        # frame past the end of the stream.
        return _library_calls("torchcodec", (RuntimeError, ValueError, IndexError))

    def frames_at(self, indices: list[int]) -> np.ndarray:
        with self._library_calls():
            return self._decoder.get_frames_at(indices).data.numpy()

    def close(self) -> None:
        self._decoder = None


_BACKENDS = {"decord": _DecordVideo, "pyav": _PyAVVideo, "torchcodec": _TorchCodecVideo}
