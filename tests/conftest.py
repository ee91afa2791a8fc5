import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hbi_transformers import HBIConfig  # noqa: E402

# Tiny CLIP towers. The text width equals projection_dim so the temporal transformer can be
# initialised from the text tower, as with every OpenAI CLIP.
TEXT_CONFIG = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=16,
    bos_token_id=98,
    eos_token_id=99,
    pad_token_id=0,
)
VISION_CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=16
)
SOT_ID, EOT_ID = 98, 99


def tiny_config(**overrides) -> HBIConfig:
    kwargs = dict(
        text_config=dict(TEXT_CONFIG),
        vision_config=dict(VISION_CONFIG),
        projection_dim=32,
        merge_attention_heads=4,
        banzhaf_estimator_width=8,
    )
    kwargs.update(overrides)
    return HBIConfig(**kwargs)


def make_batch(n_text=4, n_video=4, words=10, frames=12, image_size=32, seed=0):
    """Random CLIP-style inputs: [SOT] tokens [EOT] then 0-padding, and videos with some padded frames."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, words + 1, (n_text,), generator=generator)
    lengths[0] = words
    input_ids = torch.zeros(n_text, words, dtype=torch.long)
    attention_mask = torch.zeros(n_text, words, dtype=torch.long)
    for i, length in enumerate(lengths.tolist()):
        input_ids[i, :length] = torch.randint(1, SOT_ID, (length,), generator=generator)
        input_ids[i, 0], input_ids[i, length - 1] = SOT_ID, EOT_ID
        attention_mask[i, :length] = 1
    frame_counts = torch.randint(2, frames + 1, (n_video,), generator=generator)
    frame_counts[0] = frames
    video_mask = (torch.arange(frames)[None] < frame_counts[:, None]).long()
    pixel_values_videos = torch.randn(n_video, frames, 3, image_size, image_size, generator=generator)
    pixel_values_videos = pixel_values_videos * video_mask[:, :, None, None, None]
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values_videos=pixel_values_videos,
        video_mask=video_mask,
    )


def pytest_configure(config):
    from transformers_suites import SUITE_MARKS

    for mark in SUITE_MARKS:
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' common test suites")


@pytest.fixture(autouse=True)
def restore_transformers_verbosity():
    """The commands set transformers' log level for their process; tests run them in this one."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    yield
    logging.set_verbosity(level)


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def batch():
    return make_batch()


# A CLIP-layout tokenizer over a 4-merge BPE: ids 0-511 bytes, 512 "ca", 513 "cat</w>",
# 514 "do", 515 "dog</w>", 516 start of text, 517 end of text.
TINY_MERGES = ["c a", "ca t</w>", "d o", "do g</w>"]


def tiny_clip_tokenizer(directory):
    import gzip

    from hbi_transformers.data.clip_vocabulary import build_clip_tokenizer

    bpe = Path(directory) / "bpe.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(["#version: tiny", *TINY_MERGES]) + "\n")
    return build_clip_tokenizer(bpe, num_merges=len(TINY_MERGES))


def tiny_processor(directory, max_frames=6, video_framerate=4):
    """An HBIProcessor for 32-pixel frames over the tiny CLIP tokenizer (its files in `directory`),
    and the text config of a tiny model that reads its ids."""
    from hbi_transformers import HBIProcessor, HBIVideoProcessor

    tokenizer = tiny_clip_tokenizer(directory)
    processor = HBIProcessor(
        HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, max_frames=max_frames,
                          video_framerate=video_framerate),
        tokenizer,
        max_words=8,
    )
    text_config = dict(TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    return processor, text_config


def textured_frames(num_frames, height=48, width=80, seed=0):
    """Smooth colour gradients (which compression keeps) that shift from frame to frame."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for index in range(num_frames):
        red = (x * 3 + index * 9) % 256
        green = (y * 5 + index * 4) % 256
        blue = ((x + y) * 2 + seed * 40) % 256
        frames.append(np.stack([red, green, blue], axis=-1).astype(np.uint8))
    return np.stack(frames)


def write_mp4(path, frames, fps=10, lossless=False):
    """H.264 mp4 written with PyAV; `lossless` keeps decoded frames equal to the written ones."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p" if lossless else "yuv420p"
        if lossless:
            stream.options = {"crf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_shard(path, samples):
    """A webdataset tar: per key, its files in order (e.g. {"a.mp4": bytes, "a.txt": bytes})."""
    with tarfile.open(path, "w") as archive:
        for name, data in samples.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def run_without_package(script: str, tmp_path) -> None:
    """Runs `script` in a fresh interpreter where importing hbi_transformers fails (as for a user
    of remote code who does not have the package); it must print "remote code ok"."""
    import subprocess
    import sys

    preamble = 'import sys\nsys.modules["hbi_transformers"] = None  # any import of the package now fails\n'
    result = subprocess.run(
        [sys.executable, "-c", preamble + script],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout
