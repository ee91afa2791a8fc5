"""Messy annotation files and shards: each problem is rejected at load or skipped and counted,
with the file and line in the message, and webdataset keys repeated across shards stay distinct."""

import json
import logging
import re

import pytest
import torch

from conftest import textured_frames, tiny_processor, write_mp4, write_shard
from hbi_transformers.data import (
    HBIDataCollator,
    iter_annotations,
    iter_webdataset,
    load_video_text_dataset,
    read_msrvtt,
    read_msrvtt_qa,
    stable_video_index,
    text_to_video_index,
    unique_videos,
)
from hbi_transformers.data.annotations import AnnotationReport, annotation_rows

av = pytest.importorskip("av")


def write_lines(path, *lines, encoding="utf-8"):
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))
    return path


def jsonl(*rows):
    return [json.dumps(row) for row in rows]


def captions(records):
    return [record.caption for record in records]


def located(path, line):
    """A pattern for messages that name `path` at `line`."""
    return re.escape(f"{path}:{line}")


def warnings_of(caplog):
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_a_caption_starting_with_a_bracket_is_text(tmp_path):
    rows = write_lines(
        tmp_path / "ann.jsonl",
        *jsonl(
            {"video_id": "v", "caption": "[music] a man sings"},
            {"video_id": "v", "captions": ["[laughs] a dog", "a cat"]},
        ),
    )
    assert captions(iter_annotations(rows, tmp_path)) == ["[music] a man sings", "[laughs] a dog", "a cat"]

    # In csv only a "captions" cell is a JSON array; a "caption" cell is always one caption.
    table = write_lines(tmp_path / "ann.csv", "video_id,caption", "v,[music] a man sings", 'v,"[""a"", ""b""]"')
    assert captions(iter_annotations(table, tmp_path)) == ["[music] a man sings", '["a", "b"]']
    table = write_lines(tmp_path / "list.csv", "video_id,captions", 'v,"[""a cat"", ""a dog""]"', "v,[music] sings")
    with pytest.raises(ValueError, match=located(table, 3) + r': the "captions" cell .* not a JSON array'):
        list(iter_annotations(table, tmp_path))


def test_blank_captions_are_skipped_and_counted(tmp_path, caplog):
    rows = write_lines(
        tmp_path / "ann.jsonl",
        *jsonl(
            {"video_id": "v", "captions": ["a cat", "   ", ""]},
            {"video_id": "v", "caption": "\t\n"},
            {"video_id": "v", "caption": "&nbsp;"},  # the processor's cleaning leaves nothing
            {"video_id": "v", "caption": "a dog"},
        ),
    )
    report = AnnotationReport()
    with caplog.at_level(logging.INFO):
        records = list(iter_annotations(rows, tmp_path, report=report))
    assert captions(records) == ["a cat", "a dog"]
    assert (report.captions, report.skipped_fraction) == (6, 4 / 6)
    assert [item.location for item in report.skipped] == [f"{rows}:{line}" for line in (1, 1, 2, 3)]
    assert report.skipped[1].reason == "caption 3 of 3 is empty"
    # Every kept caption is one the processor reads: none fails mid-training.
    tiny_processor(tmp_path)[0].tokenize(captions(records))

    warnings = warnings_of(caplog)
    assert warnings[0].startswith(f"{rows}:1: caption 2 of 3 is blank")
    assert warnings[-1].startswith(f"{rows}: 4 of 6 captions skipped: {rows}:1 (caption 2 of 3 is blank")

    table = write_lines(tmp_path / "ann.csv", "video_id,caption", "v,a cat", 'v,"  "', "v,dog")
    report = AnnotationReport()
    assert captions(iter_annotations(table, tmp_path, report=report)) == ["a cat", "dog"]
    assert [item.location for item in report.skipped] == [f"{table}:3"]

    empty = write_lines(tmp_path / "empty.jsonl", *jsonl({"video_id": "v", "caption": " "}))
    with pytest.raises(ValueError, match=re.escape(f"{empty}: no usable caption; 1 of 1 captions skipped: {empty}:1")):
        list(iter_annotations(empty, tmp_path))


def test_captions_of_the_wrong_type_are_skipped(tmp_path):
    rows = write_lines(
        tmp_path / "ann.jsonl",
        *jsonl(
            {"video_id": "v", "caption": {"en": "a cat"}},
            {"video_id": "v", "caption": 5},
            {"video_id": "v", "caption": None},
            {"video_id": "v", "captions": ["a dog", ["nested"], 3.5, None]},
            {"video_id": "v", "captions": []},
            {"video_id": "v", "title": "no caption column"},
        ),
    )
    report = AnnotationReport()
    assert captions(iter_annotations(rows, tmp_path, report=report)) == ["a dog"]
    reasons = [(item.location, item.reason) for item in report.skipped]
    assert reasons == [
        (f"{rows}:1", "caption is dict {'en': 'a cat'}, not text"),
        (f"{rows}:2", "caption is int 5, not text"),
        (f"{rows}:3", "caption is NoneType None, not text"),
        (f"{rows}:4", "caption 2 of 4 is list ['nested'], not text"),
        (f"{rows}:4", "caption 3 of 4 is float 3.5, not text"),
        (f"{rows}:4", "caption 4 of 4 is NoneType None, not text"),
        (f"{rows}:5", "the list of captions is empty"),
        (f"{rows}:6", "the row has no caption column (one of caption, captions, sentence, text, description)"),
    ]

    bad_start = write_lines(tmp_path / "start.jsonl", *jsonl({"video_id": "v", "caption": "a", "start": "soon"}))
    with pytest.raises(ValueError, match=located(bad_start, 1) + ": start is str 'soon', not a number of seconds"):
        list(iter_annotations(bad_start, tmp_path))


def test_malformed_json_names_the_file_and_line(tmp_path):
    rows = write_lines(tmp_path / "ann.jsonl", *jsonl({"video_id": "v", "caption": "a"}), "", '{"video_id": "v", "cap')
    with pytest.raises(ValueError, match=located(rows, 3) + ": malformed JSON line: Unterminated string"):
        list(iter_annotations(rows, tmp_path))
    rows = write_lines(tmp_path / "list.jsonl", '["v", "a cat"]')
    with pytest.raises(ValueError, match=located(rows, 1) + ": a row is a JSON object of columns, not list"):
        list(annotation_rows(rows))

    listing = tmp_path / "ann.json"
    listing.write_text('[\n  {"video_id": "v", "caption": "a"},\n  {"video_id": "v", "caption": " "}\n]\n')
    report = AnnotationReport()
    assert captions(iter_annotations(listing, tmp_path, report=report)) == ["a"]
    assert report.skipped[0].location == f"{listing}:3 (row 2)"
    listing.write_text('[{"video_id": "v", "caption": "a"},\n {"video_id": "v" "caption": "b"}]')
    with pytest.raises(ValueError, match=located(listing, 2) + ": malformed JSON: Expecting ','"):
        list(iter_annotations(listing, tmp_path))


def test_a_byte_order_mark_is_read_as_utf8(tmp_path):
    table = write_lines(tmp_path / "ann.csv", "video_id,caption", "v,a cat", encoding="utf-8-sig")
    assert captions(iter_annotations(table, tmp_path)) == ["a cat"]
    rows = write_lines(tmp_path / "ann.jsonl", *jsonl({"video_id": "v", "caption": "a dog"}), encoding="utf-8-sig")
    assert captions(iter_annotations(rows, tmp_path)) == ["a dog"]


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    rows = tmp_path / "ann.jsonl"
    rows.write_bytes(b'{"video_id": "v", "caption": "a cat"}\n{"video_id": "v", "caption": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=located(rows, 2) + r": not UTF-8 text \(byte 0xe9 at column 34\)"):
        list(iter_annotations(rows, tmp_path))
    table = tmp_path / "ann.csv"
    table.write_bytes(b"video_id,caption\nv,a cat\nv,\xff\xfe\n")
    with pytest.raises(ValueError, match=located(table, 3) + ": not UTF-8 text"):
        list(iter_annotations(table, tmp_path))


def test_a_row_naming_no_video_is_rejected(tmp_path):
    rows = write_lines(tmp_path / "ann.jsonl", *jsonl({"video_id": "v", "caption": "a"}, {"caption": "b"}))
    with pytest.raises(ValueError, match=located(rows, 2) + ": the row names no video"):
        list(iter_annotations(rows, tmp_path))
    # A caption with an unquoted comma would shift the csv's columns: the row is rejected.
    table = write_lines(tmp_path / "ann.csv", "video_id,caption,start", "v,a cat,1", "v,a dog, sitting,2")
    with pytest.raises(ValueError, match=located(table, 3) + ": 4 cells where the header has 3"):
        list(iter_annotations(table, tmp_path))


def test_official_readers_check_their_files(tmp_path):
    qa = write_lines(
        tmp_path / "qa.jsonl",
        *jsonl(
            {"video_id": "v0", "question": "who?", "answer": "a"},
            {"video_id": "v1", "question": "", "answer": "b"},
        ),
        encoding="utf-8-sig",
    )
    report = AnnotationReport()
    assert [record.question for record in read_msrvtt_qa(qa, "/videos", report=report)] == ["who?"]
    assert [(item.location, item.reason) for item in report.skipped] == [(f"{qa}:2", "question is empty")]
    qa.write_bytes(qa.read_bytes() + b"{oops\n")
    with pytest.raises(ValueError, match=located(qa, 3) + ": malformed JSON line"):
        read_msrvtt_qa(qa, "/videos")

    write_lines(tmp_path / "MSRVTT_train.9k.csv", "video_id", "video0", encoding="utf-8-sig")
    sentences = [{"video_id": "video0", "caption": "a cat"}, {"video_id": "video0", "caption": ["a dog"]}]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    report = AnnotationReport()
    assert captions(read_msrvtt("train", tmp_path, "/videos", report=report)) == ["a cat"]
    assert report.skipped[0].location == f"{tmp_path / 'MSRVTT_data.json'} (sentences[1])"


# --------------------------------------------------------------------------------------------
# Webdataset clip identity


def test_webdataset_keys_repeated_across_shards_stay_distinct_clips(tmp_path):
    videos = [
        write_mp4(tmp_path / f"{seed}.mp4", textured_frames(4, 32, 32, seed), fps=4).read_bytes() for seed in range(8)
    ]

    def sample(shard, key):
        clip = 4 * shard + key
        return [(f"k{key}.mp4", videos[clip]), (f"k{key}.txt", f"clip {clip}".encode())]

    # Both shards hold keys k0 to k3, for 8 different videos.
    shards = [
        write_shard(tmp_path / f"shard-{shard}.tar", dict(item for key in range(4) for item in sample(shard, key)))
        for shard in range(2)
    ]
    records = list(iter_webdataset(shards))
    assert [record.video_id for record in records] == ["k0", "k1", "k2", "k3"] * 2
    assert len({record.clip_key for record in records}) == 8
    assert len(unique_videos(records)) == 8 and text_to_video_index(records) == list(range(8))
    assert records[0].name.startswith("k0@blake2b:") and records[0].name != records[4].name

    # Through `datasets` rows, evaluation and collation see the 8 clips.
    rows = [dict(row) for row in load_video_text_dataset(shards)]
    clips = unique_videos(rows)
    assert len(clips) == 8 and text_to_video_index(rows) == list(range(8))
    collator = HBIDataCollator(tiny_processor(tmp_path)[0])
    batch = collator(rows)
    assert len(set(batch["video_index"].tolist())) == 8
    assert batch["video_index"][0] == stable_video_index(records[0].clip_key)
    pixels = batch["pixel_values_videos"]
    assert all(not torch.equal(pixels[key], pixels[key + 4]) for key in range(4))
    assert collator.collate_videos(clips)["clip_positions"].tolist() == list(range(8))

    # The same bytes under the same key are one clip, wherever they are.
    copy = write_shard(tmp_path / "copy.tar", {"k0.mp4": videos[0], "k0.txt": b"again"})
    assert len(unique_videos(iter_webdataset([shards[0], copy]))) == 4


def test_unreadable_webdataset_samples_are_left_out_and_counted(tmp_path, caplog):
    shard = write_shard(
        tmp_path / "shard.tar",
        {
            "a.mp4": b"video a",
            "a.txt": b"a cat",
            "b.mp4": b"video b",
            "b.json": b'{"caption": "a dog"',
            "c.mp4": b"video c",
            "c.txt": b"caf\xe9",
            "d.mp4": b"video d",
            "d.json": json.dumps({"captions": ["a dog", " "], "start": "soon"}).encode(),
            "e.mp4": b"video e",
            "e.txt": b"\xef\xbb\xbf  ",
        },
    )
    report = AnnotationReport()
    with caplog.at_level(logging.WARNING):
        assert captions(iter_webdataset(shard, report=report)) == ["a cat"]
    assert [(item.location, item.reason.split(":")[0]) for item in report.skipped] == [
        (f"{shard}:b", "sample left out"),
        (f"{shard}:c", "sample left out"),
        (f"{shard}:d", "sample left out"),
        (f"{shard}:e.txt", "caption is empty"),
    ]
    assert "b.json is malformed JSON" in report.skipped[0].reason
    assert "c.txt is not UTF-8 text (byte 0xe9 at offset 3)" in report.skipped[1].reason
    assert "start is str 'soon'" in report.skipped[2].reason
    assert warnings_of(caplog)[-1].startswith(f"{shard}: 4 of 5 captions skipped: {shard}:b (sample left out")
