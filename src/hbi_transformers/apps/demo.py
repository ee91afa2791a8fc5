"""The main job out of the box: `hbi-demo` (and `hbi-train` with no arguments).

On a machine with no GPU, no hub access and no MSR-VTT, it renders the synthetic shapes corpus
(`hbi_transformers.data.synthetic`), builds a small CLIP-shaped HBI, pre-trains its Banzhaf
estimator briefly, trains HBI, and evaluates the untrained and the trained model on the test split,
printing both tables side by side; then it measures whether the trained model's interaction maps
point at the moments each caption describes (`localisation`). The output folder gets the model,
the processor, a filled-in model card, the metrics and a word x frame interaction heatmap of a test
clip.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPTokenizer, set_seed
from transformers.utils import logging

from ..data import HBIDataCollator, clip_vocabulary, iter_annotations, load_video_text_dataset, make_synthetic_corpus
from ..hub.example_clip import write_example
from ..hub.model_card import describe_tokenizer, write_model_card
from ..models.hbi import HBIConfig, HBIModel, HBIProcessor, HBIVideoProcessor
from ..models.hbi.banzhaf_estimator import BanzhafEstimator
from ..training import HBITrainer, HBITrainingArguments, evaluate_retrieval, format_metrics_table
from ..training.estimator_pretraining import LabelShardDataset, save_estimator, train_estimator, write_label_shards
from .localisation import event_localisation
from .visualization import interaction_maps, plot_interaction_maps

logger = logging.get_logger(__name__)
# What the model card says of the demo's example clip and of a tokenizer trained here.
EXAMPLE_SOURCE = "a clip of the test split of the synthetic shapes corpus this model was trained on (not seen in training)"
TRAINED_TOKENIZER_ORIGIN = "trained on the training captions of the synthetic corpus (byte-level BPE, not CLIP's vocabulary)"


@dataclass
class DemoSettings:
    """What the demonstration runs; `hbi-demo --help` lists these as options."""

    output_dir: str = field(default="hbi-demo", metadata={"help": "Model, processor, card, metrics, heatmap."})
    corpus_dir: str | None = field(default=None, metadata={"help": "Synthetic corpus folder; None: OUTPUT_DIR/corpus."})
    num_clips: int = field(default=1200, metadata={"help": "Clips of the synthetic corpus (80/10/10 split)."})
    tokenizer_name_or_path: str | None = field(
        default="clip-tokenizer",
        metadata={"help": "A CLIP tokenizer folder (hbi-build-tokenizer); when absent, a tokenizer "
                  "is trained on the captions."},
    )
    hidden_size: int = field(default=128, metadata={"help": "Width of both towers and of the joint space."})
    num_layers: int = field(default=4, metadata={"help": "Layers of each tower."})
    image_size: int = field(
        default=32, metadata={"help": "Frames are resized and cropped to this (16-pixel patches: 32 gives 4 per frame)."}
    )
    max_frames: int = field(default=8, metadata={"help": "Frames per clip."})
    video_framerate: float = field(default=2.0, metadata={"help": "Frames sampled per second."})
    estimator_epochs: int = field(default=3, metadata={"help": "Banzhaf estimator pre-training epochs."})
    estimator_samples: int = field(default=20, metadata={"help": "Monte Carlo samples per label."})
    train_epochs: float = field(default=12.0, metadata={"help": "HBI training epochs."})
    batch_size: int = field(default=32)
    learning_rate: float = field(default=1e-3, metadata={"help": "Towers trained from scratch: coef_lr is 1."})
    seed: int = field(default=0)


def caption_tokenizer(args: DemoSettings, captions: list[str]):
    """The real CLIP tokenizer when it has been built, else a CLIP-style BPE tokenizer trained on
    the corpus captions."""
    if args.tokenizer_name_or_path and Path(args.tokenizer_name_or_path).exists():
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
        logger.warning(f"using the CLIP tokenizer in {args.tokenizer_name_or_path} ({len(tokenizer)} tokens)")
        return tokenizer
    byte_level = CLIPTokenizer(vocab=clip_vocabulary([]), merges=[])
    trained = byte_level.train_new_from_iterator(captions, vocab_size=1000)
    # The ids the trainer gives the end-of-word symbols it adds come in a different order each run
    # (and with them the embedding row each starts from, and the demo's results): the same
    # vocabulary with those ids in byte order tokenizes identically. Merges keep their order, which
    # is the same every run on the corpus captions (pairs of equal counts could swap elsewhere).
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge)
              for merge in json.loads(trained.backend_tokenizer.to_str())["model"]["merges"]]
    specials = [trained.bos_token, trained.eos_token]
    merged = ["".join(merge) for merge in merges]
    base_order = byte_level.get_vocab()
    symbols = sorted(set(trained.get_vocab()) - set(specials) - set(merged),
                     key=lambda token: (base_order.get(token, len(base_order)), token))
    ordered = specials + symbols + merged
    tokenizer = CLIPTokenizer(vocab={token: index for index, token in enumerate(ordered)}, merges=merges)
    logger.warning(f"no CLIP tokenizer at {args.tokenizer_name_or_path}: trained one on the captions "
                   f"({len(tokenizer)} tokens)")
    return tokenizer


def small_hbi_config(args: DemoSettings, tokenizer) -> HBIConfig:
    tower = dict(
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=max(1, args.hidden_size // 64),
    )
    return HBIConfig(
        text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=32,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0),
        vision_config=dict(tower, image_size=args.image_size, patch_size=16),
        projection_dim=args.hidden_size,
        temporal_num_layers=min(4, args.num_layers),
    )


def pretrain_estimator(model, collator, train_records, args: DemoSettings, output_dir: Path) -> dict:
    """Labels the training pairs with the untrained model (the official recipe without an initial
    HBI checkpoint) and trains the teacher estimator on them."""
    label_dir = output_dir / "estimator" / "labels"
    write_label_shards(model, collator, train_records, label_dir, args.estimator_samples, args.seed,
                       batch_size=args.batch_size)
    labels = LabelShardDataset(label_dir)
    heldout = max(1, len(labels) // 10)
    train_part, heldout_part = torch.utils.data.random_split(
        labels, [len(labels) - heldout, heldout], generator=torch.Generator().manual_seed(args.seed)
    )
    estimator = BanzhafEstimator(model.config.banzhaf_estimator_width)
    history = train_estimator(estimator, train_part, heldout_part, epochs=args.estimator_epochs,
                              batch_size=args.batch_size, schedule_epochs=args.estimator_epochs, seed=args.seed)
    save_estimator(estimator, output_dir / "estimator" / "banzhaf_estimator.safetensors")
    model.banzhaf_teacher.load_state_dict(estimator.state_dict())
    last = history[-1]
    return {"heldout_mse": last.heldout_mse, "mean_baseline_mse": last.mean_baseline_mse}


def run_demo(args: DemoSettings) -> dict:
    """Runs the demonstration; returns its summary (both evaluations, the estimator's held-out
    error, the minutes it took and the settings)."""
    started = time.perf_counter()
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    corpus = make_synthetic_corpus(args.corpus_dir or output_dir / "corpus", num_clips=args.num_clips, seed=args.seed)
    train_records = list(iter_annotations(corpus["train"], video_root=corpus["output_dir"]))
    test_records = list(iter_annotations(corpus["test"], video_root=corpus["output_dir"]))

    tokenizer = caption_tokenizer(args, [record.caption for record in train_records])
    processor = HBIProcessor(
        HBIVideoProcessor(size={"shortest_edge": args.image_size},
                          crop_size={"height": args.image_size, "width": args.image_size},
                          max_frames=args.max_frames, video_framerate=args.video_framerate),
        tokenizer,
        max_words=24,
    )
    model = HBIModel(small_hbi_config(args, tokenizer))
    # As the official initialisation: the temporal transformer starts as the first text layers.
    model.init_temporal_from_text_tower()
    # No augmentation here, so each clip is decoded once and kept (the corpus is small).
    eval_collator = HBIDataCollator(processor, cache_videos=True)

    untrained = evaluate_retrieval(model, eval_collator, test_records, batch_size=args.batch_size)
    estimator_report = pretrain_estimator(model, eval_collator, train_records, args, output_dir)

    training_args = HBITrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=args.train_epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        coef_lr=1.0,
        schedule_epochs=args.train_epochs,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        dataloader_drop_last=True,
    )
    trainer = HBITrainer(
        model=model,
        args=training_args,
        train_dataset=load_video_text_dataset(corpus["train"], video_root=corpus["output_dir"]),
        # The collator that labelled the training pairs: its cache already holds their clips.
        data_collator=eval_collator,
        processing_class=processor,
    )
    trainer.train()
    trained = evaluate_retrieval(model, eval_collator, test_records, batch_size=args.batch_size)
    localised = event_localisation(model, processor, corpus["test"], corpus["output_dir"])

    table = format_metrics_table({"untrained": untrained, "trained": trained})
    minutes = (time.perf_counter() - started) / 60
    # Each caption has one right video among the test videos.
    chance = 100 / trained["v2t_num_queries"]
    summary = {"untrained": untrained, "trained": trained, "estimator": estimator_report,
               "localisation": localised.as_dict(), "minutes": minutes, "t2v_R@1_chance": chance,
               "settings": asdict(args)}
    save_outputs(model, processor, summary, table, test_records[0], output_dir)
    print(table)
    print(f"Banzhaf estimator: held-out MSE {estimator_report['heldout_mse']:.3f} against "
          f"{estimator_report['mean_baseline_mse']:.3f} for predicting the mean label")
    print(localised.sentence())
    print(f"test t2v R@1 {trained['t2v_R@1']:.1f} (chance {chance:.2f}), {minutes:.1f} minutes; "
          f"model, processor, card and heatmap in {output_dir}")
    return summary


def save_outputs(model, processor, summary: dict, table: str, example, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "metrics.txt").write_text(table + "\n")
    settings = summary["settings"]
    write_example(output_dir, example.video, example.caption, EXAMPLE_SOURCE)
    tokenizer_sentence = describe_tokenizer(processor.tokenizer, TRAINED_TOKENIZER_ORIGIN)
    write_model_card(
        output_dir,
        output_dir / "metrics.json",
        model_name="hbi-synthetic-shapes",
        from_scratch=True,
        datasets=["synthetic-shapes"],
        dataset_name="synthetic shapes corpus (test split)",
        description=(
            f"A small HBI ({settings['hidden_size']} wide, {settings['num_layers']} "
            f"layer{'s' if settings['num_layers'] != 1 else ''} per tower) trained from "
            f"scratch (random initial weights, no CLIP weights) on CPU in {summary['minutes']:.1f} minutes by "
            "`hbi-demo` (`hbi-train` with no arguments), on the synthetic shapes corpus of hbi-transformers "
            f"(coloured shapes acting out sequences of events). Captions are read with {tokenizer_sentence}. "
            "A demonstration, not a model for real videos."
        ),
        tokenizer=processor.tokenizer,
        tokenizer_origin=TRAINED_TOKENIZER_ORIGIN,
        max_frames=settings["max_frames"],
        video_framerate=settings["video_framerate"],
        image_size=settings["image_size"],
        max_words=processor.max_words,
    )
    model.eval()
    maps = interaction_maps(model, processor, example.video, example.caption)
    plot_interaction_maps(maps, output_dir / "interaction.png")
