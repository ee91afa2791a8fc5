"""The evaluation layer: `encode_corpus` decodes and encodes each clip once and gives what encoding
every item on its own gives; retrieval and question answering evaluation give the same metrics in
two processes (gloo) as in one."""

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import textured_frames, tiny_config, tiny_processor, write_mp4

from hbi_transformers import HBIForVideoQuestionAnswering, HBIModel
from hbi_transformers.data import HBIDataCollator, VideoTextRecord, unique_videos
from hbi_transformers.models.hbi.configuration_hbi import video_qa_config
from hbi_transformers.training import encode_corpus, evaluate_retrieval, evaluate_video_qa
from hbi_transformers.training.evaluation.encoding import encode_clips

WORLD_SIZE = 2
CAPTIONS = ("a cat", "dog", "cat dog", "a dog")
ANSWERS = ("cat", "dog", "red")


def write_clips(root):
    for clip in range(5):
        path = root / f"clip{clip}.mp4"
        if clip == 3:
            path.write_bytes(b"garbage" * 32)
        else:
            write_mp4(path, textured_frames(12, 32, 32, seed=clip), fps=8)


def make_corpus(root, scratch):
    """The 5 clips of `root` (one corrupt) with 2 captions each, as records whose answer is one of
    ANSWERS; the tokenizer's files go to `scratch`."""
    processor, text_config = tiny_processor(scratch)
    records = []
    for clip in range(5):
        path = root / f"clip{clip}.mp4"
        for offset in range(2):
            caption = CAPTIONS[(clip + offset) % len(CAPTIONS)]
            records.append(VideoTextRecord(str(path), caption, f"clip{clip}", answer=ANSWERS[(clip + offset) % 3]))
    return processor, records, text_config


def retrieval_model(text_config):
    torch.manual_seed(0)
    return HBIModel(tiny_config(text_config=text_config)).eval()


def qa_model(text_config):
    torch.manual_seed(0)
    config = video_qa_config(
        tiny_config(text_config=text_config),
        id2label=dict(enumerate(ANSWERS)),
        label2id={answer: label for label, answer in enumerate(ANSWERS)},
    )
    return HBIForVideoQuestionAnswering(config).eval()


def evaluate_both(root, scratch, batch_size):
    """Retrieval and QA metrics, and the number of clips this process decoded."""
    processor, records, text_config = make_corpus(root, scratch)
    collator = HBIDataCollator(processor, max_bad_fraction=1.0)
    torch.manual_seed(1)
    retrieval = evaluate_retrieval(retrieval_model(text_config), collator, records, batch_size=batch_size,
                                   progress=False)
    torch.manual_seed(1)
    answers = evaluate_video_qa(qa_model(text_config), collator, records, batch_size=batch_size, progress=False)
    return retrieval, answers, collator.seen_items


def test_each_clip_is_decoded_once_and_encoded_as_on_its_own(tmp_path):
    write_clips(tmp_path)
    processor, records, text_config = make_corpus(tmp_path, tmp_path)
    model = retrieval_model(text_config)
    collator = HBIDataCollator(processor, max_bad_fraction=1.0)
    corpus = encode_corpus(model, collator, records, batch_size=2, progress=False)
    # 5 distinct clips tried once each, however many captions they have; the corrupt one is out.
    assert collator.seen_items == 5 and [item.name for item in collator.bad_items] == [str(tmp_path / "clip3.mp4")]
    assert [clip.video_id for clip in corpus.clips] == ["clip0", "clip1", "clip2", "clip4"]
    assert corpus.caption_records == [0, 1, 2, 3, 4, 5, 8, 9]
    assert corpus.text_to_video == [0, 0, 1, 1, 2, 2, 3, 3]
    for row, index in enumerate(corpus.caption_records):
        record = records[index]
        alone = processor(text=[record.caption], videos=[record.video], return_tensors="pt")
        with torch.no_grad():
            text = model.get_text_features(alone["input_ids"], alone["attention_mask"])
            video = model.get_video_features(alone["pixel_values_videos"], alone["video_mask"])
        torch.testing.assert_close(corpus.texts.text_embeds[row], text.text_embeds[0])
        clip_row = corpus.text_to_video[row]
        torch.testing.assert_close(corpus.videos.video_embeds[clip_row], video.video_embeds[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(corpus.videos.video_mask[clip_row], video.video_mask[0])


def test_workers_decode_and_this_process_counts(tmp_path, monkeypatch):
    """With DataLoader workers the clips decode in other processes, the encoded clips are those of
    decoding here, and the failures are counted here once (the workers' counters are copies)."""
    write_clips(tmp_path)
    processor, records, text_config = make_corpus(tmp_path, tmp_path)
    model = retrieval_model(text_config)
    clips = unique_videos(records)
    decoders = tmp_path / "decoders.txt"
    decode = HBIDataCollator.decode_videos

    def decode_and_note_process(self, *args, **kwargs):
        with open(decoders, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(HBIDataCollator, "decode_videos", decode_and_note_process)
    results = {}
    for workers in (0, 2):
        collator = HBIDataCollator(processor, max_bad_fraction=1.0)
        encoded = list(encode_clips(model, collator, clips, batch_size=2, with_metadata=True, progress=False,
                                    num_workers=workers))
        results[workers] = encoded, collator
    pids = [int(line) for line in decoders.read_text().split()]
    assert pids[:3] == [os.getpid()] * 3 and len(pids) == 6
    assert os.getpid() not in pids[3:] and len(set(pids[3:])) == 2
    (alone, _), (parallel, parallel_collator) = results[0], results[2]
    assert [batch.positions for batch in parallel] == [batch.positions for batch in alone] == [[0, 1], [2], [4]]
    for ours, theirs in zip(parallel, alone):
        assert torch.equal(ours.videos.video_embeds, theirs.videos.video_embeds)
        assert ours.metadata == theirs.metadata
    assert parallel_collator.seen_items == 5
    assert [item.name for item in parallel_collator.bad_items] == [str(tmp_path / "clip3.mp4")]


def worker(rank, init_file, root, result_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    torch.set_num_threads(1)
    scratch = Path(result_dir) / f"tokenizer{rank}"
    scratch.mkdir()
    retrieval, answers, decoded = evaluate_both(root, scratch, batch_size=1)
    torch.save({"retrieval": retrieval, "answers": answers, "decoded": decoded}, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_processes_give_the_metrics_of_one(tmp_path):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    write_clips(corpus_dir)
    retrieval, answers, decoded = evaluate_both(corpus_dir, tmp_path, batch_size=2)
    assert decoded == 5
    assert retrieval["t2v_num_queries"] == 8 and retrieval["skipped_captions"] == 2
    assert answers["num_questions"] == 10 and answers["num_unanswered"] == 2
    mp.spawn(worker, args=(str(tmp_path / "init"), corpus_dir, str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    # Each process decoded only its share of the 5 clips (every other one), yet has every result.
    assert [torch.load(tmp_path / f"rank{rank}.pt")["decoded"] for rank in range(WORLD_SIZE)] == [3, 2]
    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["retrieval"].keys() == retrieval.keys()
        for name, value in retrieval.items():
            assert result["retrieval"][name] == value or abs(result["retrieval"][name] - value) < 1e-6, name
        assert result["answers"] == answers
