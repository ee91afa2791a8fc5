"""HBI's video processor: video files -> `pixel_values_videos` and `video_mask`.

`HBIVideoProcessor` decodes, samples, (optionally) augments, resizes, crops and normalises frames
as the official HBI pipeline does (docs/video_input.md), and pads every video to `max_frames` with
a `video_mask`.
"""

import os
from functools import cache

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvF
from transformers import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor

from .video_augmentation import VideoRandAugment
from .video_io import VideoDecodingError, read_video


# The sampling and augmentation settings HBI adds to transformers' video processor kwargs.
HBI_VIDEO_OPTIONS = ("max_frames", "video_framerate", "frame_sampling", "decoding_backend", "do_augment", "augmentation")


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
    arrays / tensors, or lists of PIL images), which are only capped at `max_frames`. Frames are
    resized (shortest edge 224, bicubic), centre-cropped to 224, rescaled and normalised with
    CLIP's mean and std, then padded with zero frames.

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
    do_sample_frames = False
    max_frames = 12
    video_framerate = 1.0
    frame_sampling = "fps"
    decoding_backend = "auto"
    do_augment = False
    augmentation = "rand-m7-n4-mstd0.5-inc1"
    valid_kwargs = HBIVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "video_mask"]

    def preprocess(self, videos, **kwargs) -> BatchFeature:
        options = {name: kwargs.pop(name, getattr(self, name)) for name in HBI_VIDEO_OPTIONS}
        segments = kwargs.pop("video_segments", None)
        return_tensors = kwargs.pop("return_tensors", None)
        return_metadata = kwargs.pop("return_metadata", self.return_metadata)
        generator = kwargs.pop("generator", None)
        videos = self._as_list(videos)
        if segments is not None and len(segments) != len(videos):
            raise ValueError(f"video_segments has {len(segments)} entries for {len(videos)} videos")

        clips, metadata = [], []
        for index, video in enumerate(videos):
            segment = segments[index] if segments is not None else None
            frames, info = self._frames_of(video, index, segment, options)
            if options["do_augment"]:
                frames = _rand_augment(options["augmentation"])(frames, generator=generator)
            clips.append(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))
            metadata.append(info)

        standardized = self._standardize_kwargs(
            size=kwargs.pop("size", self.size),
            crop_size=kwargs.pop("crop_size", self.crop_size),
            default_to_square=self.default_to_square,
            image_mean=kwargs.pop("image_mean", self.image_mean),
            image_std=kwargs.pop("image_std", self.image_std),
        )
        processed = self._preprocess(
            videos=clips,
            do_resize=kwargs.pop("do_resize", self.do_resize),
            size=standardized["size"],
            resample=kwargs.pop("resample", self.resample),
            do_center_crop=kwargs.pop("do_center_crop", self.do_center_crop),
            crop_size=standardized["crop_size"],
            do_rescale=kwargs.pop("do_rescale", self.do_rescale),
            rescale_factor=kwargs.pop("rescale_factor", self.rescale_factor),
            do_normalize=kwargs.pop("do_normalize", self.do_normalize),
            image_mean=standardized["image_mean"],
            image_std=standardized["image_std"],
        )["pixel_values_videos"]
        if kwargs:
            raise ValueError(f"HBIVideoProcessor got unexpected arguments: {sorted(kwargs)}")

        pixel_values, video_mask = self._pad(processed, options["max_frames"])
        data = {"pixel_values_videos": pixel_values, "video_mask": video_mask}
        if return_tensors is None:
            data = {"pixel_values_videos": list(pixel_values), "video_mask": video_mask.tolist()}
        features = BatchFeature(data=data, tensor_type=return_tensors)
        if return_metadata:
            features["video_metadata"] = metadata
        return features

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
            if videos and not _is_encoded_video(videos[0]) and hasattr(videos[0], "getpixel"):
                return [videos]  # one clip given as a list of PIL images
            return list(videos)
        raise ValueError(f"cannot read videos of type {type(videos).__name__}")

    def _frames_of(self, video, index: int, segment, options) -> tuple[np.ndarray, dict]:
        """uint8 `[frames, H, W, 3]` RGB frames of one video, sampled, with what is known of them."""
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
        frames = self._decoded_frames(video, index)
        frames = _uniform_subsample(frames, options["max_frames"])
        return frames, {"source": f"<video {index}>"}

    @staticmethod
    def _decoded_frames(video, index: int) -> np.ndarray:
        if isinstance(video, (list, tuple)):
            video = np.stack([np.asarray(frame.convert("RGB")) for frame in video])
        if isinstance(video, torch.Tensor):
            video = video.cpu().numpy()
        if not isinstance(video, np.ndarray) or video.ndim != 4 or 3 not in (video.shape[1], video.shape[-1]):
            shape = getattr(video, "shape", None)
            raise ValueError(f"video {index}: expected [frames, H, W, 3] or [frames, 3, H, W] frames, got {shape}")
        if len(video) == 0:
            raise VideoDecodingError(f"<video {index}>", "it has no frames")
        if video.shape[-1] != 3:
            video = video.transpose(0, 2, 3, 1)
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
