"""Rendering: a clip's frames drawn with numpy (anti-aliased shapes over a textured backdrop), and
the H.264 mp4 writer with its machine-independent yuv420p conversion."""

import os
from collections.abc import Sequence

import numpy as np

from .scripts import TRIANGLE_SCALE, ClipPlan, Event, ShapeState, _extent, simulate
from .vocabulary import COLOURS


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A dark, low-saturation backdrop (far from every shape colour): a gentle gradient, and for
    half the clips soft ripples."""
    y = (np.arange(height)[:, None] + 0.5) / height - 0.5
    x = (np.arange(width)[None, :] + 0.5) / width - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    shade = rng.uniform(30, 70) + rng.uniform(0, 20) * (x * np.cos(angle) + y * np.sin(angle))
    if rng.random() < 0.5:
        frequency = rng.uniform(2, 5, size=2)
        shade = shade + rng.uniform(3, 8) * np.sin(2 * np.pi * (frequency[0] * x + frequency[1] * y))
    tint = rng.uniform(-8, 8, size=3)
    return (shade[..., None] + tint).astype(np.float32)


def _state_vector(state: ShapeState) -> np.ndarray:
    """x, y, size, opacity, r, g, b: the quantities interpolated during an event."""
    return np.array([state.x, state.y, state.size, float(state.phase == "visible"), *COLOURS[state.colour]])


def _tracks(states, events: Sequence[Event], num_frames: int) -> np.ndarray:
    """(shapes, frames, 7) state vectors of every shape at every frame: constant between events,
    eased from the state before to the state after during each event."""
    frames = np.arange(num_frames)
    tracks = np.stack([np.tile(_state_vector(state), (num_frames, 1)) for state in states[0]])
    for i, event in enumerate(events):
        start, end = event.start_frame, event.end_frame
        progress = np.clip((frames[start:] - start) / (end - start), 0, 1)
        eased = progress * progress * (3 - 2 * progress)
        before, after = _state_vector(states[i][event.actor]), _state_vector(states[i + 1][event.actor])
        tracks[event.actor, start:] = before + (after - before) * eased[:, None]
    return tracks


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Distance in pixels outside the shape's outline (negative inside), for anti-aliasing."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - size
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - size
    # An upward triangle with its apex at the top of its box and its base at the bottom.
    size = size * TRIANGLE_SCALE
    return np.maximum(dy - size, (2 * np.abs(dx) - dy - size) / np.sqrt(5))


def _covered_window(x, y, reach, height: int, width: int) -> tuple[slice, slice]:
    """The rows and columns within `reach` pixels of any of the centres (x, y)."""
    rows = slice(max(int(np.floor((y - reach).min())), 0), min(int(np.ceil((y + reach).max())), height))
    columns = slice(max(int(np.floor((x - reach).min())), 0), min(int(np.ceil((x + reach).max())), width))
    return rows, columns


def render_clip(plan: ClipPlan, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The clip's RGB frames, (frames, height, width, 3) uint8. Each shape is drawn for all
    frames at once as an anti-aliased coverage mask, over the frames where it is seen and the
    pixels it can reach there."""
    height, width = size
    states = simulate(plan.script)
    tracks = _tracks(states, plan.events, plan.num_frames).astype(np.float32)
    canvas = np.broadcast_to(_background(rng, height, width), (plan.num_frames, height, width, 3)).copy()
    pixel_y = np.arange(height, dtype=np.float32)[:, None] + 0.5
    pixel_x = np.arange(width, dtype=np.float32)[None, :] + 0.5
    for actor, track in zip(plan.script.shapes, tracks):
        # A shape is seen over one run of frames: from its start or appearance to its leaving.
        seen_frames = np.flatnonzero(track[:, 3] > 0)
        seen = slice(seen_frames[0], seen_frames[-1] + 1)
        x, y = track[seen, 0] * width, track[seen, 1] * height
        size_px, opacity = track[seen, 2] * min(height, width), track[seen, 3]
        rows, columns = _covered_window(x, y, _extent(actor.shape, size_px) + 1, height, width)
        dx, dy = pixel_x[:, columns] - x[:, None, None], pixel_y[rows] - y[:, None, None]
        coverage = np.clip(0.5 - _signed_distance(actor.shape, dx, dy, size_px[:, None, None]), 0, 1)
        region = canvas[seen, rows, columns]
        region += (coverage * opacity[:, None, None])[..., None] * (track[seen, None, None, 4:] - region)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


# BT.601 limited range, the colour space decoders assume for an untagged H.264 stream: the rows
# give Y, U and V from R, G and B.
_RGB_TO_YUV = (
    np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], np.float32) / 255
)
_YUV_OFFSET = np.array([16, 128, 128], np.float32)


def _weighted_sum(channels: Sequence[np.ndarray], weights: np.ndarray, offset: np.float32) -> np.ndarray:
    # Element-wise rather than a matrix product, whose BLAS summation order may vary.
    return channels[0] * weights[0] + channels[1] * weights[1] + channels[2] * weights[2] + offset


def _half_resolution(plane: np.ndarray) -> np.ndarray:
    """(frames, height / 2, width / 2) averages of 2x2 pixel blocks."""
    return (plane[:, ::2, ::2] + plane[:, 1::2, ::2] + plane[:, ::2, 1::2] + plane[:, 1::2, 1::2]) * 0.25


def yuv420p_planes(frames: np.ndarray) -> np.ndarray:
    """(frames, height * 3 / 2, width) uint8: each frame's Y plane, then its U and V planes at
    half resolution (of 2x2 averages), as PyAV's "yuv420p" arrays. Converted here because
    FFmpeg's converter chooses its code by CPU (and is not bit-exact without asking), while these
    float32 operations give the same bytes on every machine."""
    count, _, width, _ = frames.shape
    rgb = frames.astype(np.float32)
    channels = [rgb[..., k] for k in range(3)]
    half_channels = [_half_resolution(channel) for channel in channels]
    planes = [
        _weighted_sum(channels, _RGB_TO_YUV[0], _YUV_OFFSET[0]),
        _weighted_sum(half_channels, _RGB_TO_YUV[1], _YUV_OFFSET[1]),
        _weighted_sum(half_channels, _RGB_TO_YUV[2], _YUV_OFFSET[2]),
    ]
    stacked = np.concatenate([plane.reshape(count, -1) for plane in planes], axis=1)
    return np.clip(np.rint(stacked), 0, 255).astype(np.uint8).reshape(count, -1, width)


def write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
    """H.264 yuv420p, one encoder thread (clips are rendered in parallel instead); written to a
    temporary name first, so a file under the final name is always complete.

    x264 runs without its assembly (`asm=0`): on an AVX-512 machine its assembly gave different
    files for the same frames from run to run (about 6% of clips); its C code is repeatable, and
    costs about 12 ms more per 96x96 clip of 6 s."""
    import av

    partial = path + ".partial"
    with av.open(partial, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "x264-params": "asm=0"}
        stream.codec_context.thread_count = 1
        for planes in yuv420p_planes(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")))
        container.mux(stream.encode())
    os.replace(partial, path)
