"""Index a folder of generated clips and search it by text.

A tiny random model has no semantics, so "finds the clip a caption was written for" is checked
as consistency: the index's ranking must be the one `compute_similarity` gives on freshly encoded
videos, so a trained model finds what it would find in an evaluation."""

import json
import os

import numpy as np

import pytest
import torch
from conftest import make_batch, textured_frames, tiny_clip_tokenizer, tiny_config, write_mp4

from hbi_transformers import HBIModel, HBIProcessor, HBIVideoProcessor
from hbi_transformers.models.hbi import video_processing_hbi
from hbi_transformers.models.hbi.wti import weighted_token_interaction
from hbi_transformers.models.hbi.modeling_hbi import HBITextOutput, HBIVideoOutput
from hbi_transformers.apps.search import (
    INFO_NAME,
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
from hbi_transformers.apps.search.rank import _RunningTopK
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


def test_a_model_changed_in_place_after_a_search_is_refused(processor, video_folder, tmp_path):
    changing = make_model(processor)
    build_index(video_folder, changing, processor, tmp_path / "index", progress=False)
    index = VideoIndex.open(tmp_path / "index")
    index.check_model(changing)
    index.check_model(changing)  # checked once, remembered
    with torch.no_grad():
        # A weight the fingerprint samples (its first value).
        next(changing.parameters()).view(-1)[0].add_(1.0)
    with pytest.raises(IndexModelMismatchError, match="another model"):
        index.check_model(changing)


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


WRITER_SCRIPT = """
import sys, torch
sys.path[:0] = [{tests!r}, {root!r}]
from test_search import features_index_model, synthetic_videos
from hbi_transformers.apps.search import IndexBusyError, index_from_features
model = features_index_model()
try:
    index_from_features({index!r}, model, synthetic_videos({count}, seed={seed}),
                        [f"{seed}-{{i}}" for i in range({count})], batch_rows={batch_rows}, batch_size={batch_rows})
    print("ok")
except (IndexBusyError, FileExistsError) as error:
    print("refused:", error)
"""


def features_index_model():
    torch.manual_seed(0)
    return HBIModel(tiny_config(level_weights=[0.5, 0.3, 0.2])).eval()


def synthetic_videos(count, seed, frames=6, dim=None):
    generator = torch.Generator().manual_seed(seed)
    dim = dim or tiny_config().projection_dim
    lengths = torch.randint(3, frames + 1, (count,), generator=generator)
    return HBIVideoOutput(video_embeds=torch.randn(count, frames, dim, generator=generator),
                          video_mask=(torch.arange(frames)[None] < lengths[:, None]).long())


def start_writer(index_dir, count, seed, batch_rows):
    import subprocess
    import sys

    script = WRITER_SCRIPT.format(tests=os.path.dirname(__file__), root=os.path.dirname(os.path.dirname(__file__)), index=str(index_dir), count=count, seed=seed,
                                  batch_rows=batch_rows)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def test_two_writers_at_once_one_lands_the_other_is_refused_never_crossed(tmp_path):
    index_dir = tmp_path / "index"
    writers = [start_writer(index_dir, 100, seed, batch_rows=10) for seed in (1, 2)]
    outputs = [writer.communicate(timeout=120) for writer in writers]
    printed = [out.strip() for out, _ in outputs]
    assert sorted(line.split(":")[0] for line in printed) == ["ok", "refused"], outputs
    assert "writing to the index" in printed[1 - printed.index("ok")] or "already holds" in "".join(printed)
    winner = (1, 2)[printed.index("ok")]
    index = VideoIndex.open(index_dir)
    batches = list(index.scan(64))  # every checksum checked
    files = [file for batch in batches for file in batch.column("file").to_pylist()]
    stored = torch.from_numpy(np.concatenate([index.output(batch, "video_embeds") for batch in batches]))
    expected = synthetic_videos(100, winner).video_embeds
    assert sorted(files) == sorted(f"{winner}-{i}" for i in range(100))
    for row, name in enumerate(files):
        torch.testing.assert_close(stored[row].reshape(expected.shape[1:]), expected[int(name.split("-")[1])])


def test_a_writer_killed_mid_write_leaves_the_last_commit(tmp_path):
    import signal
    import time

    index_dir = tmp_path / "index"
    writer = start_writer(index_dir, 1000, 1, batch_rows=10)
    versions = index_dir / "entries.lance" / "_versions"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(versions.glob("*.manifest")) if versions.exists() else []) < 4:
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    index = VideoIndex.open(index_dir)
    count = len(index)
    assert 0 < count < 1000 and count % 10 == 0
    assert sum(batch.num_rows for batch in index.scan(64)) == count  # every row whole and checked
    # The dead writer's lock is gone with it.
    from hbi_transformers.apps.search.writing import IndexWriter

    IndexWriter(index_dir).close()


def test_damaged_files_are_detected_and_named_with_the_rebuild_command(model, processor, video_folder, tmp_path):
    index_dir = tmp_path / "index"
    build_index(video_folder, model, processor, index_dir, progress=False)
    data_file = next((index_dir / "entries.lance" / "data").iterdir())
    original = data_file.read_bytes()
    command = f"hbi-index {video_folder.resolve()} --model"

    data_file.write_bytes(original[: len(original) // 2])  # truncated
    with pytest.raises(IndexDamagedError, match="--rebuild") as error:
        build_index(video_folder, model, processor, index_dir, progress=False)
    assert command in str(error.value)
    data_file.unlink()  # deleted
    with pytest.raises(IndexDamagedError, match="missing"):
        search(index_dir, QUERIES, model, processor)

    flipped = bytearray(original)  # same size, altered bytes
    for position in range(len(flipped) // 10, len(flipped) * 9 // 10, len(flipped) // 10):
        flipped[position] ^= 0xFF
    data_file.write_bytes(bytes(flipped))
    with pytest.raises(IndexDamagedError, match="--rebuild"):
        search(index_dir, QUERIES, model, processor)

    outside = tmp_path / "elsewhere.lance"
    outside.write_bytes(original)
    data_file.unlink()
    data_file.symlink_to(outside)  # the right bytes, read from outside the index folder
    with pytest.raises(IndexDamagedError, match="outside the index folder"):
        VideoIndex.open(index_dir)

    report = build_index(video_folder, model, processor, index_dir, rebuild=True, progress=False)
    assert report.num_entries == 5 and len(search(index_dir, QUERIES[0], model, processor, top_k=5)[0]) == 5


def test_nan_entries_are_refused_at_write_and_nan_scores_rank_last(tmp_path):
    model = features_index_model()
    videos = synthetic_videos(12, seed=3)
    videos.video_embeds[4] = float("nan")
    with pytest.raises(ValueError, match="video4"):
        index_from_features(tmp_path / "index", model, videos, [f"video{i}" for i in range(12)])

    # A score that is NaN anyway (altered bytes that kept their checksum, a degenerate query)
    # ranks after every real one, and before the entries that are no candidate at all.
    best = _RunningTopK(1, 4, "cpu")
    best.update(torch.tensor([[float("nan"), 1.0, float("-inf"), -2.0]]), torch.arange(4))
    assert best.ids.tolist() == [[1, 3, 0, 2]]


def test_an_index_of_the_earlier_format_is_refused_with_the_command_that_rebuilds_it(
    model, processor, video_folder, tmp_path
):
    index_dir = tmp_path / "old"
    index_dir.mkdir()
    (index_dir / "manifest.json").write_text(json.dumps({
        "format": "hbi-video-index", "version": 1, "video_dir": str(video_folder), "segment_seconds": 10,
        "model": {"name_or_path": "hbi-msrvtt"}, "tokenizer": None, "shards": [{"file": "../../secret"}],
    }))
    (index_dir / "shard-000000.safetensors").write_bytes(b"old")
    expected = f"hbi-index {video_folder} --model hbi-msrvtt --output {index_dir} --rebuild --segment-seconds 10"
    with pytest.raises(OldIndexFormatError) as error:
        VideoIndex.open(index_dir)
    assert expected in str(error.value)
    with pytest.raises(OldIndexFormatError):
        build_index(video_folder, model, processor, index_dir, segment_seconds=10, progress=False)
    report = build_index(video_folder, model, processor, index_dir, segment_seconds=10, rebuild=True, progress=False)
    assert report.num_entries == 5 and not (index_dir / "shard-000000.safetensors").exists()


def test_row_checksums_change_with_any_byte_of_their_row_only(tmp_path):
    import numpy as np
    import pyarrow as pa

    from hbi_transformers.apps.search.index import MODEL_OUTPUTS, row_checksums

    index = index_from_features(tmp_path / "index", features_index_model(), synthetic_videos(6, seed=5),
                                [f"video{i}" for i in range(6)])
    table = index.dataset.to_table().drop_columns(["checksum"])
    table = table.set_column(table.schema.get_field_index("start"), "start",
                             pa.array([0.0, 1.5, None, 3.0, None, 0.5], pa.float64()))
    table = table.set_column(table.schema.get_field_index("timestamps"), "timestamps",
                             pa.array([[0.5, 1.0], [2.0], None, [], [1.0, 2.0, 3.0], [0.25]], pa.list_(pa.float64())))
    digests = row_checksums(table)
    assert len(set(digests)) == 6
    # A slice (a batch of a scan) gives its rows' digests.
    assert row_checksums(table.slice(2, 3)) == digests[2:5]

    def changed(name, values):
        if not isinstance(values, pa.Array):
            values = pa.array(values, table.schema.field(name).type)
        altered = table.set_column(table.schema.get_field_index(name), name, values)
        return [row for row, (before, after) in enumerate(zip(digests, row_checksums(altered))) if before != after]

    assert changed("file", ["video0", "video1", "video2", "videO3", "video4", "video5"]) == [3]
    assert changed("start", [0.0, 1.5, 0.0, 3.0, None, 0.5]) == [2]  # missing is not zero
    assert changed("end", [None, None, None, None, 7.0, None]) == [4]
    assert changed("duration", [None, 2.0, None, None, None, None]) == [1]
    assert changed("timestamps", [[0.5, 1.0], [2.0], [], [], [1.0, 2.0, 3.0], [0.25]]) == [2]  # empty is not missing
    assert changed("timestamps", [[0.5], [1.0, 2.0], None, [], [1.0, 2.0, 3.0], [0.25]]) == [0, 1]
    pooled = table.column("pooled").combine_chunks()
    flat = pooled.flatten().to_numpy(zero_copy_only=False).copy()
    flat.view(np.uint8)[-1] ^= 0x80  # the top bit of the last row's last value
    assert changed("pooled", pa.FixedSizeListArray.from_arrays(pa.array(flat), pooled.type.list_size)) == [5]
    outputs = table.column("outputs").combine_chunks()
    for name in MODEL_OUTPUTS:
        offset, values, dtype = index._layout[name]
        rows = np.frombuffer(outputs.buffers()[1], np.uint8).reshape(6, -1).copy()
        rows[5, offset + values * dtype.itemsize - 1] ^= 0x80  # the top byte of the last row's last value
        altered = pa.FixedSizeBinaryArray.from_buffers(outputs.type, 6, [None, pa.py_buffer(rows)])
        assert changed("outputs", altered) == [5], name


def test_float16_storage_keeps_the_rounded_outputs_and_float32_weights(tmp_path):
    model, videos, names = features_index_model(), synthetic_videos(5, seed=3), [f"video{i}" for i in range(5)]
    full = index_from_features(tmp_path / "full", model, videos, names)
    half = index_from_features(tmp_path / "half", model, videos, names, storage_dtype="float16")
    full_rows, half_rows = full.take(list(range(5))), half.take(list(range(5)))
    assert half_rows.schema.field("outputs").type.byte_width < full_rows.schema.field("outputs").type.byte_width
    for name in ("video_embeds", "action_tokens", "event_tokens"):
        stored = half.output(half_rows, name)
        assert stored.dtype == np.float16
        np.testing.assert_array_equal(stored, full.output(full_rows, name).astype(np.float16))
    for name in ("video_mask", "entity_weights", "action_weights", "event_weights"):
        np.testing.assert_array_equal(half.output(half_rows, name), full.output(full_rows, name))
    np.testing.assert_array_equal(half.output(half_rows, "video_mask").reshape(5, -1), videos.video_mask.numpy())


def test_the_first_stage_index_finds_the_pool_and_takes_new_files(model, processor, video_folder, tmp_path):
    index_dir = tmp_path / "index"
    build_index(video_folder, model, processor, index_dir, ann_min_rows=4, progress=False)
    assert VideoIndex.open(index_dir).has_ann_index()
    write_clip(video_folder / "late.mp4", seed=9)
    build_index(video_folder, model, processor, index_dir, ann_min_rows=4, progress=False)
    index = VideoIndex.open(index_dir)
    assert index.has_ann_index() and len(index) == 6
    assert {described.index_type for described in index.dataset.describe_indices()} == {"IVF_RQ"}
    exhaustive = search(index_dir, QUERIES, model, processor, top_k=6)
    # A pool that covers the index returns every entry, the new one too.
    assert_same_hits(search(index_dir, QUERIES, model, processor, top_k=6, candidates=6), exhaustive)
    with pytest.raises(ValueError, match="nprobes must be at least 1"):
        search(index_dir, QUERIES, model, processor, top_k=6, candidates=6, nprobes=0)


def test_rows_in_several_queries_pools_are_read_once(model, processor, video_folder, tmp_path, monkeypatch):
    index_dir = tmp_path / "index"
    build_index(video_folder, model, processor, index_dir, ann_min_rows=4, progress=False)
    reads = []
    original = VideoIndex.take_rows

    def counted(self, row_ids):
        reads.append(list(row_ids))
        return original(self, row_ids)

    monkeypatch.setattr(VideoIndex, "take_rows", counted)
    # The same caption twice: two pools of the same 3 rows.
    hits = search(index_dir, [QUERIES[0], QUERIES[0]], model, processor, top_k=3, candidates=3)
    assert len(reads) == 1 and len(reads[0]) == len(set(reads[0])) == 3
    assert [hit.file for hit in hits[0]] == [hit.file for hit in hits[1]]


def test_the_first_stage_index_is_built_in_segments_that_keep_their_size_as_files_arrive(
    model, processor, video_folder, tmp_path, monkeypatch
):
    from hbi_transformers.apps.search import writing

    # Two rows a segment instead of 500,000: the 5 clips, one commit each, make two segments.
    monkeypatch.setattr(writing, "ROWS_PER_SEGMENT", 2)
    index_dir = tmp_path / "index"
    build_index(video_folder, model, processor, index_dir, ann_min_rows=4, batch_rows=1, progress=False)

    def segment_rows(index):
        """The live rows of each segment, once every fragment is checked to be in one."""
        rows_of = {fragment.fragment_id: fragment.count_rows() for fragment in index.dataset.get_fragments()}
        (described,) = index.dataset.describe_indices()
        covered = [fragment for segment in described.segments for fragment in segment.fragment_ids]
        assert sorted(covered) == sorted(rows_of)
        return sorted(sum(rows_of[fragment] for fragment in segment.fragment_ids) for segment in described.segments)

    index = VideoIndex.open(index_dir)
    assert len(index) == 5 and len(index.dataset.get_fragments()) == 3 and segment_rows(index) == [2, 3]
    write_clip(video_folder / "late.mp4", seed=9)
    build_index(video_folder, model, processor, index_dir, ann_min_rows=4, batch_rows=1, progress=False)
    # The new row joins no full segment: it starts its own.
    assert segment_rows(VideoIndex.open(index_dir)) == [1, 2, 3]
    # A deleted file's row leaves its segment; the next new row joins the newest segment, which
    # has room again.
    (video_folder / "clip0.mp4").unlink()
    write_clip(video_folder / "later.mp4", seed=10)
    build_index(video_folder, model, processor, index_dir, ann_min_rows=4, batch_rows=1, progress=False)
    index = VideoIndex.open(index_dir)
    assert len(index) == 6 and sum(segment_rows(index)) == 6 and len(segment_rows(index)) == 3
    exhaustive = search(index_dir, QUERIES, model, processor, top_k=6)
    assert_same_hits(search(index_dir, QUERIES, model, processor, top_k=6, candidates=6), exhaustive)


def test_an_earlier_releases_graph_index_is_searched_exactly_then_rebuilt(
    model, processor, video_folder, tmp_path, caplog
):
    from lancedb.index import HnswSq

    index_dir = tmp_path / "index"
    build_index(video_folder, model, processor, index_dir, ann_min_rows=4, progress=False)
    VideoIndex.open(index_dir).table.create_index("pooled", config=HnswSq(distance_type="dot"), replace=True)
    exhaustive = search(index_dir, QUERIES, model, processor, top_k=3)
    with caplog.at_level("WARNING", logger="hbi_transformers.apps.search.index"):
        two_stage = search(index_dir, QUERIES, model, processor, top_k=3, candidates=5)
    # Once per opened index, not once per query.
    warnings = [record.getMessage() for record in caplog.records if "from an earlier release" in record.getMessage()]
    assert len(QUERIES) > 1 and len(warnings) == 1
    assert "IVF_HNSW_SQ, from an earlier release" in warnings[0] and "hbi-index" in warnings[0]
    # The exact scan's pool of 5 of the 5 entries ranks exactly as the exhaustive search.
    assert_same_hits(two_stage, exhaustive)
    build_index(video_folder, model, processor, index_dir, ann_min_rows=4, progress=False)
    assert {described.index_type for described in VideoIndex.open(index_dir).dataset.describe_indices()} == {"IVF_RQ"}


def test_an_index_of_the_previous_table_version_is_refused_with_the_rebuild_command(
    model, processor, video_folder, tmp_path
):
    index_dir = tmp_path / "index"
    build_index(video_folder, model, processor, index_dir, progress=False)
    info = json.loads((index_dir / INFO_NAME).read_text())
    (index_dir / INFO_NAME).write_text(json.dumps({**info, "version": 3}))
    with pytest.raises(OldIndexFormatError, match="version 3") as error:
        VideoIndex.open(index_dir)
    assert f"hbi-index {video_folder.resolve()} --model" in str(error.value) and "--rebuild" in str(error.value)


def test_levels_the_fusion_does_not_weigh_are_scored_for_the_hits_only(tmp_path):
    torch.manual_seed(0)
    model = HBIModel(tiny_config(level_weights=[1.0, 0.0, 0.0])).eval()  # the official retrieval weights
    videos = synthetic_videos(30, seed=8)
    texts = HBITextOutput(text_embeds=torch.randn(3, 8, model.config.projection_dim, generator=torch.Generator().manual_seed(1)),
                          attention_mask=torch.ones(3, 8, dtype=torch.long))
    index = index_from_features(tmp_path / "index", model, videos, [f"video{i}" for i in range(30)], batch_rows=7)
    torch.manual_seed(0)
    expected = model.compute_similarity(texts, videos)
    for hits in (search_by_text_features(index, texts, model, top_k=5),
                 search_by_text_features(index, texts, model, top_k=5, candidates=30)):
        for query, query_hits in enumerate(hits):
            assert [hit.file for hit in query_hits] == [f"video{i}" for i in expected.logits_per_text[query].topk(5).indices]
            for hit in query_hits:
                video = int(hit.file.removeprefix("video"))
                assert hit.score == pytest.approx(float(expected.logits_per_text[query, video]), abs=1e-4)
                assert list(hit.level_scores.values()) == pytest.approx(
                    [float(level[query, video]) for level in expected.level_logits_per_text], abs=1e-4)
