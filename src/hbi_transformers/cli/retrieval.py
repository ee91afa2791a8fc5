"""Command lines for text-video retrieval: `hbi-train` (train, then evaluate), `hbi-evaluate`, and
`hbi-train-estimator` (pre-train the Banzhaf interaction estimator).

Both read corpora through `hbi_transformers.data`: a generic annotation file (jsonl / csv) or
webdataset shards or a hub dataset, or the official MSR-VTT, ActivityNet Captions and DiDeMo
annotation layouts.
"""

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, HfArgumentParser
from transformers.utils import logging

from ..models.hbi.configuration_hbi import HBIConfig
from ..data import HBIDataCollator, load_video_text_dataset, read_activitynet, read_didemo, read_msrvtt
from ..models.hbi.banzhaf_estimator import BanzhafEstimator
from ..training.estimator_pretraining import (
    LabelShardDataset,
    load_estimator_state_dict,
    save_estimator,
    train_estimator,
    write_label_shards,
)
from ..apps.demo import demo_main
from ..training.metrics.retrieval import format_metrics_table
from ..hub.model_card import write_model_card
from ..models.hbi.modeling_hbi import HBIModel
from ..models.hbi.processing_hbi import HBIProcessor, HBIVideoProcessor
from ..training.trainer import HBITrainer, HBITrainingArguments, SkipEmptyBatches, evaluate_retrieval

logger = logging.get_logger(__name__)

OFFICIAL_DATASETS = {"msrvtt": read_msrvtt, "activitynet": read_activitynet, "didemo": read_didemo}
# The official loaders' evaluation splits.
OFFICIAL_EVAL_SPLIT = {"msrvtt": "test", "activitynet": "val", "didemo": "test"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="openai/clip-vit-base-patch32",
        metadata={"help": "An HBI folder or hub name (trained or converted), or a transformers CLIP checkpoint to "
                  "start a fresh HBI from.", "aliases": ["--model"]},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "CLIP tokenizer (default: the model's; see scripts/build_clip_tokenizer.py)."}
    )
    estimator: str | None = field(
        default=None, metadata={"help": "Banzhaf estimator weights for the frozen teacher (ours or official)."}
    )
    level_weights: list[float] | None = field(default=None, metadata={"help": "Entity, action, event weights."})
    banzhaf_kl_weight: float | None = field(default=None, metadata={"help": "skl (official 1)."})
    distillation_kl_weight: float | None = field(default=None, metadata={"help": "kl (official default 0.2; README runs 2)."})
    same_video_positives: bool = field(default=False, metadata={"help": "Captions of one video are not negatives."})


@dataclass
class DataArguments:
    dataset: str = field(
        default="generic",
        metadata={"help": "generic (annotation file, webdataset shards or hub dataset), msrvtt, activitynet or didemo."},
    )
    train_annotations: str | None = field(default=None, metadata={"help": "generic: training annotations / shards / hub name."})
    eval_annotations: str | None = field(default=None, metadata={"help": "generic: evaluation annotations."})
    annotations_dir: str | None = field(default=None, metadata={"help": "msrvtt / activitynet / didemo annotation folder."})
    video_root: str | None = field(default=None, metadata={"help": "Folder the videos are found in."})
    streaming: bool = field(default=False, metadata={"help": "Stream the training corpus (then set --max_steps)."})
    max_words: int = field(default=24, metadata={"help": "Tokens per caption (64 for paragraphs)."})
    max_frames: int = field(default=12, metadata={"help": "Frames per video (64 for ActivityNet)."})
    video_framerate: float = field(default=1.0, metadata={"help": "Frames sampled per second."})
    frame_sampling: str | None = field(
        default=None, metadata={"help": "fps or per_second (default: per_second for activitynet / didemo)."}
    )
    augment: bool | None = field(
        default=None, metadata={"help": "Training RandAugment (default: on for msrvtt and generic, as officially)."}
    )
    max_bad_fraction: float = field(default=0.05, metadata={"help": "Largest tolerated share of bad videos."})


def load_corpus(data_args: DataArguments, split: str):
    """Records (or a streamed dataset) of one split; `split` is "train" or "eval"."""
    if data_args.dataset in OFFICIAL_DATASETS:
        if data_args.annotations_dir is None or data_args.video_root is None:
            raise ValueError(f"--dataset {data_args.dataset} needs --annotations_dir and --video_root")
        official_split = "train" if split == "train" else OFFICIAL_EVAL_SPLIT[data_args.dataset]
        return OFFICIAL_DATASETS[data_args.dataset](official_split, data_args.annotations_dir, data_args.video_root)
    if data_args.dataset != "generic":
        raise ValueError(f"unknown --dataset {data_args.dataset!r}: generic, {', '.join(OFFICIAL_DATASETS)}")
    source = data_args.train_annotations if split == "train" else data_args.eval_annotations
    if source is None:
        return None
    streaming = data_args.streaming and split == "train"
    return load_video_text_dataset(source, video_root=data_args.video_root, streaming=streaming)


def is_hbi_checkpoint(name_or_path: str) -> bool:
    config_file = Path(name_or_path) / "config.json"
    if config_file.exists():
        return json.loads(config_file.read_text()).get("model_type") == HBIConfig.model_type
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name_or_path).model_type == HBIConfig.model_type
    except (OSError, ValueError):
        return False


def load_model(model_args: ModelArguments) -> HBIModel:
    overrides = {
        name: getattr(model_args, name)
        for name in ("level_weights", "banzhaf_kl_weight", "distillation_kl_weight")
        if getattr(model_args, name) is not None
    }
    overrides["same_video_positives"] = model_args.same_video_positives
    if is_hbi_checkpoint(model_args.model_name_or_path):
        model = HBIModel.from_pretrained(model_args.model_name_or_path, **overrides)
    else:
        model = HBIModel.from_clip_pretrained(model_args.model_name_or_path, **overrides)
    if model_args.estimator is not None:
        model.banzhaf_teacher.load_state_dict(load_estimator_state_dict(model_args.estimator))
    return model


def load_processor(model_args: ModelArguments, data_args: DataArguments, image_size: int) -> HBIProcessor:
    """The processor saved with an HBI model folder, or one built from the data arguments for
    frames of `image_size` pixels (the vision tower's)."""
    saved = Path(model_args.model_name_or_path) / "processor_config.json"
    if saved.exists() and model_args.tokenizer_name_or_path is None:
        return HBIProcessor.from_pretrained(model_args.model_name_or_path)
    frame_sampling = data_args.frame_sampling or (
        "per_second" if data_args.dataset in ("activitynet", "didemo") else "fps"
    )
    video_processor = HBIVideoProcessor(
        max_frames=data_args.max_frames,
        video_framerate=data_args.video_framerate,
        frame_sampling=frame_sampling,
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path or model_args.model_name_or_path)
    if len(tokenizer) < 3:
        # Offline, a hub name can come back as an empty shell tokenizer instead of an error.
        raise ValueError(
            f"the tokenizer of {model_args.tokenizer_name_or_path or model_args.model_name_or_path} has "
            f"{len(tokenizer)} tokens: build one with scripts/build_clip_tokenizer.py and pass --tokenizer_name_or_path"
        )
    return HBIProcessor(video_processor, tokenizer, max_words=data_args.max_words)


def write_metrics(metrics: dict, output_dir: str, name: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    Path(output_dir, f"{name}.json").write_text(json.dumps(metrics, indent=2))
    unprefixed = {key.removeprefix("eval_"): value for key, value in metrics.items()}
    Path(output_dir, f"{name}.txt").write_text(format_metrics_table(unprefixed) + "\n")


def train_main(argv=None) -> dict:
    """`hbi-train ARGUMENTS`; with no arguments at all, the offline demonstration (`demo_run`)."""
    if (sys.argv[1:] if argv is None else argv) == []:
        return demo_main([])
    parser = HfArgumentParser((ModelArguments, DataArguments, HBITrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.set_verbosity_info() if training_args.should_log else logging.set_verbosity_warning()

    model = load_model(model_args)
    processor = load_processor(model_args, data_args, model.config.vision_config.image_size)
    train_corpus = load_corpus(data_args, "train")
    eval_corpus = load_corpus(data_args, "eval")
    if train_corpus is None:
        raise ValueError("nothing to train on: give --train_annotations or an official --dataset")
    augment = data_args.augment if data_args.augment is not None else data_args.dataset in ("msrvtt", "generic")
    collator = HBIDataCollator(processor, do_augment=augment, max_bad_fraction=data_args.max_bad_fraction)
    trainer = HBITrainer(
        model=model,
        args=training_args,
        train_dataset=train_corpus,
        eval_dataset=eval_corpus,
        data_collator=collator,
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    metrics = {}
    if eval_corpus is not None:
        metrics = trainer.evaluate()
        if trainer.is_world_process_zero():
            write_metrics(metrics, training_args.output_dir, "eval_results")
    if trainer.is_world_process_zero():
        write_model_card(
            training_args.output_dir,
            metrics or None,
            base_model=model_args.model_name_or_path,
            dataset_name=data_args.dataset if data_args.dataset != "generic" else data_args.eval_annotations,
            max_frames=data_args.max_frames,
            video_framerate=data_args.video_framerate,
            image_size=model.config.vision_config.image_size,
            max_words=data_args.max_words,
        )
    return metrics


@dataclass
class EvaluationArguments:
    output_json: str | None = field(default=None, metadata={"help": "Write the metrics here as JSON."})
    batch_size: int = field(default=64, metadata={"help": "Captions or videos encoded at once."})
    chunk_size: int = field(default=256, metadata={"help": "Texts x videos per scoring block."})
    dual_softmax: bool = field(default=False, metadata={"help": "Also report dual-softmax re-ranked metrics."})


def evaluate_main(argv=None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, EvaluationArguments))
    model_args, data_args, eval_args = parser.parse_args_into_dataclasses(args=argv)
    model = load_model(model_args)
    processor = load_processor(model_args, data_args, model.config.vision_config.image_size)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    records = load_corpus(data_args, "eval")
    if records is None:
        raise ValueError("nothing to evaluate: give --eval_annotations or an official --dataset")
    collator = HBIDataCollator(processor, max_bad_fraction=data_args.max_bad_fraction)
    metrics = evaluate_retrieval(model, collator, records, batch_size=eval_args.batch_size,
                                 chunk_size=eval_args.chunk_size, dual_softmax=eval_args.dual_softmax)
    print(format_metrics_table(metrics))
    print(collator.counter.report())
    if eval_args.output_json:
        Path(eval_args.output_json).write_text(json.dumps(metrics, indent=2))
    return metrics


@dataclass
class EstimatorArguments:
    output_dir: str = field(default="banzhaf-estimator", metadata={"help": "Where the estimator weights go."})
    label_cache: str | None = field(
        default=None, metadata={"help": "Folder of cached labels (default: OUTPUT_DIR/labels); reused when present."}
    )
    num_samples: int = field(default=100, metadata={"help": "Monte Carlo samples per label (official 100)."})
    learning_rate: float = field(default=1e-2, metadata={"help": "Official 1e-2."})
    epochs: int = field(default=10, metadata={"help": "Official 10 (the released teacher is epoch 6)."})
    batch_size: int = field(default=128, metadata={"help": "Pairs per optimisation step (official 128)."})
    label_batch_size: int = field(default=32, metadata={"help": "Pairs encoded at once to make labels."})
    heldout_fraction: float = field(default=0.05, metadata={"help": "Share of pairs kept for the held-out MSE."})
    seed: int = field(default=0, metadata={"help": "Seeds the labels' coalitions and the data order."})
    estimator_width: int = field(default=64, metadata={"help": "Channels of the estimator (official 64)."})


def estimator_main(argv=None) -> list[dict]:
    """Pre-trains a Banzhaf estimator on the entity-level maps of a frozen HBI model (spec section 4)
    and saves it so that `--estimator` (or `load_estimator_state_dict`) gives it to a model as its
    teacher."""
    parser = HfArgumentParser((ModelArguments, DataArguments, EstimatorArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    output_dir = Path(args.output_dir)
    label_dir = Path(args.label_cache) if args.label_cache else output_dir / "labels"

    if not (label_dir / "labels.json").exists():
        model = load_model(model_args)
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        processor = load_processor(model_args, data_args, model.config.vision_config.image_size)
        corpus = load_corpus(data_args, "train")
        if corpus is None:
            raise ValueError("nothing to label: give --train_annotations or an official --dataset")
        collator = HBIDataCollator(processor, max_bad_fraction=data_args.max_bad_fraction)
        loader = torch.utils.data.DataLoader(corpus, batch_size=args.label_batch_size, collate_fn=collator)
        pairs = write_label_shards(model, SkipEmptyBatches(loader), label_dir, args.num_samples, args.seed)
        print(f"labelled {pairs} pairs into {label_dir}; {collator.counter.report()}")

    labels = LabelShardDataset(label_dir)
    heldout_size = max(1, round(len(labels) * args.heldout_fraction))
    train_part, heldout_part = torch.utils.data.random_split(
        labels, [len(labels) - heldout_size, heldout_size], generator=torch.Generator().manual_seed(args.seed)
    )
    torch.manual_seed(args.seed)
    estimator = BanzhafEstimator(args.estimator_width)
    output_dir.mkdir(parents=True, exist_ok=True)

    def save_epoch(record):
        save_estimator(estimator, output_dir / f"estimator-epoch{record.epoch}.safetensors")
        print(f"epoch {record.epoch}: train MSE {record.train_mse:.4f}, held-out MSE {record.heldout_mse:.4f} "
              f"(predicting the mean: {record.mean_baseline_mse:.4f})")

    history = train_estimator(
        estimator, train_part, heldout_part, learning_rate=args.learning_rate, epochs=args.epochs,
        batch_size=args.batch_size, seed=args.seed, on_epoch_end=save_epoch,
    )
    save_estimator(estimator, output_dir / "banzhaf_estimator.safetensors")
    records = [asdict(record) for record in history]
    (output_dir / "history.json").write_text(json.dumps(records, indent=2))
    return records
