"""HBIVideoProcessor's pixels against the official HBI transform (jpthu17/HBI, rawvideo_util): per
frame a PIL image, torchvision Resize(size, BICUBIC), CenterCrop(size), ToTensor, Normalize(CLIP)."""

import numpy as np
import pytest
import torch
from conftest import textured_frames, write_mp4
from PIL import Image
from torchvision import transforms

from hbi_transformers import HBIVideoProcessor
from hbi_transformers.models.hbi.video_io import read_video

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# torch's uint8 bicubic kernel (16-bit weights) rounds some values one or two levels away from
# Pillow's (22-bit weights): measured at most 2 levels, in at most 3% of the values. The crop is exact.
RESIZE_TOLERANCE = 2 / 255 / min(CLIP_STD) + 1e-4
RESIZE_MEAN_TOLERANCE = 1e-3
# (height, width), both orientations. 640x272 leaves a margin of 303 columns at 224 and 43 at 32,
# where half the margin rounds up (to even) in torchvision's CenterCrop.
FRAME_SIZES = [(272, 640), (640, 272), (250, 333), (333, 250), (400, 225), (225, 400), (300, 300)]


def official_pixels(frames: np.ndarray, size: int = 224) -> torch.Tensor:
    """The official transform of uint8 RGB `[frames, H, W, 3]`, as `[frames, 3, size, size]`.

    Its Resize runs its two passes in the order Pillow did up to 12 (horizontal, then vertical):
    Pillow 13 goes vertical first on some shapes (e.g. 272x640 to 224x527), which moves values by up
    to 20 levels, and the official pipeline predates it."""
    finish = transforms.Compose(
        [transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)]
    )
    pixels = []
    for frame in frames:
        image = Image.fromarray(frame)
        width, height = transforms.Resize(size, transforms.InterpolationMode.BICUBIC)(image).size
        image = image.resize((width, image.height), Image.BICUBIC).resize((width, height), Image.BICUBIC)
        pixels.append(finish(image))
    return torch.stack(pixels)


def processor(size: int, **kwargs) -> HBIVideoProcessor:
    return HBIVideoProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **kwargs)


def clip_of(height: int, width: int) -> np.ndarray:
    """Two smooth frames and one of noise, where a one-pixel shift changes nearly every value."""
    noise = np.random.default_rng(height * 1000 + width).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    return np.concatenate([textured_frames(2, height, width), noise])


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("margin", [0, 5, 7, 43, 303])
@pytest.mark.parametrize("portrait", [False, True])
def test_crop_is_exact_where_nothing_is_resampled(size, margin, portrait):
    # The short side already equals the crop: neither pipeline resamples, so the crop alone is compared.
    # Half margins of 2.5, 3.5, 21.5 and 151.5 round to 2, 4, 22 and 152 (half to even).
    height, width = (size + margin, size) if portrait else (size, size + margin)
    frames = clip_of(height, width)
    pixels = processor(size, max_frames=3)([frames], return_tensors="pt")["pixel_values_videos"][0]
    assert (pixels - official_pixels(frames, size)).abs().max() < 1e-4


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("frame_size", FRAME_SIZES, ids=lambda hw: f"{hw[1]}x{hw[0]}")
def test_decoded_frames_match_official_transform(size, frame_size):
    frames = clip_of(*frame_size)
    pixels = processor(size, max_frames=3)([frames], return_tensors="pt")["pixel_values_videos"][0]
    difference = (pixels - official_pixels(frames, size)).abs()
    assert difference.max() < RESIZE_TOLERANCE and difference.mean() < RESIZE_MEAN_TOLERANCE


@pytest.mark.parametrize("size", [32, 224])
def test_h264_clip_matches_official_transform(size, tmp_path):
    pytest.importorskip("av")
    # 80x34 frames resize to 75x32 and 527x224: margins of 43 and 303 columns.
    path = str(write_mp4(tmp_path / "clip.mp4", textured_frames(20, 34, 80), fps=10))
    options = dict(video_framerate=5, max_frames=4)
    pixels = processor(size, decoding_backend="pyav", **options)(path, return_tensors="pt")["pixel_values_videos"][0]
    decoded = read_video(path, backend="pyav", **options).frames
    difference = (pixels - official_pixels(decoded, size)).abs()
    assert difference.max() < RESIZE_TOLERANCE and difference.mean() < RESIZE_MEAN_TOLERANCE
