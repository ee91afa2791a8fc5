"""`hbi-evaluate`: text-video retrieval metrics of a model on a corpus."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from ..data import HBIDataCollator
from ..training import evaluate_retrieval, format_metrics_table
from .arguments import (
    EvaluationCorpusArguments,
    ParallelismArguments,
    RetrievalModelArguments,
    configure_parallelism,
    parse_with_recipe,
)
from .loading import default_device, load_corpus, load_model

DESCRIPTION = (
    "Evaluate an HBI model on text-video retrieval: encode each caption and each video once, score every "
    "caption against every video, print t2v and v2t R@1/5/10/50, median and mean rank."
)


@dataclass
class EvaluationArguments:
    output_json: str | None = field(default=None, metadata={"help": "Write the metrics here as JSON."})
    batch_size: int = field(default=64, metadata={"help": "Captions or videos encoded at once."})
    chunk_size: int = field(default=64, metadata={"help": "Texts x videos per scoring block."})
    dual_softmax: bool = field(default=False, metadata={"help": "Also report dual-softmax re-ranked metrics."})
    device: str | None = field(default=None, metadata={"help": "None: cuda when available, else cpu."})


def run(argv: list[str] | None = None) -> dict:
    """Runs the command; returns the metrics."""
    parser = HfArgumentParser(
        (RetrievalModelArguments, EvaluationCorpusArguments, EvaluationArguments, ParallelismArguments), prog="hbi-evaluate",
        description=DESCRIPTION,
    )
    (model_args, corpus_args, eval_args, parallelism_args), _ = parse_with_recipe(parser, argv)
    configure_parallelism(parallelism_args, argv)
    overrides = {} if model_args.level_weights is None else {"level_weights": model_args.level_weights}
    model = load_model(model_args.model_name_or_path, **overrides)
    processor = corpus_args.processor(model_args, model.config.vision_config.image_size)
    model.to(default_device(eval_args.device))
    records = load_corpus(corpus_args.dataset, "eval", corpus_args.eval_annotations, corpus_args.annotations_dir,
                          corpus_args.video_root, max_bad_fraction=corpus_args.max_bad_fraction)
    if records is None:
        raise ValueError("nothing to evaluate: give --eval_annotations or an official --dataset")
    collator = HBIDataCollator(processor, max_bad_fraction=corpus_args.max_bad_fraction)
    metrics = evaluate_retrieval(model, collator, records, batch_size=eval_args.batch_size,
                                 chunk_size=eval_args.chunk_size, dual_softmax=eval_args.dual_softmax)
    print(format_metrics_table(metrics))
    print(collator.counter.report())
    if eval_args.output_json:
        Path(eval_args.output_json).write_text(json.dumps(metrics, indent=2))
    return metrics


def main() -> None:
    run()


if __name__ == "__main__":
    main()
