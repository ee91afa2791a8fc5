"""`hbi-train-qa`: train HBI for video question answering with the official recipe, then report
its accuracy under the official protocol and over all questions, overall and per question type.

Annotations are MSRVTT-QA style rows (jsonl, json or csv): the video (`video`: a path relative to
`--video_root`, or `video_id`: `<video_root>/<id>.mp4`), `question`, `answer`, and optionally its
type (`question_type` or `answer_type`; else the question's first word). The answer vocabulary is
an `{answer: label}` JSON file (the official `train_ans2label.json`) or a JSON list of answers.
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser, set_seed
from transformers.utils import logging

from ..data import HBIDataCollator, VideoTextRecord, iter_rows_with_records, load_video_text_dataset
from ..training import HBITrainer, VideoQAEvaluator, VideoQATrainingArguments, format_qa_table
from ..training.metrics.video_qa import question_type
from .arguments import ModelArguments, ParallelismArguments, configure_parallelism, parse_with_recipe, save_resolved_options
from .loading import load_processor, load_qa_model, write_metrics

logger = logging.get_logger(__name__)

DESCRIPTION = (
    "Train HBI for video question answering (HBIForVideoQuestionAnswering) with the official MSRVTT-QA "
    "recipe on --train_annotations, then report accuracy on --eval_annotations (official protocol and all "
    "questions, per question type) and write eval_results.json / .txt to --output_dir."
)
# Annotation columns that may give a question's type (MSRVTT-QA's own files call it answer_type).
QUESTION_TYPE_COLUMNS = ("question_type", "answer_type")


@dataclass
class QAModelArguments(ModelArguments):
    model_name_or_path: str = field(
        default="openai/clip-vit-base-patch16",
        metadata={"help": "A HBI video QA folder (trained or converted), a HBI retrieval folder (its weights "
                  "initialise everything but the answer heads), or a transformers CLIP checkpoint to start from.",
                  "aliases": ["--model"]},
    )
    answers: str | None = field(
        default=None,
        metadata={"help": "Answer vocabulary (train_ans2label.json: answer -> label, or a JSON list of answers). "
                  "Needed unless the model is a QA model, whose vocabulary it must then be."},
    )
    estimator: str | None = field(
        default=None, metadata={"help": "Banzhaf estimator weights for the frozen teacher (ours or official)."}
    )
    banzhaf_kl_weight: float | None = field(default=None, metadata={"help": "skl (official 1); None: the model's."})
    qa_distillation_kl_weight: float | None = field(
        default=None, metadata={"help": "kl of the answer-logit self-distillation (official 0.2); None: the model's."}
    )
    qa_level_weights: list[float] | None = field(
        default=None, metadata={"help": "Entity, action, event weights of the answer logits (official 0.4 0.4 0.2)."}
    )

    def config_overrides(self) -> dict:
        return {
            name: getattr(self, name)
            for name in ("banzhaf_kl_weight", "qa_distillation_kl_weight", "qa_level_weights")
            if getattr(self, name) is not None
        }


@dataclass
class QADataArguments:
    train_annotations: str | None = field(default=None, metadata={"help": "Training questions."})
    eval_annotations: str | None = field(default=None, metadata={"help": "Evaluation questions."})
    video_root: str | None = field(default=None, metadata={"help": "Folder the videos are found in."})
    max_words: int = field(default=32, metadata={"help": "Tokens per question (official 32)."})
    max_frames: int = field(default=12, metadata={"help": "Frames per video (official 12)."})
    video_framerate: float = field(default=1.0, metadata={"help": "Frames sampled per second."})
    frame_sampling: str = field(default="fps", metadata={"help": "fps (official for MSRVTT-QA) or per_second."})
    max_bad_fraction: float = field(default=0.05, metadata={"help": "Largest tolerated share of bad videos."})


def read_qa_annotations(annotation_file: str, video_root: str | None) -> tuple[list[VideoTextRecord], list[str]]:
    """The questions of an annotation file as records (the question is the caption) and their
    types (a question that fails the annotation checks is skipped, and logged with its line)."""
    records, types = [], []
    for row, row_records in iter_rows_with_records(annotation_file, video_root):
        for record in row_records:
            records.append(record)
            types.append(
                next((str(row[column]).lower() for column in QUESTION_TYPE_COLUMNS if row.get(column)), None)
                or question_type(record.question or record.caption)
            )
    return records, types


def run(argv: list[str] | None = None) -> dict:
    """Runs the command; returns the evaluation metrics (empty without --eval_annotations)."""
    parser = HfArgumentParser(
        (QAModelArguments, QADataArguments, VideoQATrainingArguments, ParallelismArguments), prog="hbi-train-qa",
        description=DESCRIPTION,
    )
    (model_args, data_args, training_args, parallelism_args), recipe = parse_with_recipe(parser, argv)
    logging.set_verbosity_info() if training_args.should_log else logging.set_verbosity_warning()
    configure_parallelism(parallelism_args, argv, training_args)
    if data_args.train_annotations is None and data_args.eval_annotations is None:
        raise ValueError("nothing to do: give --train_annotations and / or --eval_annotations")

    # Before the model exists: --seed covers the initialisation of its fresh heads.
    set_seed(training_args.seed)
    if training_args.should_save:
        save_resolved_options(training_args.output_dir, recipe, model_args, data_args, training_args)
    model = load_qa_model(model_args.model_name_or_path, model_args.answers, model_args.estimator,
                          **model_args.config_overrides())
    processor = load_processor(
        model_args.model_name_or_path, model.config.vision_config.image_size, model_args.tokenizer_name_or_path,
        max_words=data_args.max_words, max_frames=data_args.max_frames, video_framerate=data_args.video_framerate,
        frame_sampling=data_args.frame_sampling,
    )
    # A processor saved with a retrieval model has retrieval lengths: the QA ones apply.
    processor.max_words = data_args.max_words
    processor.video_processor.max_frames = data_args.max_frames
    label2id = model.config.label2id

    train_dataset = None
    if data_args.train_annotations is not None:
        records, _ = read_qa_annotations(data_args.train_annotations, data_args.video_root)
        answerable = [record for record in records if record.answer in label2id]
        logger.warning(
            f"{len(records) - len(answerable)} of {len(records)} training questions have an answer outside the "
            f"{len(label2id)}-answer vocabulary and are left out"
        )
        if not answerable:
            raise ValueError(f"no training question of {data_args.train_annotations} has an answer in the vocabulary")
        train_dataset = load_video_text_dataset(answerable)
    eval_records = types = None
    if data_args.eval_annotations is not None:
        eval_records, types = read_qa_annotations(data_args.eval_annotations, data_args.video_root)
    eval_collator = HBIDataCollator(processor, max_bad_fraction=data_args.max_bad_fraction)
    trainer = HBITrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=HBIDataCollator(processor, answer_labels=label2id, max_bad_fraction=data_args.max_bad_fraction),
        eval_data_collator=eval_collator,
        evaluator=VideoQAEvaluator(eval_collator, training_args.per_device_eval_batch_size, question_types=types),
        processing_class=processor,
    )
    if train_dataset is not None:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.save_state()

    metrics = {}
    if eval_records is not None:
        metrics = trainer.evaluate(eval_records, metric_key_prefix="eval")
        metrics = {name.removeprefix("eval_"): value for name, value in metrics.items()}
        if trainer.is_world_process_zero():
            print(format_qa_table(metrics))
            write_metrics(metrics, training_args.output_dir, "eval_results", format_qa_table)
    return metrics


def main() -> None:
    run()


if __name__ == "__main__":
    main()
