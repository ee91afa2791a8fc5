"""The published runs as recipes: each resolves to the values of its official command, explicit
options override, the global batch is split over the processes, the resolved options are saved
with the run; the opt-in official selection keeps the best checkpoint through the Trainer's own
machinery. (A converted checkpoint's recipe processor: tests/models/hbi/test_conversion.py.)"""

import json

import pytest
import torch
from conftest import textured_frames, tiny_config, tiny_processor, write_mp4
from transformers import HfArgumentParser

from hbi_transformers import HBIModel
from hbi_transformers.cli.arguments import (
    RECIPE_FILE,
    TrainingCorpusArguments,
    TrainingModelArguments,
    parse_with_recipe,
    save_resolved_options,
)
from hbi_transformers.cli.train_qa import QADataArguments, QAModelArguments
from hbi_transformers.data import HBIDataCollator, VideoTextRecord, load_video_text_dataset
from hbi_transformers.training import HBITrainer, HBITrainingArguments, VideoQATrainingArguments

# The official commands, jpthu17/HBI @ b261e9c, README.md: "Train on MSR-VTT-9k" (lines 216-237),
# "Train on ActivityNet Captions" (lines 264-286), "Train on MSR-VTT-QA" (lines 329-357); what they
# do not pass is main_retrieval.py's / main_vqa.py's argparse default (weight decay 0.2, warm-up
# 0.1, and, for DiDeMo, which has no published command, --epochs 5).
OFFICIAL = {
    "msrvtt": dict(dataset="msrvtt", msrvtt_train_split="9k", num_train_epochs=5, learning_rate=1e-4, coef_lr=1e-3,
                   global_batch=128, max_words=24, max_frames=12, video_framerate=1, frame_sampling="fps",
                   augment=True, distillation_kl_weight=2, banzhaf_kl_weight=1),
    "msrvtt-7k": dict(dataset="msrvtt", msrvtt_train_split="7k", num_train_epochs=5, learning_rate=1e-4,
                      coef_lr=1e-3, global_batch=128, max_words=24, max_frames=12, video_framerate=1,
                      frame_sampling="fps", augment=True, distillation_kl_weight=2, banzhaf_kl_weight=1),
    "activitynet": dict(dataset="activitynet", num_train_epochs=10, learning_rate=1e-4, coef_lr=1e-3, global_batch=128,
                        max_words=64, max_frames=64, video_framerate=1, frame_sampling="per_second", augment=False,
                        distillation_kl_weight=2, banzhaf_kl_weight=1),
    "didemo": dict(dataset="didemo", num_train_epochs=5, learning_rate=1e-4, coef_lr=1e-3, global_batch=128,
                   max_words=64, max_frames=64, video_framerate=1, frame_sampling="per_second", augment=False,
                   distillation_kl_weight=2, banzhaf_kl_weight=1),
}
OFFICIAL_QA = dict(num_train_epochs=5, learning_rate=1e-4, coef_lr=1e-3, global_batch=32, max_words=32, max_frames=12,
                   video_framerate=1, qa_distillation_kl_weight=2, banzhaf_kl_weight=1, freeze_clip_embeddings=True)


def retrieval_parser():
    return HfArgumentParser((TrainingModelArguments, TrainingCorpusArguments, HBITrainingArguments))


def resolved(options) -> dict:
    values = {}
    for part in options:
        values.update({key: getattr(part, key) for key in vars(part)})
    values["global_batch"] = values["per_device_train_batch_size"]
    return values


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_retrieval_recipes_are_the_official_commands(name, tmp_path):
    options, recipe = parse_with_recipe(retrieval_parser(), ["--recipe", name, "--output_dir", str(tmp_path)])
    values = resolved(options)
    assert recipe.name == name
    for key, expected in OFFICIAL[name].items():
        assert values[key] == expected, key
    assert values["weight_decay"] == 0.2 and values["warmup_ratio"] == 0.1 and values["schedule_epochs"] == 5


def test_the_qa_recipe_is_the_official_command(tmp_path):
    parser = HfArgumentParser((QAModelArguments, QADataArguments, VideoQATrainingArguments))
    options, _ = parse_with_recipe(parser, ["--recipe", "msrvtt-qa", "--output_dir", str(tmp_path)])
    values = resolved(options)
    for key, expected in OFFICIAL_QA.items():
        assert values[key] == expected, key


def test_explicit_options_override_and_the_batch_is_global(tmp_path, monkeypatch):
    argv = ["--recipe", "msrvtt", "--output_dir", str(tmp_path), "--max_frames", "8", "--distillation_kl_weight", "0.2"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    options, recipe = parse_with_recipe(retrieval_parser(), argv)
    values = resolved(options)
    assert values["max_frames"] == 8 and values["distillation_kl_weight"] == 0.2 and values["max_words"] == 24
    assert values["per_device_train_batch_size"] == 64
    save_resolved_options(str(tmp_path), recipe, *options)
    saved = json.loads((tmp_path / RECIPE_FILE).read_text())
    assert saved["recipe"] == "msrvtt" and saved["max_frames"] == 8 and saved["per_device_train_batch_size"] == 64
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="global batch of 128 does not split over 3 processes"):
        parse_with_recipe(retrieval_parser(), argv)
    # Without a recipe, nothing changes.
    options, recipe = parse_with_recipe(retrieval_parser(), ["--output_dir", str(tmp_path)])
    assert recipe is None and resolved(options)["dataset"] == "generic"


def test_official_selection_keeps_the_best_checkpoint(tmp_path):
    processor, text_config = tiny_processor(tmp_path)
    records = []
    for clip in range(6):
        path = write_mp4(tmp_path / f"clip{clip}.mp4", textured_frames(8, 32, 32, seed=clip), fps=4)
        records += [VideoTextRecord(str(path), caption, f"clip{clip}") for caption in ("a cat", "dog")]
    torch.manual_seed(0)
    arguments = HBITrainingArguments(
        output_dir=str(tmp_path / "run"), official_selection=True, official_selection_steps=2, max_steps=6,
        per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-3, report_to=[],
        use_cpu=True, disable_tqdm=True,
    )
    trainer = HBITrainer(
        model=HBIModel(tiny_config(text_config=text_config)), args=arguments,
        train_dataset=load_video_text_dataset(records), eval_dataset=records,
        data_collator=HBIDataCollator(processor), processing_class=processor,
    )
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if "eval_t2v_R@1" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4, 6]
    best = max(evaluations, key=lambda entry: entry["eval_t2v_R@1"])
    assert trainer.state.best_metric == best["eval_t2v_R@1"]
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
