"""A tiny end-to-end run: generated mp4 clips streamed through `datasets`, HBITrainer trains,
checkpoints, resumes identically and evaluates; a corrupt and a missing video are skipped and
counted."""

import json

import pytest
import torch
from conftest import textured_frames, tiny_clip_tokenizer, tiny_config, write_mp4
from transformers import CLIPConfig, CLIPModel

from hbi_transformers import HBIModel, HBIProcessor, HBIVideoProcessor
from hbi_transformers.data import HBIDataCollator, iter_annotations, load_video_text_dataset
from hbi_transformers.cli.evaluate import run as evaluate_command
from hbi_transformers.cli.train import run as train_command
from hbi_transformers.cli.train_estimator import run as train_estimator_command
from hbi_transformers.models.hbi.convert_hbi_original_to_hf import load_estimator_state_dict
from hbi_transformers.training import HBITrainer, HBITrainingArguments, evaluate_retrieval
from hbi_transformers.training.metrics.retrieval import retrieval_metrics

CAPTIONS = ["red cat", "blue dog", "cat and dog", "a dog runs", "green cat sits", "dog dog cat"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for index, caption in enumerate(CAPTIONS):
        write_mp4(root / f"clip{index}.mp4", textured_frames(16, 32, 32, seed=index), fps=8)
        rows.append({"video": f"clip{index}.mp4", "captions": [caption, f"{caption} again"]})
    (root / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 64)
    rows.insert(2, {"video": "corrupt.mp4", "caption": "a corrupt clip"})
    rows.insert(5, {"video": "missing.mp4", "caption": "a missing clip"})
    annotations = root / "train.jsonl"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    processor = HBIProcessor(
        HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, max_frames=4),
        tiny_clip_tokenizer(root),
        max_words=8,
    )
    return root, annotations, processor


def make_trainer(corpus, output_dir, **overrides):
    root, annotations, processor = corpus
    torch.manual_seed(0)
    config = tiny_config(text_config={**tiny_config().text_config.to_dict(), "vocab_size": len(processor.tokenizer)})
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=3,
        max_steps=6,
        learning_rate=1e-3,
        coef_lr=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    settings.update(overrides)
    return HBITrainer(
        model=HBIModel(config),
        args=HBITrainingArguments(**settings),
        train_dataset=load_video_text_dataset(str(annotations), video_root=str(root), streaming=True),
        data_collator=HBIDataCollator(processor, min_items=1, max_bad_fraction=0.5),
        processing_class=processor,
    )


def test_train_resume_and_evaluate(corpus, tmp_path):
    root, annotations, processor = corpus
    trainer = make_trainer(corpus, tmp_path / "full")
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2])
    bad = {item.name.rsplit("/", 1)[-1] for item in trainer.video_counter.bad_items}
    assert bad == {"corrupt.mp4", "missing.mp4"}

    interrupted = make_trainer(corpus, tmp_path / "part", save_strategy="steps", save_steps=3)
    interrupted.train()
    resumed = make_trainer(corpus, tmp_path / "part")
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-3"))
    for (name, expected), (_, got) in zip(trainer.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5, msg=name)

    records = list(iter_annotations(str(annotations), video_root=str(root)))
    metrics = trainer.evaluate(records)
    assert metrics["eval_skipped_captions"] == 2
    assert 0 <= metrics["eval_t2v_R@1"] <= 100 and metrics["eval_t2v_num_queries"] == 12
    assert metrics["eval_v2t_num_queries"] == 6

    # The same numbers from the model's forward on every caption and every (good) clip at once.
    good = [record for record in records if "corrupt" not in record.name and "missing" not in record.name]
    videos = [str(root / f"clip{index}.mp4") for index in range(len(CAPTIONS))]
    inputs = processor(text=[record.caption for record in good], videos=videos, return_tensors="pt")
    model = trainer.model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        logits = model(**inputs).logits_per_text
    expected = retrieval_metrics(logits, [index // 2 for index in range(len(good))])
    for name in ("t2v_R@1", "t2v_R@5", "t2v_MnR", "v2t_R@1", "v2t_MnR"):
        assert metrics[f"eval_{name}"] == pytest.approx(expected[name]), name

    direct = evaluate_retrieval(model, HBIDataCollator(processor, min_items=1, max_bad_fraction=0.5), good,
                                batch_size=4, chunk_size=5, progress=False)
    assert direct["t2v_R@1"] == pytest.approx(metrics["eval_t2v_R@1"])


def test_command_lines_train_then_evaluate(corpus, tmp_path):
    root, annotations, processor = corpus
    clip_dir, tokenizer_dir = tmp_path / "clip", tmp_path / "tokenizer"
    text_config = {**tiny_config().text_config.to_dict(), "vocab_size": len(processor.tokenizer)}
    clip = CLIPModel(CLIPConfig(text_config=text_config, vision_config=tiny_config().vision_config.to_dict(),
                                projection_dim=32))
    clip.save_pretrained(clip_dir)
    processor.tokenizer.save_pretrained(tokenizer_dir)
    output_dir = tmp_path / "run"
    common = ["--video_root", str(root), "--max_frames", "4", "--max_words", "8"]
    metrics = train_command([
        "--model_name_or_path", str(clip_dir), "--tokenizer_name_or_path", str(tokenizer_dir),
        "--train_annotations", str(annotations), "--eval_annotations", str(annotations), "--streaming",
        "--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", *common,
    ])
    assert "eval_t2v_R@1" in metrics
    assert json.loads((output_dir / "eval_results.json").read_text()) == metrics
    assert "t2v" in (output_dir / "eval_results.txt").read_text()
    assert "model-index" in (output_dir / "README.md").read_text()
    saved = HBIModel.from_pretrained(output_dir)
    assert saved.config.projection_dim == 32

    # --seed covers the initialisation of the HBI heads too: the same run again gives the same model.
    torch.manual_seed(12345)
    train_command([
        "--model_name_or_path", str(clip_dir), "--tokenizer_name_or_path", str(tokenizer_dir),
        "--train_annotations", str(annotations), "--streaming", "--output_dir", str(tmp_path / "again"),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none",
        "--disable_tqdm", "true", *common,
    ])
    again = HBIModel.from_pretrained(tmp_path / "again")
    for name, value in saved.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name

    evaluated = evaluate_command([
        "--model_name_or_path", str(output_dir), "--eval_annotations", str(annotations),
        "--output_json", str(tmp_path / "metrics.json"), *common,
    ])
    assert evaluated["t2v_R@1"] == pytest.approx(metrics["eval_t2v_R@1"])
    assert json.loads((tmp_path / "metrics.json").read_text())["t2v_num_queries"] == 12


def test_estimator_command_line(corpus, tmp_path):
    root, annotations, processor = corpus
    model_dir = tmp_path / "hbi"
    text_config = {**tiny_config().text_config.to_dict(), "vocab_size": len(processor.tokenizer)}
    HBIModel(tiny_config(text_config=text_config)).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    output_dir = tmp_path / "estimator"
    arguments = ["--model_name_or_path", str(model_dir), "--train_annotations", str(annotations), "--video_root",
                 str(root), "--output_dir", str(output_dir), "--num_samples", "4", "--epochs", "2", "--batch_size", "4",
                 "--label_batch_size", "3", "--heldout_fraction", "0.25", "--estimator_width", "8"]
    history = train_estimator_command(arguments)
    assert [record["epoch"] for record in history] == [1, 2]
    assert json.loads((output_dir / "labels" / "labels.json").read_text())["pairs"] == 12
    assert (output_dir / "estimator-epoch2.safetensors").exists()
    teacher = HBIModel.from_pretrained(model_dir, banzhaf_estimator_width=8).banzhaf_teacher
    teacher.load_state_dict(load_estimator_state_dict(output_dir / "banzhaf_estimator.safetensors"))
    # The released file is the release epoch's (6 officially; the last here, 2 epochs being shorter).
    released, last = (load_estimator_state_dict(output_dir / name)
                      for name in ("banzhaf_estimator.safetensors", "estimator-epoch2.safetensors"))
    assert all(torch.equal(released[key], last[key]) for key in last)
    # A second run reuses the cached labels; one with another model or other settings refuses them.
    assert len(train_estimator_command(arguments)) == 2
    with pytest.raises(ValueError, match="made with other num samples than this run"):
        train_estimator_command([*arguments, "--num_samples", "8"])
    torch.manual_seed(1)
    HBIModel(tiny_config(text_config=text_config)).save_pretrained(tmp_path / "other")
    processor.save_pretrained(tmp_path / "other")
    other = [str(tmp_path / "other") if value == str(model_dir) else value for value in arguments]
    with pytest.raises(ValueError, match="made with other weights fingerprint than this run"):
        train_estimator_command(other)
