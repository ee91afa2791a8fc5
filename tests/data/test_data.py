"""Corpus readers, `datasets` loading and the collator, on tiny mp4 clips written here with PyAV."""

import csv
import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hbi_transformers import HBIProcessor, HBIVideoProcessor
from hbi_transformers.models.hbi import video_processing_hbi
from conftest import tiny_clip_tokenizer, write_shard
from hbi_transformers.data import (
    BadItemCounter,
    HBIDataCollator,
    TooManyBadVideosError,
    VideoClip,
    VideoTextRecord,
    is_empty_batch,
    iter_annotations,
    iter_webdataset,
    load_video_text_dataset,
    read_activitynet,
    read_didemo,
    read_msrvtt,
    read_msrvtt_qa,
    stable_video_index,
    text_to_video_index,
    unique_videos,
)

av = pytest.importorskip("av")

FPS, SIZE, MAX_FRAMES = 8, 32, 4
CLIP_SECONDS = {"video0": 2, "video1": 1, "video2": 3}


def write_clip(path, seconds, seed=0):
    """A 32 x 32 clip at 8 fps whose frames are distinct colour gradients."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for index in range(seconds * FPS):
            frame = np.stack([(x * 8 + index * 16) % 256, (y * 8 + seed * 60) % 256, (x + y + index) % 256], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for seed, (video_id, seconds) in enumerate(CLIP_SECONDS.items()):
        write_clip(root / f"{video_id}.mp4", seconds, seed)
    return root


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    video_processor = HBIVideoProcessor(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}, max_frames=MAX_FRAMES
    )
    return HBIProcessor(video_processor, tiny_clip_tokenizer(tmp_path_factory.mktemp("bpe")), max_words=8)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def summary(records):
    return [(r.video_id, r.caption, r.start, r.end) for r in records]


# --------------------------------------------------------------------------------------------
# Readers


def test_generic_jsonl_and_csv(video_root, tmp_path):
    jsonl = write_jsonl(
        tmp_path / "ann.jsonl",
        [
            {"video": "video0.mp4", "captions": ["a cat", "a dog"], "start": 0, "end": 1},
            {"video_id": "video1", "caption": "cat"},
        ],
    )
    records = list(iter_annotations(jsonl, video_root))
    assert summary(records) == [
        ("video0", "a cat", 0.0, 1.0),
        ("video0", "a dog", 0.0, 1.0),
        ("video1", "cat", None, None),
    ]
    assert records[0].video == str(video_root / "video0.mp4")
    assert records[2].video == str(video_root / "video1.mp4")

    # Ids resolve to the first existing extension, else to the .mp4 path (reported when decoded).
    (video_root / "clip.webm").write_bytes((video_root / "video1.mp4").read_bytes())
    table = write_csv(
        tmp_path / "ann.csv",
        ["video_id", "captions", "start", "end"],
        [["clip", '["a cat", "the dog"]', "", ""], ["absent", "dog", "1.5", "2"]],
    )
    records = list(iter_annotations(table, video_root))
    assert summary(records) == [
        ("clip", "a cat", None, None),
        ("clip", "the dog", None, None),
        ("absent", "dog", 1.5, 2.0),
    ]
    assert [r.video for r in records] == [str(video_root / "clip.webm")] * 2 + [str(video_root / "absent.mp4")]

    with pytest.raises(ValueError, match="pass video_root"):
        list(iter_annotations(table))

    listing = tmp_path / "ann.json"  # a JSON list of rows
    listing.write_text(json.dumps([{"path": "video2.mp4", "text": "dog", "question": "", "id": 7}]))
    assert summary(iter_annotations(listing, video_root)) == [("7", "dog", None, None)]


def test_webdataset_shards_are_read_as_bytes(video_root, tmp_path):
    clip = (video_root / "video0.mp4").read_bytes()
    shard = write_shard(
        tmp_path / "shard-000.tar",
        {
            "s1.mp4": clip,
            "s1.txt": b"a cat\n",
            "s2.mp4": clip,
            "s2.json": json.dumps({"captions": ["dog", "cat"], "start": 1, "end": 2}).encode(),
            "s3.txt": b"no video here",
        },
    )
    records = list(iter_webdataset(shard))
    assert summary(records) == [("s1", "a cat", None, None), ("s2", "dog", 1.0, 2.0), ("s2", "cat", 1.0, 2.0)]
    assert all(record.video == clip for record in records)
    assert len(list(iter_webdataset(tmp_path / "shard-*.tar"))) == 3


def test_msrvtt_official_splits(tmp_path):
    write_csv(tmp_path / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video2"]])
    sentences = [
        {"video_id": "video0", "caption": "a cat", "sen_id": 0},
        {"video_id": "video1", "caption": "a test video", "sen_id": 1},
        {"video_id": "video2", "caption": "a dog", "sen_id": 2},
        {"video_id": "video0", "caption": "the cat", "sen_id": 3},
    ]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    # The real test file starts with an unnamed index column.
    write_csv(
        tmp_path / "MSRVTT_JSFUSION_test.csv",
        ["", "key", "vid_key", "video_id", "sentence"],
        [[0, "ret0", "msr1", "video1", "a test video"]],
    )
    train = read_msrvtt("train", tmp_path, "/videos")
    assert summary(train) == [
        ("video0", "a cat", None, None),
        ("video2", "a dog", None, None),
        ("video0", "the cat", None, None),
    ]
    assert train[1].video == "/videos/video2.mp4"
    assert summary(read_msrvtt("test", tmp_path, "/videos")) == [("video1", "a test video", None, None)]
    with pytest.raises(ValueError, match="splits"):
        read_msrvtt("validation", tmp_path, "/videos")


def test_activitynet_paragraphs(video_root, tmp_path, caplog):
    (video_root / "nested").mkdir(exist_ok=True)
    (video_root / "nested" / "v_abc.mp4").write_bytes((video_root / "video2.mp4").read_bytes())
    (tmp_path / "val_ids.json").write_text(json.dumps(["v_abc", "v_gone"]))
    captions = {
        "v_abc": {"duration": 2.3, "timestamps": [[0, 1], [1, 2.3]], "sentences": ["A man runs.", "He stops."]},
        "v_gone": {"duration": 5.0, "timestamps": [[0, 5]], "sentences": ["Nothing."]},
    }
    (tmp_path / "val_1.json").write_text(json.dumps(captions))
    with caplog.at_level(logging.WARNING):
        records = read_activitynet("val", tmp_path, video_root)
    assert summary(records) == [("abc", "A man runs. He stops.", 0.0, 3.0)]
    assert records[0].video == str(video_root / "nested" / "v_abc.mp4")
    assert "1 of 2 listed videos" in caplog.text and "gone" in caplog.text


def test_didemo_paragraphs(video_root, tmp_path):
    (tmp_path / "test_list.txt").write_text("video1\nvideo2\n")
    items = [
        {"video": "video2", "description": "a dog runs", "times": [[0, 0], [0, 1]]},
        {"video": "video0", "description": "not in the list", "times": [[1, 1]]},
        {"video": "video1", "description": "a cat", "times": [[2, 3]]},
        {"video": "video2", "description": "it jumps", "times": [[4, 5]]},
    ]
    (tmp_path / "test_data.json").write_text(json.dumps(items))
    records = read_didemo("test", tmp_path, video_root)
    assert summary(records) == [("video2", "a dog runs it jumps", 0.0, 31.0), ("video1", "a cat", 0.0, 31.0)]


def test_msrvtt_qa(tmp_path):
    rows = [
        {"video_id": "video0", "question": "what is shown?", "answer": "cat", "answer_type": "what"},
        {"video_id": "video1", "question": "who runs?", "answer": "zebra", "answer_type": "who"},
    ]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    records = read_msrvtt_qa(path, "/videos")
    assert [(r.video, r.caption, r.question, r.answer) for r in records] == [
        ("/videos/video0.mp4", "what is shown?", "what is shown?", "cat"),
        ("/videos/video1.mp4", "who runs?", "who runs?", "zebra"),
    ]
    assert [r.answer for r in read_msrvtt_qa(path, "/videos", answer_vocabulary={"cat": 0})] == ["cat"]


# --------------------------------------------------------------------------------------------
# datasets


def rows_of(dataset):
    return [dict(row) for row in dataset]


def test_streamed_and_in_memory_datasets_agree(video_root, tmp_path):
    jsonl = write_jsonl(tmp_path / "ann.jsonl", [{"video_id": "video0", "captions": ["a cat", "a dog"], "end": 1}])
    shard = write_shard(tmp_path / "shard.tar", {"k.mp4": b"bytes", "k.txt": b"cat"})
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"video_id": "v", "question": "q?", "answer": 3}])
    records = read_msrvtt_qa(qa, "/v")
    for source in (jsonl, shard, [shard], records):
        in_memory = load_video_text_dataset(source, video_root=video_root)
        streamed = load_video_text_dataset(source, video_root=video_root, streaming=True)
        assert rows_of(streamed) == rows_of(in_memory)
    assert [row["caption"] for row in load_video_text_dataset(jsonl, video_root=video_root)] == ["a cat", "a dog"]
    row = dict(video="/v/v.mp4", caption="q?", video_id="v", start=None, end=None, question="q?", answer="3")
    assert rows_of(load_video_text_dataset(records)) == [row]


def test_dataset_folders_through_load_dataset(video_root, processor, tmp_path):
    """The hub code path, on local folders (the only way to run it offline): a jsonl, and a
    video folder whose `video` column is a `datasets.Video` feature."""
    annotations = [{"video": "video0.mp4", "captions": ["a cat", "a dog"]}, {"video": "video1.mp4", "caption": "x"}]
    (tmp_path / "corpus").mkdir()
    write_jsonl(tmp_path / "corpus" / "train.jsonl", annotations)
    folder = tmp_path / "videofolder"
    folder.mkdir()
    for name in ("video0.mp4", "video1.mp4"):
        (folder / name).write_bytes((video_root / name).read_bytes())
    write_jsonl(folder / "metadata.jsonl", [{"file_name": row.pop("video"), **row} for row in annotations])

    for streaming in (False, True):
        rows = rows_of(load_video_text_dataset(tmp_path / "corpus", video_root=video_root, streaming=streaming))
        expected = [("video0", "a cat"), ("video0", "a dog"), ("video1", "x")]
        assert [(row["video_id"], row["caption"]) for row in rows] == expected
        assert rows[0]["video"] == str(video_root / "video0.mp4")

        rows = rows_of(load_video_text_dataset(folder, streaming=streaming))
        assert [row["caption"] for row in rows] == ["a cat", "a dog", "x"]
        assert unique_videos(rows)[1] == VideoClip(str(folder / "video1"), str(folder / "video1.mp4"), None, None)
        assert HBIDataCollator(processor)(rows)["video_mask"].sum(dim=1).tolist() == [2, 2, 1]


# --------------------------------------------------------------------------------------------
# Collation


def record(video_root, video_id, caption, **extra):
    return VideoTextRecord(video=str(video_root / f"{video_id}.mp4"), caption=caption, video_id=video_id, **extra)


def counting_decoder(monkeypatch):
    calls = []
    decode = video_processing_hbi.read_video

    def counted(source, **kwargs):
        calls.append(str(source))
        return decode(source, **kwargs)

    monkeypatch.setattr(video_processing_hbi, "read_video", counted)
    return calls


def test_collator_batch(video_root, processor, monkeypatch):
    calls = counting_decoder(monkeypatch)
    records = [
        record(video_root, "video0", "a cat"),
        record(video_root, "video2", "a dog"),
        record(video_root, "video0", "the cat"),
        record(video_root, "video0", "cat", start=1, end=2),  # another clip of the same file
    ]
    batch = HBIDataCollator(processor)(records)
    report = batch.pop("video_report")
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values_videos", "video_mask", "video_index"}
    assert len(report.tried) == 3 and report.failed == []
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, 8)
    assert batch["pixel_values_videos"].shape == (4, MAX_FRAMES, 3, SIZE, SIZE)
    # 2 s and 3 s at one frame per second; of the segment [1, 2] s, frame 16 is past the end.
    assert batch["video_mask"].sum(dim=1).tolist() == [2, 3, 2, 1]
    index = batch["video_index"].tolist()
    assert batch["video_index"].dtype == torch.long
    assert index[0] == index[2] and len({index[0], index[1], index[3]}) == 3
    assert index[0] == stable_video_index((str(video_root / "video0.mp4"), None, None))
    torch.testing.assert_close(batch["pixel_values_videos"][0], batch["pixel_values_videos"][2])
    assert sorted(calls) == sorted([str(video_root / "video0.mp4")] * 2 + [str(video_root / "video2.mp4")])


def test_video_cache_decodes_each_clip_once(video_root, processor, monkeypatch, tmp_path):
    calls = counting_decoder(monkeypatch)
    missing = VideoTextRecord(video=str(tmp_path / "gone.mp4"), caption="gone", video_id="gone")
    records = [record(video_root, "video0", "a cat"), record(video_root, "video1", "a dog"), missing]
    collator = HBIDataCollator(processor, cache_videos=True, min_items=1, max_bad_fraction=0.5)
    first, second = collator(records), collator(list(reversed(records)))
    assert len(calls) == 3  # two good clips and the missing one, each tried once
    counter = BadItemCounter()
    for batch in (first, second):
        counter.merge(batch["video_report"])
    assert counter.seen_items == 3 and len(counter.bad_items) == 1
    torch.testing.assert_close(first["pixel_values_videos"], second["pixel_values_videos"].flip(0))
    with pytest.raises(ValueError, match="cache_videos"):
        HBIDataCollator(processor, cache_videos=True, do_augment=True)


def test_collator_answer_labels_and_dataset_rows(video_root, processor):
    dataset = load_video_text_dataset(
        [
            record(video_root, "video1", "what?", question="what?", answer="cat"),
            record(video_root, "video0", "who?", question="who?", answer="x"),
        ]
    )
    batch = HBIDataCollator(processor, answer_labels={"cat": 7})(list(dataset))
    assert batch["labels"].tolist() == [7, -1]


def test_collator_skips_and_counts_bad_videos(video_root, processor, tmp_path, caplog):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video" * 50)
    collator = HBIDataCollator(processor)
    records = [
        record(video_root, "video0", "a cat"),
        VideoTextRecord(video=str(corrupt), caption="cat", video_id="corrupt"),
        VideoTextRecord(video=str(tmp_path / "missing.mp4"), caption="dog", video_id="missing"),
        record(video_root, "video1", "a dog"),
    ]
    batch = collator(records)
    assert batch["input_ids"].shape[0] == batch["pixel_values_videos"].shape[0] == 2
    assert batch["video_mask"].sum(dim=1).tolist() == [2, 1]
    counter = BadItemCounter()
    with caplog.at_level(logging.WARNING):
        counter.merge(batch["video_report"])
        counter.merge(batch["video_report"])  # the same clips tried again count once
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "corrupt.mp4" in warnings[0] and "missing.mp4" in warnings[1]
    assert counter.seen_items == 4
    assert [item.name for item in counter.bad_items] == [str(corrupt), str(tmp_path / "missing.mp4")]
    assert counter.bad_items[1].reason == "no such file"
    assert counter.report().startswith(f"2 of 4 videos skipped: {corrupt} (")

    # A batch whose every video fails is no exception: it holds only its report.
    empty = collator(records[2:3])
    assert is_empty_batch(empty) and [name for _, name, _ in empty["video_report"].failed] == [records[2].video]


def test_bad_share_limit(video_root, processor, tmp_path):
    def missing(name):
        return VideoTextRecord(video=str(tmp_path / f"{name}.mp4"), caption="cat", video_id=name)

    collator = HBIDataCollator(processor)
    counter = BadItemCounter(max_bad_fraction=0.25, min_items=4)
    counter.merge(collator([missing("gone"), record(video_root, "video1", "cat")])["video_report"])
    counter.check()  # 1 of 2 bad: over the share, but too few videos to judge
    counter.merge(collator([record(video_root, "video0", "cat"), missing("gone")])["video_report"])
    counter.check()  # 1 of 3: the same bad clip tried again counts once
    counter.merge(collator([missing("lost"), record(video_root, "video2", "cat")])["video_report"])
    with pytest.raises(TooManyBadVideosError, match=r"2 of 5 videos skipped.*40\.0%.*max_bad_fraction=25\.0%"):
        counter.check()


def test_counter_report_lists_a_few():
    counter = BadItemCounter()
    assert counter.report() == "0 of 0 videos skipped"
    for index in range(3):
        counter.record_failure(index, f"v{index}.mp4", "no such file")
    counter.record_success(3)
    expected = "3 of 4 videos skipped: v0.mp4 (no such file), v1.mp4 (no such file) and 1 more"
    assert counter.report(max_listed=2) == expected


def batch_sizes(loader, counter):
    """Sizes of a loader's batches, 0 where every video failed, with their reports counted."""
    sizes = []
    for batch in loader:
        counter.merge(batch["video_report"])
        sizes.append(0 if is_empty_batch(batch) else batch["input_ids"].shape[0])
    return sizes


def test_dataloader_on_streamed_dataset(video_root, processor, tmp_path):
    jsonl = write_jsonl(
        tmp_path / "ann.jsonl",
        [
            {"video_id": "video0", "captions": ["a cat", "a dog"]},
            {"video_id": "absent", "caption": "cat"},
            {"video_id": "video2", "caption": "dog"},
            {"video_id": "gone", "captions": ["cat", "dog"]},
            {"video_id": "video1", "caption": "cat", "start": 0, "end": 1},
        ],
    )
    collator = HBIDataCollator(processor)
    for streaming, workers in ((True, 0), (False, 2)):
        dataset = load_video_text_dataset(jsonl, video_root=video_root, streaming=streaming)
        loader = DataLoader(dataset, batch_size=2, collate_fn=collator, num_workers=workers)
        counter = BadItemCounter()
        # The third batch holds the two captions of "gone" only; the iteration goes on after it.
        assert batch_sizes(loader, counter) == [2, 1, 0, 1], (streaming, workers)
        # Failures in worker processes reach the counter of this one, each clip once.
        assert counter.report().startswith("2 of 5 videos skipped"), (streaming, workers)


def test_evaluation_helpers(video_root):
    records = [
        record(video_root, "video1", "a"),
        record(video_root, "video0", "b"),
        record(video_root, "video1", "c"),
        record(video_root, "video1", "d", start=0, end=1),
    ]
    clips = unique_videos(records)
    assert clips == [
        VideoClip("video1", str(video_root / "video1.mp4"), None, None),
        VideoClip("video0", str(video_root / "video0.mp4"), None, None),
        VideoClip("video1", str(video_root / "video1.mp4"), 0.0, 1.0),
    ]
    assert text_to_video_index(records) == [0, 1, 0, 2]


def test_collate_videos_for_evaluation(video_root, processor, tmp_path):
    missing = VideoClip("gone", str(tmp_path / "gone.mp4"), None, None)
    clips = [missing, *unique_videos([record(video_root, "video2", "x")])]
    collator = HBIDataCollator(processor)
    videos = collator.collate_videos(clips)
    assert videos["clip_positions"].tolist() == [1]
    assert videos["pixel_values_videos"].shape == (1, MAX_FRAMES, 3, SIZE, SIZE)
    assert videos["video_mask"].sum().item() == 3
    assert collator.counter.report() == f"1 of 2 videos skipped: {tmp_path / 'gone.mp4'} (no such file)"
