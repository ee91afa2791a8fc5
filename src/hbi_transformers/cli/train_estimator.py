"""`hbi-train-estimator`: pre-train the Banzhaf interaction estimator that HBI uses as its frozen
teacher (docs/banzhaf.md)."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from ..data import HBIDataCollator
from ..models.hbi.banzhaf_estimator import BanzhafEstimator
from ..training.estimator_pretraining import (
    MANIFEST,
    LabelShardDataset,
    check_label_cache,
    label_cache_key,
    save_estimator,
    train_estimator,
    write_label_shards,
)
from .arguments import LabelCorpusArguments, ModelArguments, ParallelismArguments, configure_parallelism
from .loading import default_device, load_corpus, load_model

DESCRIPTION = (
    "Pre-train a Banzhaf interaction estimator on the entity-level maps of a frozen HBI model: label every "
    "matched pair of the corpus once with Monte Carlo Banzhaf interactions (cached), train the estimator with "
    "the official recipe, report the held-out MSE, and save every epoch, and the official release's epoch as "
    "banzhaf_estimator.safetensors (give it to hbi-train with --estimator)."
)


@dataclass
class EstimatorArguments:
    output_dir: str = field(default="banzhaf-estimator", metadata={"help": "Where the estimator weights go."})
    label_cache: str | None = field(
        default=None, metadata={"help": "Folder of cached labels, reused when present; None: OUTPUT_DIR/labels."}
    )
    num_samples: int = field(default=100, metadata={"help": "Monte Carlo samples per label (official 100)."})
    learning_rate: float = field(default=1e-2, metadata={"help": "Official 1e-2."})
    epochs: int = field(default=10, metadata={"help": "Official 10 (the released teacher is epoch 6)."})
    batch_size: int = field(default=128, metadata={"help": "Pairs per optimisation step (official 128)."})
    label_batch_size: int = field(default=32, metadata={"help": "Pairs encoded at once to make labels."})
    heldout_fraction: float = field(default=0.05, metadata={"help": "Share of pairs kept for the held-out MSE."})
    seed: int = field(default=0, metadata={"help": "Seeds the labels' coalitions and the data order."})
    estimator_width: int = field(default=64, metadata={"help": "Channels of the estimator (official 64)."})
    release_epoch: int = field(
        default=6,
        metadata={"help": "The epoch saved as banzhaf_estimator.safetensors: the official teacher is epoch 6 (with "
                  "the fixed 5-epoch cosine horizon, epoch 10 ends at the peak learning rate again); the last "
                  "epoch when training is shorter."},
    )


def run(argv: list[str] | None = None) -> list[dict]:
    """Runs the command; returns one record per epoch (train and held-out MSE)."""
    parser = HfArgumentParser(
        (ModelArguments, LabelCorpusArguments, EstimatorArguments, ParallelismArguments), prog="hbi-train-estimator",
        description=DESCRIPTION,
    )
    model_args, corpus_args, args, parallelism_args = parser.parse_args_into_dataclasses(args=argv)
    configure_parallelism(parallelism_args, argv)
    output_dir = Path(args.output_dir)
    label_dir = Path(args.label_cache) if args.label_cache else output_dir / "labels"

    model = load_model(model_args.model_name_or_path)
    model.to(default_device())
    processor = corpus_args.processor(model_args, model.config.vision_config.image_size)
    collator = HBIDataCollator(processor, max_bad_fraction=corpus_args.max_bad_fraction)
    if (label_dir / MANIFEST).exists():
        check_label_cache(label_dir, label_cache_key(model, collator, args.num_samples, args.seed))
        print(f"reusing the labels in {label_dir}: same model and settings")
    else:
        corpus = load_corpus(corpus_args.dataset, "train", corpus_args.train_annotations, corpus_args.annotations_dir,
                             corpus_args.video_root, max_bad_fraction=corpus_args.max_bad_fraction)
        if corpus is None:
            raise ValueError("nothing to label: give --train_annotations or an official --dataset")
        pairs = write_label_shards(model, collator, corpus, label_dir, args.num_samples, args.seed,
                                   batch_size=args.label_batch_size)
        print(f"labelled {pairs} pairs into {label_dir}; {collator.counter.report()}")

    labels = LabelShardDataset(label_dir)
    heldout_size = max(1, round(len(labels) * args.heldout_fraction))
    train_part, heldout_part = torch.utils.data.random_split(
        labels, [len(labels) - heldout_size, heldout_size], generator=torch.Generator().manual_seed(args.seed)
    )
    torch.manual_seed(args.seed)
    estimator = BanzhafEstimator(args.estimator_width)
    output_dir.mkdir(parents=True, exist_ok=True)

    release = min(args.release_epoch, args.epochs)

    def save_epoch(record):
        save_estimator(estimator, output_dir / f"estimator-epoch{record.epoch}.safetensors")
        if record.epoch == release:
            save_estimator(estimator, output_dir / "banzhaf_estimator.safetensors")
        print(f"epoch {record.epoch}: train MSE {record.train_mse:.4f}, held-out MSE {record.heldout_mse:.4f} "
              f"(predicting the mean: {record.mean_baseline_mse:.4f})")

    history = train_estimator(
        estimator, train_part, heldout_part, learning_rate=args.learning_rate, epochs=args.epochs,
        batch_size=args.batch_size, seed=args.seed, on_epoch_end=save_epoch,
    )
    records = [asdict(record) for record in history]
    (output_dir / "history.json").write_text(json.dumps(records, indent=2))
    return records


def main() -> None:
    run()


if __name__ == "__main__":
    main()
