"""Prepared-frame corpora: the frames read back equal the decode path's pixels (lossless), a JPEG
corpus is close, bad videos are named and counted, an interrupted preparation resumes, and a
corpus prepared for other settings is refused."""

import json

import numpy as np
import pytest
import torch

from conftest import textured_frames, tiny_processor, write_mp4
from hbi_transformers.data import (
    HBIDataCollator,
    PreparedCorpusError,
    VideoTextRecord,
    is_prepared_corpus,
    load_video_text_dataset,
    prepare_corpus,
    unique_videos,
)
from hbi_transformers.data.prepared import is_prepared_reference


@pytest.fixture
def corpus(tmp_path):
    """Three short clips (odd sizes, so the resize and crop do real work), one of them with two
    captions and one cut to a segment; a fourth video is corrupt."""
    videos = tmp_path / "videos"
    videos.mkdir()
    shapes = {"a": (40, 72), "b": (50, 66), "c": (64, 48)}
    for seed, (name, (height, width)) in enumerate(shapes.items()):
        write_mp4(videos / f"{name}.mp4", textured_frames(30, height, width, seed=seed), fps=10)
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    records = [
        VideoTextRecord(str(videos / "a.mp4"), "a cat", "a"),
        VideoTextRecord(str(videos / "a.mp4"), "a cat again", "a"),
        VideoTextRecord(str(videos / "b.mp4"), "a dog", "b", start=1.0, end=2.0),
        VideoTextRecord(str(videos / "broken.mp4"), "nothing", "broken"),
        VideoTextRecord(str(videos / "c.mp4"), "a bird", "c"),
    ]
    (tmp_path / "tokenizer").mkdir()
    processor, _ = tiny_processor(tmp_path / "tokenizer", max_frames=6, video_framerate=4)
    return records, processor


def _prepare(records, processor, folder, **options):
    options.setdefault("num_workers", 1)
    return prepare_corpus(records, processor.video_processor, folder, max_bad_fraction=1.0, progress=False, **options)


@pytest.mark.parametrize("frame_format, workers", [("raw", 1), ("png", 2)])
def test_prepared_frames_give_the_decoded_pixels(corpus, tmp_path, frame_format, workers):
    records, processor = corpus
    manifest = _prepare(records, processor, tmp_path / "prepared", frame_format=frame_format, num_workers=workers)
    assert manifest["num_clips"] == 3 and manifest["num_records"] == 4
    assert is_prepared_corpus(tmp_path / "prepared")

    prepared = load_video_text_dataset(tmp_path / "prepared")
    assert all(is_prepared_reference(row["video"]) for row in prepared)
    assert [row["caption"] for row in prepared] == ["a cat", "a cat again", "a dog", "a bird"]
    good = [record for record in records if record.video_id != "broken"]

    decode_batch = HBIDataCollator(processor)(good)
    read_batch = HBIDataCollator(processor)(list(prepared))
    assert torch.equal(decode_batch["pixel_values_videos"], read_batch["pixel_values_videos"])
    assert torch.equal(decode_batch["video_mask"], read_batch["video_mask"])
    assert torch.equal(decode_batch["input_ids"], read_batch["input_ids"])

    decoded = HBIDataCollator(processor).collate_videos(unique_videos(good), return_metadata=True)
    read = HBIDataCollator(processor).collate_videos(unique_videos(prepared), return_metadata=True)
    assert torch.equal(decoded["pixel_values_videos"], read["pixel_values_videos"])
    for ours, theirs in zip(read["video_metadata"], decoded["video_metadata"]):
        assert ours["timestamps"] == pytest.approx(theirs["timestamps"])
        assert ours["duration"] == pytest.approx(theirs["duration"])
        assert ours["frame_indices"] == theirs["frame_indices"]


def test_jpeg_frames_are_close(corpus, tmp_path):
    records, processor = corpus
    _prepare(records, processor, tmp_path / "jpeg", frame_format="jpeg", jpeg_quality=90)
    good = [record for record in records if record.video_id != "broken"]
    decoded = HBIDataCollator(processor, do_augment=False)(good)["pixel_values_videos"]
    read = HBIDataCollator(processor)(list(load_video_text_dataset(tmp_path / "jpeg")))["pixel_values_videos"]
    difference = (decoded - read).abs()
    # Normalised units (1 grey level is about 0.015): lossy, but a few levels on average.
    assert 0 < difference.mean() < 0.1


def test_bad_videos_are_named_counted_and_left_out(corpus, tmp_path):
    records, processor = corpus
    manifest = _prepare(records, processor, tmp_path / "prepared")
    assert len(manifest["bad_videos"]) == 1 and manifest["bad_videos"][0][0].endswith("broken.mp4")
    assert manifest["records_left_out"] == 1
    with pytest.raises(Exception, match="broken.mp4"):
        prepare_corpus(records, processor.video_processor, tmp_path / "strict", max_bad_fraction=0.1, min_items=1,
                       num_workers=1, progress=False)


def test_an_interrupted_preparation_resumes(corpus, tmp_path, monkeypatch):
    records, processor = corpus
    folder = tmp_path / "prepared"
    _prepare(records, processor, folder, shard_size=1)
    shards = sorted((folder / "clips").glob("*.parquet"))
    assert len(shards) == 4
    kept_times = {shard: shard.stat().st_mtime_ns for shard in shards[:2]}
    # As if the run had stopped after two shards: the later ones and the end never happened.
    for shard in shards[2:]:
        shard.unlink()
        shard.with_suffix(".json").unlink()
    manifest = json.loads((folder / "hbi_prepared.json").read_text())
    (folder / "hbi_prepared.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(PreparedCorpusError, match="unfinished"):
        load_video_text_dataset(folder)

    prepared = []
    from hbi_transformers.data import preparing

    original = preparing.prepare_clip
    monkeypatch.setattr(preparing, "prepare_clip", lambda vp, clip, *rest: prepared.append(clip.video_id) or original(vp, clip, *rest))
    resumed = _prepare(records, processor, folder, shard_size=1)
    assert prepared == ["broken", "c"]
    assert {shard: shard.stat().st_mtime_ns for shard in shards[:2]} == kept_times
    assert resumed["num_clips"] == 3 and len(resumed["bad_videos"]) == 1
    good = [record for record in records if record.video_id != "broken"]
    assert torch.equal(HBIDataCollator(processor)(good)["pixel_values_videos"],
                       HBIDataCollator(processor)(list(load_video_text_dataset(folder)))["pixel_values_videos"])

    with pytest.raises(PreparedCorpusError, match="other records or settings"):
        _prepare(records[:2], processor, folder, shard_size=1)


def test_a_corpus_prepared_for_other_settings_is_refused(corpus, tmp_path):
    records, processor = corpus
    _prepare(records[:2], processor, tmp_path / "prepared")
    rows = list(load_video_text_dataset(tmp_path / "prepared"))
    with pytest.raises(PreparedCorpusError, match="max_frames: prepared 6, asked 12"):
        HBIDataCollator(processor, max_frames=12)(rows)


def test_streamed_prepared_corpus(corpus, tmp_path):
    records, processor = corpus
    _prepare(records, processor, tmp_path / "prepared")
    streamed = list(load_video_text_dataset(tmp_path / "prepared", streaming=True))
    assert [row["video_id"] for row in streamed] == ["a", "a", "b", "c"]
    assert np.all([is_prepared_reference(row["video"]) for row in streamed])
