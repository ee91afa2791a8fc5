"""HBI's video processor: video files -> `pixel_values_videos` and `video_mask`.

`HBIVideoProcessor` decodes, samples, (optionally) augments, resizes, crops and normalises frames
as the official HBI pipeline does (docs/video_input.md), and pads every video to `max_frames` with
a `video_mask`.
"""

import os
from collections.abc import Mapping
from functools import cache

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvF
from transformers import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ChannelDimension, PILImageResampling
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor

from .video_augmentation import VideoRandAugment
from .video_io import VideoDecodingError, read_video, sample_frame_indices, sample_frame_indices_per_second


# The sampling and augmentation settings HBI adds to transformers' video processor kwargs.
HBI_VIDEO_OPTIONS = ("max_frames", "video_framerate", "frame_sampling", "decoding_backend", "do_augment", "augmentation")
# Call-time names of transformers' video processors -> the HBI settings they stand for.
STANDARD_NAMES = {"num_frames": "max_frames", "fps": "video_framerate"}


class HBIVideoProcessorKwargs(VideosKwargs, total=False):
    max_frames: int
    video_framerate: float
    frame_sampling: str
    decoding_backend: str
    do_augment: bool
    augmentation: str
    video_segments: list


def _is_encoded_video(video) -> bool:
    return isinstance(video, (str, os.PathLike, bytes, bytearray)) or hasattr(video, "read")


def _is_frame(item) -> bool:
    return hasattr(item, "getpixel") or isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 3


def _own_names(kwargs: dict) -> dict:
    """`kwargs` with transformers' `num_frames` / `fps` given under HBI's names."""
    kwargs = dict(kwargs)
    for standard, own in STANDARD_NAMES.items():
        value = kwargs.pop(standard, None)
        if value is not None:
            if kwargs.get(own) is not None:
                raise ValueError(f"{standard} and {own} are the same option: pass one of them")
            kwargs[own] = value
    return kwargs


@cache
def _rand_augment(setting: str) -> VideoRandAugment:
    return VideoRandAugment.from_config_string(setting)


def _uniform_subsample(frames, max_frames: int):
    """At most `max_frames` frames, evenly spaced (the official linspace rule)."""
    if len(frames) <= max_frames:
        return frames
    return frames[np.linspace(0, len(frames) - 1, num=max_frames, dtype=int)]


class HBIVideoProcessor(BaseVideoProcessor):
    r"""
    Turns videos into `pixel_values_videos` `[batch, max_frames, 3, 224, 224]` and `video_mask`
    `[batch, max_frames]`, as the official HBI data pipeline.

    Videos are paths, bytes or binary file objects (decoded with `hbi_transformers.video_io`:
    `video_framerate` frames per second within an optional segment, then at most `max_frames`
    evenly spaced), or already decoded clips (`[frames, H, W, 3]` or `[frames, 3, H, W]` uint8
    arrays / tensors, or lists of frames: PIL images or such arrays), or a list of these. Frames
    are resized (shortest edge 224, bicubic), centre-cropped to 224, rescaled and normalised with
    CLIP's mean and std, then padded with zero frames.

    transformers' standard video options map onto HBI's sampling (docs/video_input.md#standard-options):
    `num_frames` is `max_frames`, `fps` is `video_framerate`; with `do_sample_frames` (the default)
    a decoded clip whose `video_metadata` gives its frame rate is sampled as a file is, and one
    without is capped at `max_frames` evenly; `do_sample_frames=False` keeps every frame of a
    decoded clip (the batch is padded to its longest clip, at least `max_frames`). Video files are
    always decoded with the official sampling.

    Args:
        max_frames (`int`, defaults to 12): frames per video after sampling and padding.
        video_framerate (`float`, defaults to 1): frames sampled per second of video.
        frame_sampling (`str`, defaults to `"fps"`): `"fps"` (MSR-VTT style) or `"per_second"`
            (one frame per whole second, the official ActivityNet / DiDeMo extractor).
        decoding_backend (`str`, defaults to `"auto"`): `"decord"`, `"pyav"`, `"torchcodec"` or
            `"auto"` (the fastest installed).
        do_augment (`bool`, defaults to `False`): apply the official training augmentation, a
            video RandAugment with the same draws for every frame of a clip, before resizing.
            Leave it off for evaluation.
        augmentation (`str`, defaults to `"rand-m7-n4-mstd0.5-inc1"`): the RandAugment setting.
        video_segments (`list`, *optional*, call-time only): one `(start, end)` pair in seconds
            (or `None`) per video.
        video_metadata (*optional*, call-time only): one dict or `VideoMetadata` per decoded clip,
            whose `fps` (or `total_num_frames` / `duration`) lets the clip be sampled by time.
        return_metadata (`bool`, defaults to `False`): also return `video_metadata`, one dict per
            video with its source, sampled frame indices, timestamps, fps and duration.
        generator (call-time only): random generator of the augmentation, for reproducible draws.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 224}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = True
    max_frames = 12
    video_framerate = 1.0
    frame_sampling = "fps"
    decoding_backend = "auto"
    do_augment = False
    augmentation = "rand-m7-n4-mstd0.5-inc1"
    valid_kwargs = HBIVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "video_mask"]

    def __init__(self, **kwargs: Unpack[HBIVideoProcessorKwargs]):
        # Kept under HBI's names, so that a call's num_frames / fps is the only one there is.
        super().__init__(**_own_names(kwargs))

    def preprocess(self, videos, **kwargs: Unpack[HBIVideoProcessorKwargs]) -> BatchFeature:
        unknown = sorted(set(kwargs) - set(self.valid_kwargs.__annotations__) - {"return_tensors", "generator"})
        if unknown:
            raise ValueError(f"HBIVideoProcessor got unexpected arguments: {unknown}")
        kwargs = _own_names(kwargs)
        generator = kwargs.pop("generator", None)
        return_tensors = kwargs.pop("return_tensors", None)
        options = self._merge_and_standardize_kwargs(**kwargs)
        if options["do_pad"] is False:
            raise ValueError("HBIVideoProcessor always pads videos to a common frame count (video_mask marks the frames)")
        if options["data_format"] not in (None, "channels_first", ChannelDimension.FIRST):
            raise ValueError(f"HBIVideoProcessor returns channels-first frames, not {options['data_format']!r}")
        videos = self._as_list(videos)
        segments, metadata = options["video_segments"], self._metadata_per_video(options["video_metadata"], len(videos))
        if segments is not None and len(segments) != len(videos):
            raise ValueError(f"video_segments has {len(segments)} entries for {len(videos)} videos")

        clips, infos = [], []
        for index, video in enumerate(videos):
            segment = segments[index] if segments is not None else None
            frames, info = self._frames_of(video, index, segment, options, metadata[index])
            if options["do_augment"]:
                frames = _rand_augment(options["augmentation"])(frames, generator=generator)
            clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
            clips.append(clip if options["device"] is None else clip.to(options["device"]))
            infos.append(info)

        self._validate_preprocess_kwargs(**options)
        processed = self._preprocess(
            videos=clips,
            **{name: options[name] for name in ("do_resize", "size", "resample", "do_center_crop", "crop_size",
                                                "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                                                "image_std")},
        )["pixel_values_videos"]

        length = options["max_frames"]
        if not options["do_sample_frames"]:
            length = max(length, *(len(clip) for clip in processed))
        pixel_values, video_mask = self._pad(processed, length)
        data = {"pixel_values_videos": pixel_values, "video_mask": video_mask}
        if return_tensors is None:
            data = {"pixel_values_videos": list(pixel_values), "video_mask": video_mask.tolist()}
        features = BatchFeature(data=data, tensor_type=return_tensors)
        if options["return_metadata"]:
            features["video_metadata"] = infos
        return features

    def sample_frames(self, metadata, num_frames: int | None = None, fps: float | None = None,
                      frame_sampling: str | None = None, segment=None) -> np.ndarray:
        """Indices of the frames HBI's official sampling takes from a clip described by `metadata`
        (`total_num_frames` and its frame rate: `fps`, or `total_num_frames` / `duration`):
        `fps` (default `video_framerate`) frames per second, then at most `num_frames` (default
        `max_frames`) evenly spaced."""
        total = metadata.get("total_num_frames")
        rate = metadata.get("fps") or (total / metadata["duration"] if total and metadata.get("duration") else None)
        if not total or not rate:
            raise ValueError(f"sampling frames by time needs the clip's frame count and frame rate, got {dict(metadata)}")
        start, end = segment if segment is not None else (None, None)
        sampler = {"fps": sample_frame_indices, "per_second": sample_frame_indices_per_second}[
            frame_sampling or self.frame_sampling]
        return np.asarray(sampler(total, rate, video_framerate=fps or self.video_framerate, start=start, end=end,
                                  max_frames=num_frames or self.max_frames), dtype=int)

    def center_crop(self, video: torch.Tensor, size, **kwargs) -> torch.Tensor:
        # The official pipeline crops with torchvision's CenterCrop, which rounds an odd margin's half
        # to even; transformers' crop floors it, one pixel off when the margin is 3 modulo 4.
        return tvF.center_crop(video, [size.height, size.width])

    @staticmethod
    def _as_list(videos) -> list:
        if _is_encoded_video(videos) or isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 4:
            return [videos]
        if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5:
            return list(videos)
        if isinstance(videos, (list, tuple)):
            if videos and _is_frame(videos[0]):
                return [videos]  # one clip given as a list of frames
            return list(videos)
        raise ValueError(f"cannot read videos of type {type(videos).__name__}")

    @staticmethod
    def _metadata_per_video(metadata, num_videos: int) -> list:
        """One metadata mapping (or None) per video; transformers nests each in a list of one."""
        if metadata is None:
            return [None] * num_videos
        if isinstance(metadata, Mapping):
            metadata = [metadata]
        entries = [entry[0] if isinstance(entry, (list, tuple)) and len(entry) == 1 else entry for entry in metadata]
        if len(entries) != num_videos or not all(entry is None or isinstance(entry, Mapping) for entry in entries):
            raise ValueError(f"video_metadata needs one dict or VideoMetadata per video ({num_videos}), got {metadata!r}")
        return entries

    def _frames_of(self, video, index: int, segment, options, metadata=None) -> tuple[np.ndarray, dict]:
        """uint8 `[frames, H, W, 3]` RGB frames of one video, sampled, with what is known of them.
        `options`: the HBI sampling settings (HBI_VIDEO_OPTIONS), and for decoded clips
        `do_sample_frames` and `input_data_format` when set."""
        if _is_encoded_video(video):
            start, end = segment if segment is not None else (None, None)
            decoded = read_video(
                video,
                video_framerate=options["video_framerate"],
                max_frames=options["max_frames"],
                start=start,
                end=end,
                backend=options["decoding_backend"],
                sampling=options["frame_sampling"],
            )
            info = {
                "source": decoded.source,
                "frame_indices": list(decoded.indices),
                "timestamps": list(decoded.timestamps),
                "fps": decoded.fps,
                "duration": decoded.duration,
            }
            return decoded.frames, info
        frames = self._decoded_frames(video, index, options.get("input_data_format"))
        sample = options.get("do_sample_frames", self.do_sample_frames)
        indices = np.arange(len(frames))
        if sample and metadata is not None:
            # Sampled by time as a file is: the clip's own frame count is the one that counts.
            indices = self.sample_frames({**dict(metadata), "total_num_frames": len(frames)},
                                         num_frames=options["max_frames"], fps=options["video_framerate"],
                                         frame_sampling=options["frame_sampling"], segment=segment)
            if len(indices) == 0:
                raise VideoDecodingError(f"<video {index}>", f"no frame falls in the segment {segment}")
        elif sample:
            indices = _uniform_subsample(indices, options["max_frames"])
        elif segment is not None:
            raise ValueError(f"video {index}: a segment of a decoded clip needs do_sample_frames and its video_metadata")
        return frames[indices], {"source": f"<video {index}>", "frame_indices": indices.tolist()}

    @staticmethod
    def _decoded_frames(video, index: int, input_data_format=None) -> np.ndarray:
        if isinstance(video, (list, tuple)):
            if not video:
                raise VideoDecodingError(f"<video {index}>", "it has no frames")
            video = np.stack([np.asarray(frame.convert("RGB")) if hasattr(frame, "getpixel") else
                              frame.cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
                              for frame in video])
        if isinstance(video, torch.Tensor):
            video = video.cpu().numpy()
        if not isinstance(video, np.ndarray) or video.ndim != 4 or 3 not in (video.shape[1], video.shape[-1]):
            shape = getattr(video, "shape", None)
            raise ValueError(f"video {index}: expected [frames, H, W, 3] or [frames, 3, H, W] frames, got {shape}")
        if len(video) == 0:
            raise VideoDecodingError(f"<video {index}>", "it has no frames")
        channels_first = video.shape[-1] != 3
        if input_data_format is not None:
            channels_first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
        if channels_first:
            video = video.transpose(0, 2, 3, 1)
        if video.shape[-1] != 3:
            raise ValueError(f"video {index}: expected 3 colour channels last ({input_data_format}), got {video.shape}")
        if video.dtype != np.uint8:
            raise ValueError(f"video {index}: decoded frames must be uint8 RGB, got {video.dtype}")
        return video

    @staticmethod
    def _pad(clips: list[torch.Tensor], max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        channels, height, width = clips[0].shape[1:]
        pixel_values = clips[0].new_zeros(len(clips), max_frames, channels, height, width)
        video_mask = torch.zeros(len(clips), max_frames, dtype=torch.long)
        for index, clip in enumerate(clips):
            pixel_values[index, : len(clip)] = clip
            video_mask[index, : len(clip)] = 1
        return pixel_values, video_mask
