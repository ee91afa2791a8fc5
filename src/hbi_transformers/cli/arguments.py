"""Command-line options shared by several commands, as dataclasses for `HfArgumentParser`. Each
command combines only the ones it uses, so that its `--help` lists only its own options."""

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser
from transformers.utils import logging

from ..data import Parallelism, apply_parallelism, choose_parallelism
from ..models.hbi import HBIProcessor
from ..training.recipes import RECIPES, Recipe, per_process_batch_size
from .loading import frame_sampling_for, load_processor

logger = logging.get_logger(__name__)
RECIPE_FILE = "recipe.json"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="openai/clip-vit-base-patch32",
        metadata={"help": "An HBI folder or hub name (trained or converted), or a transformers CLIP checkpoint to "
                  "start a fresh HBI from.", "aliases": ["--model"]},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "CLIP tokenizer folder (see hbi-build-tokenizer); None: the model's own processor or tokenizer."},
    )


@dataclass
class RetrievalModelArguments(ModelArguments):
    level_weights: list[float] | None = field(
        default=None, metadata={"help": "Entity, action, event weights of the fused score; None: the model's."}
    )


@dataclass
class TrainingModelArguments(RetrievalModelArguments):
    estimator: str | None = field(
        default=None, metadata={"help": "Banzhaf estimator weights for the frozen teacher (ours or official)."}
    )
    banzhaf_kl_weight: float | None = field(default=None, metadata={"help": "skl (official 1); None: the model's."})
    distillation_kl_weight: float | None = field(
        default=None, metadata={"help": "kl (official argparse default 0.2, published runs 2); None: the model's."}
    )
    same_video_positives: bool = field(default=False, metadata={"help": "Captions of one video are not negatives."})

    def config_overrides(self) -> dict:
        overrides = {
            name: getattr(self, name)
            for name in ("level_weights", "banzhaf_kl_weight", "distillation_kl_weight")
            if getattr(self, name) is not None
        }
        overrides["same_video_positives"] = self.same_video_positives
        return overrides


@dataclass
class CorpusArguments:
    dataset: str = field(
        default="generic",
        metadata={"help": "generic (annotation file, webdataset shards or hub dataset), msrvtt, activitynet or didemo."},
    )
    annotations_dir: str | None = field(default=None, metadata={"help": "msrvtt / activitynet / didemo annotation folder."})
    video_root: str | None = field(default=None, metadata={"help": "Folder the videos are found in."})
    max_words: int = field(default=24, metadata={"help": "Tokens per caption (64 for paragraphs)."})
    max_frames: int = field(default=12, metadata={"help": "Frames per video (64 for ActivityNet)."})
    video_framerate: float = field(default=1.0, metadata={"help": "Frames sampled per second."})
    frame_sampling: str | None = field(
        default=None, metadata={"help": "fps or per_second; None: per_second for activitynet / didemo, else fps."}
    )
    max_bad_fraction: float = field(default=0.05, metadata={"help": "Largest tolerated share of bad videos."})
    msrvtt_train_split: str = field(default="9k", metadata={"help": "msrvtt: the 9k (official) or 7k training split."})

    def processor(self, model_args: ModelArguments, image_size: int) -> HBIProcessor:
        """The model folder's processor, or one built from these options."""
        return load_processor(
            model_args.model_name_or_path,
            image_size,
            tokenizer_name_or_path=model_args.tokenizer_name_or_path,
            max_words=self.max_words,
            max_frames=self.max_frames,
            video_framerate=self.video_framerate,
            frame_sampling=frame_sampling_for(self.dataset, self.frame_sampling, self._annotation_sources()),
        )

    def _annotation_sources(self) -> tuple:
        names = ("annotations", "eval_annotations", "train_annotations")
        return tuple(getattr(self, name) for name in names if getattr(self, name, None) is not None)


@dataclass
class EvaluationCorpusArguments(CorpusArguments):
    eval_annotations: str | None = field(default=None, metadata={"help": "generic: evaluation annotations."})


@dataclass
class TrainingCorpusArguments(EvaluationCorpusArguments):
    train_annotations: str | None = field(
        default=None, metadata={"help": "generic: training annotations, webdataset shards or hub dataset."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the training corpus (then set --max_steps)."})
    augment: bool | None = field(
        default=None, metadata={"help": "Training RandAugment; None: on for msrvtt and generic, as officially."}
    )


@dataclass
class LabelCorpusArguments(CorpusArguments):
    train_annotations: str | None = field(
        default=None, metadata={"help": "generic: the annotations of the pairs to label."}
    )


@dataclass
class ParallelismArguments:
    torch_threads: int | None = field(
        default=None,
        metadata={"help": "torch compute threads; None: chosen with the decoding workers from the cores, so that "
                  "workers + threads <= cores (docs/video_input.md)."},
    )


def configure_parallelism(
    parallelism_args: ParallelismArguments, argv: list[str] | None = None, training_args=None
) -> Parallelism:
    """Chooses and sets torch's threads and, for a training command, `training_args`'
    `dataloader_num_workers`, from the cores: an explicit `--torch_threads` or
    `--dataloader_num_workers` is kept and the other takes the cores left. Evaluation inside the
    command decodes in the cores the threads leave free (`encode_clips`)."""
    argv = sys.argv[1:] if argv is None else argv
    workers = None
    if training_args is not None and any(arg.split("=")[0] == "--dataloader_num_workers" for arg in argv):
        workers = training_args.dataloader_num_workers
    chosen = apply_parallelism(choose_parallelism(workers, parallelism_args.torch_threads,
                                                  accelerator=torch.cuda.is_available()))
    if training_args is not None:
        training_args.dataloader_num_workers = chosen.workers
    return chosen


def parse_with_recipe(parser: HfArgumentParser, argv: list[str] | None) -> tuple[tuple, Recipe | None]:
    """Parses `argv` into the parser's dataclasses after making the values of `--recipe NAME` (a
    published run, see `hbi_transformers.training.recipes`) their defaults: options given
    explicitly override them. A recipe's global batch is split over the processes of the run."""
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES), default=None,
        help="A published run: sets every value of its official command (data, model and training "
             "options), which explicit options override.",
    )
    # The recipe is read first: its values must be defaults before the real parse.
    first_pass = argparse.ArgumentParser(add_help=False)
    first_pass.add_argument("--recipe", choices=sorted(RECIPES), default=None)
    recipe_name = first_pass.parse_known_args(argv)[0].recipe
    recipe = RECIPES[recipe_name] if recipe_name else None
    if recipe is not None:
        destinations = {action.dest for action in parser._actions}
        defaults = {name: value for name, value in recipe.values.items() if name in destinations}
        if "per_device_train_batch_size" in destinations:
            defaults["per_device_train_batch_size"] = per_process_batch_size(recipe, int(os.environ.get("WORLD_SIZE", 1)))
        parser.set_defaults(**defaults)
    *dataclasses, _ = parser.parse_args_into_dataclasses(args=argv)
    return tuple(dataclasses), recipe


def save_resolved_options(output_dir: str, recipe: Recipe | None, *dataclasses) -> None:
    """Logs and writes `recipe.json` in `output_dir`: the recipe and every option's resolved value."""
    resolved = {"recipe": None if recipe is None else recipe.name,
                "recipe_source": None if recipe is None else recipe.source}
    for options in dataclasses:
        values = options.to_dict() if hasattr(options, "to_dict") else asdict(options)
        resolved.update({key: value for key, value in values.items() if not key.startswith("_")})
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    text = json.dumps(resolved, indent=2, default=str)
    Path(output_dir, RECIPE_FILE).write_text(text)
    if recipe is not None:
        logger.warning(f"recipe {recipe.name} ({recipe.source}); resolved options in {Path(output_dir, RECIPE_FILE)}")
