"""`hbi-train`: train HBI for text-video retrieval with the official recipe, then evaluate it.
With no arguments at all it runs the offline demonstration (`hbi-demo`)."""

import sys

from transformers import HfArgumentParser, set_seed
from transformers.utils import logging

from ..data import HBIDataCollator
from ..hub.model_card import write_model_card
from ..training import HBITrainer, HBITrainingArguments, format_metrics_table
from . import demo
from .arguments import (
    ParallelismArguments,
    TrainingCorpusArguments,
    TrainingModelArguments,
    configure_parallelism,
    parse_with_recipe,
    save_resolved_options,
)
from .loading import load_corpus, load_model, write_metrics

DESCRIPTION = (
    "Train HBI for text-video retrieval with the official recipe (HBITrainer), then evaluate it on the "
    "evaluation split and write the model, its processor, eval_results.json / .txt and a model card to "
    "--output_dir. With no arguments at all, runs the offline demonstration (see hbi-demo --help)."
)
# Augmentation is official for MSR-VTT retrieval only; a generic corpus follows it.
AUGMENTED_DATASETS = ("msrvtt", "generic")


def run(argv: list[str] | None = None) -> dict:
    """Runs the command; returns the evaluation metrics (the demonstration's summary with no
    arguments)."""
    if (sys.argv[1:] if argv is None else argv) == []:
        return demo.run([])
    parser = HfArgumentParser(
        (TrainingModelArguments, TrainingCorpusArguments, HBITrainingArguments, ParallelismArguments), prog="hbi-train",
        description=DESCRIPTION,
    )
    (model_args, corpus_args, training_args, parallelism_args), recipe = parse_with_recipe(parser, argv)
    logging.set_verbosity_info() if training_args.should_log else logging.set_verbosity_warning()
    configure_parallelism(parallelism_args, argv, training_args)

    # Before the model exists: --seed covers the initialisation of its fresh heads.
    set_seed(training_args.seed)
    model = load_model(model_args.model_name_or_path, model_args.estimator, **model_args.config_overrides())
    processor = corpus_args.processor(model_args, model.config.vision_config.image_size)
    if training_args.should_save:
        save_resolved_options(training_args.output_dir, recipe, model_args, corpus_args, training_args)
    corpus_options = dict(annotations_dir=corpus_args.annotations_dir, video_root=corpus_args.video_root,
                          max_bad_fraction=corpus_args.max_bad_fraction,
                          msrvtt_train_split=corpus_args.msrvtt_train_split)
    train_corpus = load_corpus(corpus_args.dataset, "train", corpus_args.train_annotations,
                               streaming=corpus_args.streaming, **corpus_options)
    eval_corpus = load_corpus(corpus_args.dataset, "eval", corpus_args.eval_annotations, **corpus_options)
    if train_corpus is None:
        raise ValueError("nothing to train on: give --train_annotations or an official --dataset")
    augment = corpus_args.augment if corpus_args.augment is not None else corpus_args.dataset in AUGMENTED_DATASETS
    trainer = HBITrainer(
        model=model,
        args=training_args,
        train_dataset=train_corpus,
        eval_dataset=eval_corpus,
        data_collator=HBIDataCollator(processor, do_augment=augment, max_bad_fraction=corpus_args.max_bad_fraction),
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    metrics = {}
    if eval_corpus is not None:
        metrics = trainer.evaluate()
        if trainer.is_world_process_zero():
            write_metrics(metrics, training_args.output_dir, "eval_results", format_metrics_table)
    if trainer.is_world_process_zero():
        write_model_card(
            training_args.output_dir,
            metrics or None,
            base_model=model_args.model_name_or_path,
            dataset_name=corpus_args.dataset if corpus_args.dataset != "generic" else corpus_args.eval_annotations,
            max_frames=corpus_args.max_frames,
            video_framerate=corpus_args.video_framerate,
            image_size=model.config.vision_config.image_size,
            max_words=corpus_args.max_words,
        )
    return metrics


def main() -> None:
    run()


if __name__ == "__main__":
    main()
