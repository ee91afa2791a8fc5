"""Command-line options shared by several commands, as dataclasses for `HfArgumentParser`. Each
command combines only the ones it uses, so that its `--help` lists only its own options."""

from dataclasses import dataclass, field

from ..models.hbi import HBIProcessor
from .loading import frame_sampling_for, load_processor


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

    def processor(self, model_args: ModelArguments, image_size: int) -> HBIProcessor:
        """The model folder's processor, or one built from these options."""
        return load_processor(
            model_args.model_name_or_path,
            image_size,
            tokenizer_name_or_path=model_args.tokenizer_name_or_path,
            max_words=self.max_words,
            max_frames=self.max_frames,
            video_framerate=self.video_framerate,
            frame_sampling=frame_sampling_for(self.dataset, self.frame_sampling),
        )


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
