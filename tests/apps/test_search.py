"""Index a folder of generated clips and search it by text.

A tiny random model has no semantics, so "finds the clip a caption was written for" is checked
as consistency: the index's ranking must be the one `compute_similarity` gives on freshly encoded
videos, so a trained model finds what it would find in an evaluation."""

import json
import os

import pytest
import torch
from conftest import make_batch, textured_frames, tiny_clip_tokenizer, tiny_config, write_mp4

from hbi_transformers import HBIModel, HBIProcessor, HBIVideoProcessor
from hbi_transformers.models.hbi import video_processing_hbi
from hbi_transformers.models.hbi.wti import weighted_token_interaction
from hbi_transformers.models.hbi.modeling_hbi import HBITextOutput, HBIVideoOutput
from hbi_transformers.apps.search import (
    INFO_NAME,
    IndexBusyError,
    IndexDamagedError,
    IndexModelMismatchError,
    OldIndexFormatError,
    VideoIndex,
    best_matching_frames,
    build_index,
    index_from_features,
    search,
    search_by_text_features,
    search_results_to_json,
)
from hbi_transformers.cli import index as index_command
from hbi_transformers.cli import search as search_command

QUERIES = ["red cat", "blue dog", "a cat and a dog"]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    video_processor = HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, max_frames=6)
    return HBIProcessor(video_processor, tiny_clip_tokenizer(tmp_path_factory.mktemp("bpe")), max_words=8)


def make_model(processor, seed=0):
    torch.manual_seed(seed)
    text_config = {**tiny_config().text_config.to_dict(), "vocab_size": len(processor.tokenizer)}
    # Every level counts, so that the index is checked against the full HBI score.
    return HBIModel(tiny_config(text_config=text_config, level_weights=[0.5, 0.3, 0.2])).eval()


@pytest.fixture(scope="module")
def model(processor):
    return make_model(processor)


def write_clip(path, seed, num_frames=12, fps=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_mp4(path, textured_frames(num_frames, 32, 32, seed=seed), fps=fps)


@pytest.fixture
def video_folder(tmp_path):
    folder = tmp_path / "videos"
    for index in range(5):
        write_clip(folder / ("nested" if index % 2 else "") / f"clip{index}.mp4", seed=index)
    return folder


@pytest.fixture
def count_decodes(monkeypatch):
    """The file names `read_video` is called on, through the video processor."""
    decoded = []
    original = video_processing_hbi.read_video

    def counting_read_video(source, **kwargs):
        decoded.append(os.path.basename(source))
        return original(source, **kwargs)

    monkeypatch.setattr(video_processing_hbi, "read_video", counting_read_video)
    return decoded


def relative_files(folder):
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.mp4"))


@torch.no_grad()
def direct_similarity(model, processor, folder, files, queries):
    """What an evaluation computes: every video and query encoded afresh, then compute_similarity."""
    videos = processor(videos=[str(folder / file) for file in files], return_tensors="pt")
    texts = processor(text=queries, return_tensors="pt")
    video_outputs = model.get_video_features(videos["pixel_values_videos"], videos["video_mask"])
    text_outputs = model.get_text_features(texts["input_ids"], texts["attention_mask"])
    torch.manual_seed(0)
    return model.compute_similarity(text_outputs, video_outputs)


def test_search_ranks_as_compute_similarity_on_fresh_encodings(model, processor, video_folder, tmp_path):
    report = build_index(video_folder, model, processor, tmp_path / "index", batch_size=2, progress=False)
    files = relative_files(video_folder)
    assert (report.num_entries, report.num_files, sorted(report.added)) == (5, 5, files)

    results = search(tmp_path / "index", QUERIES, model, processor, top_k=len(files))
    expected = direct_similarity(model, processor, video_folder, files, QUERIES)
    for query, hits in enumerate(results):
        scores, order = expected.logits_per_text[query].sort(descending=True)
        assert [hit.file for hit in hits] == [files[i] for i in order]
        assert [hit.rank for hit in hits] == list(range(1, len(files) + 1))
        torch.testing.assert_close(torch.tensor([hit.score for hit in hits]), scores, atol=1e-4, rtol=0)
        for hit, video in zip(hits, order):
            levels = torch.tensor(list(hit.level_scores.values()))
            torch.testing.assert_close(
                levels, torch.stack([level[query, video] for level in expected.level_logits_per_text]), atol=1e-4,
                rtol=0,
            )
            assert hit.path == str(video_folder / hit.file)
            assert hit.segment_start is None and hit.segment_end is None
            assert 0 <= hit.window_start <= hit.best_frame_time <= hit.window_end <= 3.0  # 12 frames at 4 fps


def test_frame_shares_add_up_to_the_entity_score(model):
    batch = make_batch(n_text=4, n_video=4, words=8, frames=6)
    text = model.text_levels(model.get_text_features(batch["input_ids"], batch["attention_mask"]).text_embeds,
                             batch["attention_mask"], num_levels=1)[0]
    videos = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
    video = model.video_levels(videos.video_embeds, videos.video_mask, num_levels=1)[0]
    shares = best_matching_frames(text, video)
    assert shares.shape == (4, 6)
    torch.testing.assert_close(shares.sum(dim=1), weighted_token_interaction(text, video).diagonal())


def test_reindex_encodes_only_new_and_changed_files(model, processor, video_folder, tmp_path, count_decodes):
    index_dir = tmp_path / "index"
    build_index(video_folder, model, processor, index_dir, batch_size=2, batch_rows=2, progress=False)
    kept = {row["file"]: row for row in VideoIndex.open(index_dir).dataset.to_table().to_pylist()}

    write_clip(video_folder / "nested" / "clip3.mp4", seed=7, num_frames=16)  # changed
    (video_folder / "clip4.mp4").unlink()  # deleted
    write_clip(video_folder / "new" / "clip5.mp4", seed=5)  # added
    count_decodes.clear()
    report = build_index(video_folder, model, processor, index_dir, batch_size=2, batch_rows=2, progress=False)

    assert sorted(count_decodes) == ["clip3.mp4", "clip5.mp4"]
    assert (report.added, report.updated, report.removed, report.unchanged) == (
        ["new/clip5.mp4"], ["nested/clip3.mp4"], ["clip4.mp4"], 3
    )
    rows = {row["file"]: row for row in VideoIndex.open(index_dir).dataset.to_table().to_pylist()}
    assert sorted(rows) == relative_files(video_folder)
    assert all(rows[file] == kept[file] for file in ("clip0.mp4", "clip2.mp4", "nested/clip1.mp4"))  # not re-encoded
    assert sorted(path.name for path in index_dir.iterdir()) == sorted([INFO_NAME, "entries.lance", "write.lock"])

    # The updated index ranks as the folder now is.
    files = relative_files(video_folder)
    hits = search(index_dir, QUERIES[:1], model, processor, top_k=len(files))[0]
    expected = direct_similarity(model, processor, video_folder, files, QUERIES[:1]).logits_per_text[0]
    assert [hit.file for hit in hits] == [files[i] for i in expected.argsort(descending=True)]

    count_decodes.clear()
    report = build_index(video_folder, model, processor, index_dir, batch_size=2, batch_rows=2, progress=False)
    assert count_decodes == [] and report.unchanged == 5 and not (report.added or report.updated or report.removed)


def test_content_hashes_keep_touched_but_unchanged_files(model, processor, tmp_path, count_decodes):
    folder = tmp_path / "videos"
    clip = write_clip(folder / "clip.mp4", seed=0)
    build_index(folder, model, processor, tmp_path / "index", hash_contents=True, progress=False)
    os.utime(clip, ns=(1_000_000_000, 1_000_000_000))  # a copy or a touch: new time, same bytes
    count_decodes.clear()
    report = build_index(folder, model, processor, tmp_path / "index", hash_contents=True, progress=False)
    assert count_decodes == [] and report.unchanged == 1
    os.utime(clip, ns=(2_000_000_000, 2_000_000_000))
    report = build_index(folder, model, processor, tmp_path / "index", progress=False)  # times only
    assert count_decodes == ["clip.mp4"] and report.updated == ["clip.mp4"]


def test_bad_files_are_reported_skipped_and_retried_once_changed(
    model, processor, video_folder, tmp_path, count_decodes
):
    (video_folder / "broken.mp4").write_bytes(b"\x00\x01 not a video" * 20)
    (video_folder / "empty.mkv").write_bytes(b"")
    report = build_index(video_folder, model, processor, tmp_path / "index", progress=False)
    assert {item.name for item in report.bad_files} == {"broken.mp4", "empty.mkv"}
    assert all(item.reason for item in report.bad_files)
    assert report.num_bad == 2 and report.num_entries == 5
    assert "broken.mp4" in report.summary()
    hits = search(tmp_path / "index", QUERIES[0], model, processor, top_k=10)[0]
    assert {hit.file for hit in hits} == set(relative_files(video_folder)) - {"broken.mp4"}

    count_decodes.clear()
    report = build_index(video_folder, model, processor, tmp_path / "index", progress=False)
    assert count_decodes == [] and report.num_bad == 2  # still reported, not decoded again

    write_clip(video_folder / "broken.mp4", seed=9)  # repaired
    report = build_index(video_folder, model, processor, tmp_path / "index", progress=False)
    assert report.added == ["broken.mp4"] and [item.name for item in report.bad_files] == ["empty.mkv"]
    assert report.num_entries == 6


def assert_same_hits(got, expected):
    """Same ranking, windows and files; scores equal up to float rounding (the pool's scoring
    multiplies blocks of another shape)."""
    assert len(got) == len(expected)
    for query_hits, expected_hits in zip(got, expected):
        assert [(h.rank, h.file, h.window_start, h.window_end) for h in query_hits] == [
            (h.rank, h.file, h.window_start, h.window_end) for h in expected_hits
        ]
        for hit, expected_hit in zip(query_hits, expected_hits):
            assert hit.score == pytest.approx(expected_hit.score, abs=1e-5)
            for level, score in expected_hit.level_scores.items():
                assert hit.level_scores[level] == pytest.approx(score, abs=1e-5)


def test_two_stage_search_equals_exhaustive_when_the_pool_covers_the_index(model, processor, video_folder, tmp_path):
    build_index(video_folder, model, processor, tmp_path / "index", batch_size=2, batch_rows=2, progress=False)
    exhaustive = search(tmp_path / "index", QUERIES, model, processor, top_k=5)
    for pool in (5, 50):
        assert_same_hits(search(tmp_path / "index", QUERIES, model, processor, top_k=5, candidates=pool), exhaustive)
    # A smaller pool re-ranks its candidates with the same HBI scores.
    narrowed = search(tmp_path / "index", QUERIES, model, processor, top_k=2, candidates=3)
    for hits, full in zip(narrowed, exhaustive):
        full_score = {hit.file: hit.score for hit in full}
        assert len(hits) == 2 and hits[0].score >= hits[1].score
        for hit in hits:
            assert hit.score == pytest.approx(full_score[hit.file], abs=1e-4)
    with pytest.raises(ValueError, match="candidates"):
        search(tmp_path / "index", QUERIES, model, processor, top_k=5, candidates=4)


def test_two_stage_over_many_shards_of_precomputed_features(model, processor, tmp_path):
    generator = torch.Generator().manual_seed(0)
    num_videos, frames, dim = 40, 6, model.config.projection_dim
    lengths = torch.randint(3, frames + 1, (num_videos,), generator=generator)
    videos = HBIVideoOutput(
        video_embeds=torch.randn(num_videos, frames, dim, generator=generator),
        video_mask=(torch.arange(frames)[None] < lengths[:, None]).long(),
    )
    texts = HBITextOutput(text_embeds=torch.randn(3, 8, dim, generator=generator),
                          attention_mask=torch.ones(3, 8, dtype=torch.long))
    index = index_from_features(tmp_path / "index", model, videos, [f"video{i}" for i in range(num_videos)], batch_rows=7)
    assert len(index) == num_videos and len(index.dataset.get_fragments()) == 6

    exhaustive = search_by_text_features(index, texts, model, top_k=10)
    assert_same_hits(search_by_text_features(index, texts, model, top_k=10, candidates=num_videos), exhaustive)
    torch.manual_seed(0)
    expected = model.compute_similarity(texts, videos).logits_per_text
    for query, hits in enumerate(exhaustive):
        assert [hit.file for hit in hits] == [f"video{i}" for i in expected[query].topk(10).indices]
        assert hits[0].window_start is None  # no timestamps without files
    (tmp_path / "videos").mkdir()
    with pytest.raises(ValueError, match="made from features"):
        build_index(tmp_path / "videos", model, processor, tmp_path / "index", progress=False)


def test_an_index_of_another_model_or_other_settings_is_refused(model, processor, video_folder, tmp_path):
    build_index(video_folder, model, processor, tmp_path / "index", progress=False)
    other_model = make_model(processor, seed=1)
    with pytest.raises(IndexModelMismatchError, match="another model"):
        search(tmp_path / "index", QUERIES, other_model, processor)
    with pytest.raises(IndexModelMismatchError, match="another model"):
        build_index(video_folder, other_model, processor, tmp_path / "index", progress=False)
    other_frames = HBIProcessor(processor.video_processor.__class__(
        **{**processor.video_processor.to_dict(), "max_frames": 4}), processor.tokenizer, max_words=8)
    with pytest.raises(IndexModelMismatchError, match="max_frames"):
        build_index(video_folder, model, other_frames, tmp_path / "index", progress=False)
    with pytest.raises(IndexModelMismatchError, match="whole videos, not 10-second windows"):
        build_index(video_folder, model, processor, tmp_path / "index", segment_seconds=10, progress=False)


def test_segments_are_fixed_windows_that_hits_point_into(model, processor, tmp_path):
    folder = tmp_path / "videos"
    write_clip(folder / "long.mp4", seed=1, num_frames=50, fps=2)  # 25 s
    write_clip(folder / "short.mp4", seed=2, num_frames=6, fps=2)  # 3 s
    report = build_index(folder, model, processor, tmp_path / "index", segment_seconds=10, progress=False)
    assert report.num_entries == 4 and report.num_files == 2
    entries = VideoIndex.open(tmp_path / "index").dataset.to_table().to_pylist()
    assert [(entry["file"], entry["start"], entry["end"]) for entry in entries] == [
        ("long.mp4", 0, 10), ("long.mp4", 10, 20), ("long.mp4", 20, 25.0), ("short.mp4", 0, 3.0)
    ]
    for entry in entries:
        assert all(entry["start"] <= time <= entry["end"] for time in entry["timestamps"])

    hits = search(tmp_path / "index", QUERIES[0], model, processor, top_k=4)[0]
    assert sorted((hit.file, hit.segment_start) for hit in hits) == [
        ("long.mp4", 0), ("long.mp4", 10), ("long.mp4", 20), ("short.mp4", 0)
    ]
    for hit in hits:
        assert hit.segment_start <= hit.window_start <= hit.best_frame_time <= hit.window_end <= hit.segment_end
    with pytest.raises(ValueError, match="whole number"):
        build_index(folder, model, processor, tmp_path / "other", segment_seconds=2.5, progress=False)


def test_command_lines(model, processor, video_folder, tmp_path, capsys):
    model_dir = tmp_path / "hbi"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    index_dir = tmp_path / "index"
    report = index_command.run([str(video_folder), "--model", str(model_dir), "--output", str(index_dir), "--batch-size",
                               "2", "--device", "cpu"])
    assert report.num_entries == 5
    assert "5 entries from 5 files" in capsys.readouterr().out

    # The model defaults to the one the index names.
    results = search_command.run([str(index_dir), *QUERIES[:2], "--top-k", "3", "--json", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == search_results_to_json(QUERIES[:2], results)
    assert [entry["query"] for entry in printed] == QUERIES[:2]
    assert [len(entry["hits"]) for entry in printed] == [3, 3]
    assert set(printed[0]["hits"][0]) == {
        "rank", "score", "file", "path", "segment_start", "segment_end", "window_start", "window_end",
        "best_frame_time", "level_scores",
    }
    assert printed == search_results_to_json(QUERIES[:2], search(index_dir, QUERIES[:2], model, processor, top_k=3))

    search_command.run([str(index_dir), QUERIES[0], "--top-k", "2", "--candidates", "4", "--device", "cpu"])
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0] == f"query: {QUERIES[0]}" and lines[1].split() == ["rank", "score", "file", "window"]
    assert lines[2].split()[:3] == ["1", f"{results[0][0].score:.2f}", results[0][0].file]
    assert len(lines) == 4
