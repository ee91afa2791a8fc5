"""The loading layer the commands share: corpora checked against the limit on bad captions before
anything trains, and resume points."""

import json

import pytest

from hbi_transformers.cli.loading import frame_sampling_for, load_corpus


def test_bad_captions_are_counted_against_the_limit(tmp_path):
    rows = [{"video": "a.mp4", "caption": "a cat"}, {"video": "b.mp4", "caption": "   "},
            {"video": "c.mp4", "captions": ["a dog", 7]}, {"video": "d.mp4", "caption": "a bird"}]
    annotations = tmp_path / "train.jsonl"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    records = load_corpus("generic", "train", str(annotations), video_root=str(tmp_path), max_bad_fraction=0.5)
    assert [record["caption"] for record in records] == ["a cat", "a dog", "a bird"]
    with pytest.raises(ValueError, match=r"2 of 5 captions skipped.*40\.0% of the captions, over max_bad_fraction=10\.0%"):
        load_corpus("generic", "train", str(annotations), video_root=str(tmp_path), max_bad_fraction=0.1)


def test_generic_split_without_annotations_and_official_needs():
    assert load_corpus("generic", "eval") is None
    with pytest.raises(ValueError, match="--dataset msrvtt needs --annotations_dir and --video_root"):
        load_corpus("msrvtt", "train")
    with pytest.raises(ValueError, match="unknown --dataset 'kinetics'"):
        load_corpus("kinetics", "train")
    assert frame_sampling_for("didemo") == "per_second" and frame_sampling_for("msrvtt") == "fps"
