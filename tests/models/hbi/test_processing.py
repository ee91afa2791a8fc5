import numpy as np
import pytest
import torch
from conftest import textured_frames, tiny_clip_tokenizer, tiny_config, write_mp4
from PIL import Image
from test_processing_pixels import RESIZE_MEAN_TOLERANCE, RESIZE_TOLERANCE, official_pixels
from transformers import AutoProcessor, AutoVideoProcessor

from hbi_transformers import HBIModel, HBIProcessor, HBIVideoProcessor, VideoDecodingError
from hbi_transformers.models.hbi.video_io import read_video

SOT, EOT, CAT, DOG = 516, 517, 513, 515


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_clip_tokenizer(tmp_path_factory.mktemp("bpe"))


def test_pixel_values_match_official_transform(tmp_path):
    frames = textured_frames(25)
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=10, lossless=True)
    out = HBIVideoProcessor()(str(path), return_tensors="pt", return_metadata=True)
    # 2.5 s at 10 fps, 1 frame per second: frames 0, 10, 20.
    assert out["video_metadata"][0]["frame_indices"] == [0, 10, 20]
    assert out["video_mask"].tolist() == [[1] * 3 + [0] * 9]
    pixel_values = out["pixel_values_videos"]
    assert pixel_values.shape == (1, 12, 3, 224, 224)
    # Compared with the decoded frames: RGB to YUV and back moves some values by up to 2 levels, even lossless.
    difference = (pixel_values[0, :3] - official_pixels(read_video(str(path)).frames)).abs()
    assert difference.max() < RESIZE_TOLERANCE and difference.mean() < RESIZE_MEAN_TOLERANCE
    assert torch.count_nonzero(pixel_values[0, 3:]) == 0


def test_batch_padding_segments_and_inputs(tmp_path):
    long_clip = write_mp4(tmp_path / "long.mp4", textured_frames(60), fps=10, lossless=True)
    decoded = textured_frames(30, seed=1)
    pil_clip = [Image.fromarray(frame) for frame in textured_frames(4, seed=2)]
    processor = HBIVideoProcessor(max_frames=5)
    out = processor(
        [long_clip, decoded, pil_clip, torch.from_numpy(decoded).permute(0, 3, 1, 2)],
        video_segments=[(1.7, 3.2), None, None, None],
        return_tensors="pt",
        return_metadata=True,
    )
    # Segment [1, 3] s at 10 fps: frames 10, 20, 30.
    assert out["video_metadata"][0]["frame_indices"] == [10, 20, 30]
    assert out["video_mask"].sum(dim=1).tolist() == [3, 5, 4, 5]
    # Decoded arrays are capped at max_frames evenly (linspace): channels-first tensors too.
    torch.testing.assert_close(out["pixel_values_videos"][1], out["pixel_values_videos"][3])
    difference = (out["pixel_values_videos"][1, 0] - official_pixels(decoded[:1])[0]).abs()
    assert difference.max() < RESIZE_TOLERANCE and difference.mean() < RESIZE_MEAN_TOLERANCE


def test_bad_videos_raise_clear_errors(tmp_path):
    processor = HBIVideoProcessor()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoDecodingError, match="corrupt.mp4"):
        processor([str(corrupt)])
    with pytest.raises(VideoDecodingError, match="missing.mp4"):
        processor([str(tmp_path / "missing.mp4")])
    with pytest.raises(ValueError, match=r"video 0: expected \[frames, H, W, 3\]"):
        processor([np.zeros((4, 5, 6), np.uint8)])
    with pytest.raises(ValueError, match="video_segments has 2 entries for 1 videos"):
        processor([textured_frames(3)], video_segments=[None, None])


def test_augmentation_is_reproducible_and_off_by_default():
    clip = textured_frames(4)
    processor = HBIVideoProcessor(max_frames=4)
    plain = processor([clip], return_tensors="pt")["pixel_values_videos"]
    augmented = [
        processor([clip], do_augment=True, generator=torch.Generator().manual_seed(seed), return_tensors="pt")[
            "pixel_values_videos"
        ]
        for seed in (3, 3, 4)
    ]
    torch.testing.assert_close(augmented[0], augmented[1])
    assert not torch.equal(augmented[0], augmented[2])
    assert not torch.equal(plain, augmented[0]) or not torch.equal(plain, augmented[2])
    torch.testing.assert_close(plain, processor([clip], return_tensors="pt")["pixel_values_videos"])


def test_text_layout(tokenizer):
    processor = HBIProcessor(HBIVideoProcessor(), tokenizer, max_words=5)
    out = processor(text=["Cat", "cat  DOG &amp; dog cat dog"], return_tensors="pt")
    # "&amp;" is unescaped to "&", a word of its own: byte symbol 5 with the end-of-word mark.
    ampersand = 256 + 5
    assert out["input_ids"].tolist() == [[SOT, CAT, EOT, 0, 0], [SOT, CAT, DOG, ampersand, EOT]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert "pixel_values_videos" not in out
    with pytest.raises(ValueError, match="caption 1 is empty"):
        processor(text=["cat", "  \n "])
    with pytest.raises(ValueError, match="needs text, videos or both"):
        processor()


def test_processor_round_trip_and_auto_classes(tokenizer, tmp_path):
    processor = HBIProcessor(HBIVideoProcessor(max_frames=6, video_framerate=2.0), tokenizer, max_words=7)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, HBIProcessor)
    assert reloaded.max_words == 7
    assert reloaded.video_processor.max_frames == 6 and reloaded.video_processor.video_framerate == 2.0
    assert isinstance(AutoVideoProcessor.from_pretrained(tmp_path), HBIVideoProcessor)
    clip = textured_frames(9)
    original = processor(text=["cat dog"], videos=[clip], return_tensors="pt")
    again = reloaded(text=["cat dog"], videos=[clip], return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values_videos", "video_mask"):
        torch.testing.assert_close(original[key], again[key])


def test_model_runs_on_processor_output(tokenizer, tmp_path):
    config = tiny_config(text_config={**tiny_config().text_config.to_dict(), "vocab_size": len(tokenizer)})
    model = HBIModel(config).eval()
    processor = HBIProcessor(
        HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer, max_words=8
    )
    clips = [write_mp4(tmp_path / f"{i}.mp4", textured_frames(40, seed=i), fps=8) for i in range(2)]
    inputs = processor(text=["cat", "dog cat"], videos=[str(c) for c in clips], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
    assert out.logits_per_text.shape == (2, 2) and torch.isfinite(out.loss)


def test_standard_text_options_act_on_the_official_layout(tokenizer):
    processor = HBIProcessor(HBIVideoProcessor(), tokenizer, max_words=6)
    captions = ["cat", "cat dog cat dog cat dog"]
    default = processor(text=captions)
    assert default["input_ids"] == [[SOT, CAT, EOT, 0, 0, 0], [SOT, CAT, DOG, CAT, DOG, EOT]]
    # The tokenizer alone pads as the layout does, and decoding skips that padding.
    assert tokenizer("cat", padding="max_length", max_length=6).input_ids == default["input_ids"][0]
    assert tokenizer.batch_decode(default["input_ids"], skip_special_tokens=True) == ["cat", "cat dog cat dog"]
    # max_words is max_length; grouped or flat options are the same.
    assert processor(text=captions, max_words=4)["input_ids"][1] == [SOT, CAT, DOG, EOT]
    assert processor(text=captions, text_kwargs={"max_length": 4}) == processor(text=captions, max_length=4)
    longest = processor(text=captions, padding="longest", truncation=False)["input_ids"]
    assert [len(ids) for ids in longest] == [8, 8] and longest[1][-1] == EOT
    left = processor(text=["cat"], padding_side="left", return_tensors="pt")
    assert left["input_ids"].tolist() == [[0, 0, 0, SOT, CAT, EOT]]
    assert left["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1]]
    assert processor(text=["cat"], pad_to_multiple_of=4, max_length=5)["input_ids"] == [[SOT, CAT, EOT, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="max_words and max_length are the same option"):
        processor(text=captions, max_words=4, max_length=4)
    with pytest.raises(ValueError, match=r"does not support \['return_offsets_mapping'\]"):
        processor(text=captions, return_offsets_mapping=True)
    with pytest.raises(ValueError, match=r"unexpected arguments: \['max_word'\]"):
        processor(text=captions, max_word=4)
    with pytest.raises(ValueError, match="must leave room for a token"):
        processor(text=captions, max_length=2)


def test_a_clip_given_as_a_list_of_frames_is_one_video():
    frames = textured_frames(5)
    processor = HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    as_array = processor(frames, return_tensors="pt")
    for clip in (list(frames), [torch.from_numpy(frame) for frame in frames], [Image.fromarray(f) for f in frames]):
        out = processor(clip, return_tensors="pt")
        assert out["video_mask"].tolist() == [[1] * 5 + [0] * 7]
        torch.testing.assert_close(out["pixel_values_videos"], as_array["pixel_values_videos"])
    assert processor([list(frames), list(frames[:2])], return_tensors="pt")["video_mask"].sum(1).tolist() == [5, 2]
