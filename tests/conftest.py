import os

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


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def batch():
    return make_batch()
