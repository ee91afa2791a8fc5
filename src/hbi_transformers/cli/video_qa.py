"""Command line for video question answering, `hbi-train-qa`: trains a
[`HBIForVideoQuestionAnswering`] with [`HBITrainer`] (the official HBI recipe), then reports its
accuracy under the official protocol and over all questions, overall and per question type.

Annotations are MSRVTT-QA style rows (jsonl, json or csv): the video (`video`: a path relative to
`--video_root`, or `video_id`: `<video_root>/<id>.mp4`), `question`, `answer`, and optionally its
type (`question_type` or `answer_type`; else the question's first word). The answer vocabulary is
an `{answer: label}` JSON file (the official `train_ans2label.json`) or a JSON list of answers.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import HfArgumentParser
from transformers.utils import logging

from ..models.hbi.configuration_hbi import (
    OUT_OF_VOCABULARY_LABEL,
    VIDEO_QA_SETTINGS,
    HBIConfig,
    answer_label_maps,
    config_with_answers,
    video_qa_config,
)
from ..data import (
    EmptyBatchError,
    HBIDataCollator,
    VideoTextRecord,
    annotation_rows,
    iter_annotations,
    load_video_text_dataset,
    text_to_video_index,
    unique_videos,
)
from ..training.estimator_pretraining import load_estimator_state_dict
from ..models.hbi.modeling_hbi import HBIVideoOutput
from ..models.hbi.modeling_hbi_qa import HBIForVideoQuestionAnswering
from ..training.metrics.video_qa import format_qa_table, question_type, video_qa_accuracy
from .retrieval import is_hbi_checkpoint, load_processor
from ..training.trainer import HBITrainer, HBITrainingArguments

logger = logging.get_logger(__name__)

# Annotation columns that may give a question's type (MSRVTT-QA's own files call it answer_type).
QUESTION_TYPE_COLUMNS = ("question_type", "answer_type")


@dataclass
class QAModelArguments:
    model_name_or_path: str = field(
        default="openai/clip-vit-base-patch16",
        metadata={"help": "A HBI video QA folder (trained or converted), a HBI retrieval folder (its weights "
                  "initialise everything but the answer heads), or a transformers CLIP checkpoint to start from."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "CLIP tokenizer (default: the model's; see scripts/build_clip_tokenizer.py)."}
    )
    answers: str | None = field(
        default=None,
        metadata={"help": "Answer vocabulary (train_ans2label.json: answer -> label, or a JSON list of answers). "
                  "Needed unless the model is a QA model, whose vocabulary it must then be."},
    )
    estimator: str | None = field(
        default=None, metadata={"help": "Banzhaf estimator weights for the frozen teacher (ours or official)."}
    )
    banzhaf_kl_weight: float | None = field(default=None, metadata={"help": "skl (official 1)."})
    qa_distillation_kl_weight: float | None = field(
        default=None, metadata={"help": "kl of the answer-logit self-distillation (official 0.2)."}
    )
    qa_level_weights: list[float] | None = field(
        default=None, metadata={"help": "Entity, action, event weights of the answer logits (official 0.4 0.4 0.2)."}
    )


@dataclass
class QADataArguments:
    train_annotations: str | None = field(default=None, metadata={"help": "Training questions."})
    eval_annotations: str | None = field(default=None, metadata={"help": "Evaluation questions."})
    video_root: str | None = field(default=None, metadata={"help": "Folder the videos are found in."})
    max_words: int = field(default=32, metadata={"help": "Tokens per question (official 32)."})
    max_frames: int = field(default=12, metadata={"help": "Frames per video (official 12)."})
    video_framerate: float = field(default=1.0, metadata={"help": "Frames sampled per second."})
    # Set, so that `load_processor` never falls back to a retrieval dataset's default.
    frame_sampling: str = field(default="fps", metadata={"help": "fps (official for MSRVTT-QA) or per_second."})
    max_bad_fraction: float = field(default=0.05, metadata={"help": "Largest tolerated share of bad videos."})


@dataclass
class VideoQATrainingArguments(HBITrainingArguments):
    """`HBITrainingArguments` with the official MSRVTT-QA recipe (`main_vqa.py` and the README
    command: 5 epochs, batch 32, lr 1e-4, coef_lr 1e-3, `--freeze_layer_num 0`)."""

    schedule_epochs: float | None = field(
        default=None,
        metadata={"help": "Warm-up + cosine horizon in epochs; None (official for QA): the actual training length."},
    )
    freeze_clip_embeddings: bool = field(
        default=True,
        metadata={"help": "Freeze CLIP's token and position embeddings, the vision tower's patch, class and "
                  "position embeddings and its pre-LayerNorm, as the official QA run does (--freeze_layer_num 0)."},
    )


def freeze_clip_embeddings(model: HBIForVideoQuestionAnswering) -> None:
    """What the official `--freeze_layer_num 0` freezes: every CLIP parameter outside the
    transformer layers and the final norms, projections and temperature."""
    for module in (model.text_model.embeddings, model.vision_model.embeddings, model.vision_model.pre_layrnorm):
        module.requires_grad_(False)


def load_qa_model(model_args: QAModelArguments) -> HBIForVideoQuestionAnswering:
    """A QA folder as saved (its answer vocabulary must equal `--answers` when given); a retrieval
    folder with the official QA settings and fresh answer heads; or a fresh model from CLIP."""
    overrides = {
        name: getattr(model_args, name)
        for name in ("banzhaf_kl_weight", "qa_distillation_kl_weight", "qa_level_weights")
        if getattr(model_args, name) is not None
    }
    path = model_args.model_name_or_path
    if is_hbi_checkpoint(path):
        config = HBIConfig.from_pretrained(path)
        is_qa_model = HBIForVideoQuestionAnswering.__name__ in (config.architectures or [])
        if model_args.answers is not None:
            answered = config_with_answers(config, model_args.answers)
            if is_qa_model and answered.label2id != config.label2id:
                raise ValueError(f"{path} was trained for another answer vocabulary than {model_args.answers}")
            config = answered
        elif not is_qa_model:
            raise ValueError(f"{path} is a retrieval model: give its answer vocabulary with --answers")
        config = HBIConfig.from_dict({**config.to_dict(), **overrides}) if is_qa_model else video_qa_config(config, **overrides)
        model = HBIForVideoQuestionAnswering.from_pretrained(path, config=config)
    else:
        if model_args.answers is None:
            raise ValueError(f"starting from the CLIP checkpoint {path} needs the answer vocabulary: give --answers")
        model = HBIForVideoQuestionAnswering.from_clip_pretrained(
            path, **{**VIDEO_QA_SETTINGS, **answer_label_maps(model_args.answers), **overrides}
        )
    if model_args.estimator is not None:
        model.banzhaf_teacher.load_state_dict(load_estimator_state_dict(model_args.estimator))
    return model


def read_qa_annotations(annotation_file: str, video_root: str | None) -> tuple[list[VideoTextRecord], list[str]]:
    """The questions of an annotation file as records (the question is the caption) and their
    types."""
    records = list(iter_annotations(annotation_file, video_root))
    rows = list(annotation_rows(annotation_file))
    if len(rows) != len(records):
        raise ValueError(f"{annotation_file}: expected one question per row, got {len(records)} for {len(rows)} rows")
    types = [
        next((str(row[column]).lower() for column in QUESTION_TYPE_COLUMNS if row.get(column)), None)
        or question_type(record.question or record.caption)
        for row, record in zip(rows, records)
    ]
    return records, types


@torch.no_grad()
def predict_answers(
    model: HBIForVideoQuestionAnswering,
    collator: HBIDataCollator,
    records: list[VideoTextRecord],
    batch_size: int = 64,
    progress: bool = True,
) -> list[int]:
    """The predicted answer label of each record's question, `OUT_OF_VOCABULARY_LABEL` where its
    video failed to decode (the collator counts those). Each video is encoded once, however many
    questions it has; its questions are answered in batches of `batch_size`."""
    device = next(model.parameters()).device
    clips = unique_videos(records)
    questions_of_clip = [[] for _ in clips]
    for question, clip in enumerate(text_to_video_index(records)):
        questions_of_clip[clip].append(question)
    predictions = [OUT_OF_VOCABULARY_LABEL] * len(records)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(clips), batch_size), desc="answering questions", disable=not progress):
            try:
                videos = collator.collate_videos(clips[start : start + batch_size])
            except EmptyBatchError as error:
                logger.warning(f"skipping a batch of videos: {error}")
                continue
            video = model.get_video_features(videos["pixel_values_videos"].to(device), videos["video_mask"].to(device))
            pairs = [
                (question, row)
                for row, position in enumerate(videos["clip_positions"].tolist())
                for question in questions_of_clip[start + position]
            ]
            for pair_start in range(0, len(pairs), batch_size):
                questions, rows = zip(*pairs[pair_start : pair_start + batch_size])
                text = collator.processor(text=[records[q].caption for q in questions], return_tensors="pt")
                rows = torch.tensor(rows, device=device)
                output = model.compute_answer_logits(
                    model.get_text_features(text["input_ids"].to(device), text["attention_mask"].to(device)),
                    HBIVideoOutput(video_embeds=video.video_embeds[rows], video_mask=video.video_mask[rows]),
                )
                for question, label in zip(questions, output.logits.argmax(dim=-1).tolist()):
                    predictions[question] = label
    finally:
        model.train(was_training)
    return predictions


def evaluate_video_qa(
    model: HBIForVideoQuestionAnswering,
    collator: HBIDataCollator,
    records: list[VideoTextRecord],
    question_types: list[str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, float | int | None]:
    """`video_qa_accuracy` of the model's answers (see `predict_answers`), plus `num_unanswered`:
    questions whose video failed to decode, counted wrong under both protocols."""
    predictions = predict_answers(model, collator, records, batch_size, progress)
    labels = [model.config.label2id.get(record.answer, OUT_OF_VOCABULARY_LABEL) for record in records]
    metrics = video_qa_accuracy(predictions, labels, question_types)
    metrics["num_unanswered"] = predictions.count(OUT_OF_VOCABULARY_LABEL)
    return metrics


def write_qa_metrics(metrics: dict, output_dir: str, name: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    Path(output_dir, f"{name}.json").write_text(json.dumps(metrics, indent=2))
    Path(output_dir, f"{name}.txt").write_text(format_qa_table(metrics) + "\n")


def main(argv: list[str] | None = None) -> dict:
    """Trains on `--train_annotations` (when given), then evaluates on `--eval_annotations` (when
    given), printing the accuracy table and writing `eval_results.json` / `.txt` to `--output_dir`.
    Returns the evaluation metrics."""
    parser = HfArgumentParser((QAModelArguments, QADataArguments, VideoQATrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.set_verbosity_info() if training_args.should_log else logging.set_verbosity_warning()
    if data_args.train_annotations is None and data_args.eval_annotations is None:
        raise ValueError("nothing to do: give --train_annotations and / or --eval_annotations")

    model = load_qa_model(model_args)
    processor = load_processor(model_args, data_args, model.config.vision_config.image_size)
    # A processor saved with a retrieval model has retrieval lengths: the QA ones apply.
    processor.max_words = data_args.max_words
    processor.video_processor.max_frames = data_args.max_frames
    label2id = model.config.label2id

    if data_args.train_annotations is not None:
        records, _ = read_qa_annotations(data_args.train_annotations, data_args.video_root)
        answerable = [record for record in records if record.answer in label2id]
        logger.warning(
            f"{len(records) - len(answerable)} of {len(records)} training questions have an answer outside the "
            f"{len(label2id)}-answer vocabulary and are left out"
        )
        if not answerable:
            raise ValueError(f"no training question of {data_args.train_annotations} has an answer in the vocabulary")
        if training_args.freeze_clip_embeddings:
            freeze_clip_embeddings(model)
        trainer = HBITrainer(
            model=model,
            args=training_args,
            train_dataset=load_video_text_dataset(answerable),
            data_collator=HBIDataCollator(processor, answer_labels=label2id, max_bad_fraction=data_args.max_bad_fraction),
            processing_class=processor,
        )
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.save_state()
    else:
        model.to(training_args.device)

    metrics = {}
    # Evaluation runs in the main process only; the others are done once training is.
    if data_args.eval_annotations is not None and training_args.process_index == 0:
        records, types = read_qa_annotations(data_args.eval_annotations, data_args.video_root)
        collator = HBIDataCollator(processor, max_bad_fraction=data_args.max_bad_fraction)
        metrics = evaluate_video_qa(
            model, collator, records, types, batch_size=training_args.per_device_eval_batch_size,
            progress=not training_args.disable_tqdm,
        )
        print(format_qa_table(metrics))
        print(f"evaluation videos: {collator.counter.report()}")
        write_qa_metrics(metrics, training_args.output_dir, "eval_results")
    return metrics
