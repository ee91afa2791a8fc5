"""`hbi-prepare` and the choice of workers and threads: a prepared corpus evaluates to the same
metrics as its videos, and commands never ask for more workers + threads than cores."""

import json

import pytest
import torch
from conftest import textured_frames, tiny_clip_tokenizer, tiny_config, write_mp4

from hbi_transformers import HBIModel, HBIProcessor, HBIVideoProcessor
from hbi_transformers.cli import prepare
from hbi_transformers.cli.arguments import ParallelismArguments, CorpusArguments, ModelArguments, configure_parallelism
from hbi_transformers.cli.evaluate import run as evaluate_command
from hbi_transformers.cli.loading import load_corpus
from hbi_transformers.data import Parallelism, choose_parallelism
from hbi_transformers.training import HBITrainingArguments


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four clips with two captions each, a corrupt and a missing video, and a tiny HBI folder."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for index, caption in enumerate(["red cat", "blue dog", "cat and dog", "a dog runs"]):
        write_mp4(root / f"clip{index}.mp4", textured_frames(16, 36, 44, seed=index), fps=8)
        rows.append({"video": f"clip{index}.mp4", "captions": [caption, f"{caption} again"]})
    (root / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 64)
    rows += [{"video": "corrupt.mp4", "caption": "a corrupt clip"}, {"video": "missing.mp4", "caption": "gone"}]
    annotations = root / "eval.jsonl"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    processor = HBIProcessor(
        HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, max_frames=4),
        tiny_clip_tokenizer(root),
        max_words=8,
    )
    model_dir = root / "hbi"
    torch.manual_seed(0)
    text_config = {**tiny_config().text_config.to_dict(), "vocab_size": len(processor.tokenizer)}
    HBIModel(tiny_config(text_config=text_config)).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return root, annotations, model_dir


def test_a_prepared_corpus_evaluates_as_its_videos(corpus, tmp_path):
    root, annotations, model_dir = corpus
    prepared = tmp_path / "prepared"
    manifest = prepare.run(["--annotations", str(annotations), "--video_root", str(root), "--output_dir",
                            str(prepared), "--model_name_or_path", str(model_dir), "--workers", "2",
                            "--max_bad_fraction", "0.5"])
    assert manifest["num_clips"] == 4 and manifest["num_records"] == 8 and manifest["records_left_out"] == 2
    assert sorted(name.rsplit("/", 1)[1] for name, _ in manifest["bad_videos"]) == ["corrupt.mp4", "missing.mp4"]
    assert len(load_corpus("generic", "eval", str(prepared))) == 8

    common = ["--model_name_or_path", str(model_dir), "--max_frames", "4", "--max_bad_fraction", "0.5",
              "--device", "cpu", "--torch_threads", "1"]
    from_videos = evaluate_command([*common, "--eval_annotations", str(annotations), "--video_root", str(root)])
    from_frames = evaluate_command([*common, "--eval_annotations", str(prepared)])
    # The captions of the bad videos were left out when preparing, not when evaluating.
    assert from_videos.pop("skipped_captions") == 2 and from_frames.pop("skipped_captions") == 0
    # The same pixels give the same embeddings, hence the same ranks.
    assert from_frames == from_videos and from_frames["t2v_num_queries"] == 8


def test_the_prepared_sampling_rule_is_the_default(corpus, tmp_path):
    root, annotations, model_dir = corpus
    prepared = tmp_path / "per_second"
    prepare.run(["--annotations", str(annotations), "--video_root", str(root), "--output_dir", str(prepared),
                 "--image_size", "32", "--max_frames", "4", "--frame_sampling", "per_second", "--workers", "1",
                 "--max_bad_fraction", "0.5"])
    options = CorpusArguments(max_frames=4)
    options.eval_annotations = str(prepared)
    processor = options.processor(ModelArguments(model_name_or_path=str(model_dir), tokenizer_name_or_path=str(model_dir)),
                                  32)
    assert processor.video_processor.frame_sampling == "per_second"


@pytest.mark.parametrize("cores", range(1, 65))
@pytest.mark.parametrize("accelerator", [False, True])
def test_chosen_workers_and_threads_fit_the_cores(cores, accelerator):
    chosen = choose_parallelism(cores=cores, accelerator=accelerator)
    assert chosen.threads >= 1 and chosen.workers >= 0
    assert chosen.workers + chosen.threads <= max(cores, 1)
    # Cores left idle: none, except the one a single-core machine has.
    assert chosen.workers + chosen.threads == cores


def test_an_explicit_choice_is_kept_and_the_other_takes_the_rest():
    assert choose_parallelism(cores=2) == Parallelism(workers=1, threads=1)
    assert choose_parallelism(cores=16, accelerator=True) == Parallelism(workers=15, threads=1)
    assert choose_parallelism(cores=16) == Parallelism(workers=8, threads=8)
    assert choose_parallelism(threads=3, cores=8) == Parallelism(workers=5, threads=3)
    assert choose_parallelism(workers=6, cores=4) == Parallelism(workers=6, threads=1)
    assert choose_parallelism(workers=0, threads=7, cores=4) == Parallelism(workers=0, threads=7)


def test_training_commands_set_threads_and_loader_workers(monkeypatch, tmp_path):
    monkeypatch.setattr("hbi_transformers.data.parallelism.available_cores", lambda: 4)
    monkeypatch.setattr("hbi_transformers.cli.arguments.torch.cuda.is_available", lambda: False)
    threads = torch.get_num_threads()
    try:
        args = HBITrainingArguments(output_dir=str(tmp_path), use_cpu=True)
        chosen = configure_parallelism(ParallelismArguments(), [], args)
        assert chosen == Parallelism(workers=2, threads=2) and args.dataloader_num_workers == 2
        assert torch.get_num_threads() == 2
        args = HBITrainingArguments(output_dir=str(tmp_path), use_cpu=True, dataloader_num_workers=3)
        chosen = configure_parallelism(ParallelismArguments(), ["--dataloader_num_workers=3"], args)
        assert chosen == Parallelism(workers=3, threads=1) and args.dataloader_num_workers == 3
        chosen = configure_parallelism(ParallelismArguments(torch_threads=3), [])
        assert chosen == Parallelism(workers=1, threads=3) and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
