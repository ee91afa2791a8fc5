"""The loading layer every command shares: models, processors, teachers and corpora from plain
arguments (names, paths, numbers), and result files written the same way by every command."""

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from ..data import AnnotationReport, is_prepared_corpus, load_video_text_dataset, read_activitynet, read_didemo, read_msrvtt
from ..data.prepared import read_manifest
from ..models.hbi import HBIConfig, HBIForVideoQuestionAnswering, HBIModel, HBIProcessor, HBIVideoProcessor
from ..models.hbi.configuration_hbi import VIDEO_QA_SETTINGS, answer_label_maps, config_with_answers, video_qa_config
from ..models.hbi.convert_hbi_original_to_hf import load_estimator_state_dict

OFFICIAL_DATASETS = {"msrvtt": read_msrvtt, "activitynet": read_activitynet, "didemo": read_didemo}
# The official loaders' evaluation splits.
OFFICIAL_EVAL_SPLIT = {"msrvtt": "test", "activitynet": "val", "didemo": "test"}
# Paragraph-retrieval corpora sample one frame per whole second (docs/video_input.md).
PER_SECOND_DATASETS = ("activitynet", "didemo")


def default_device(device: str | None = None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def is_hbi_checkpoint(name_or_path: str) -> bool:
    """Whether `name_or_path` (folder or hub name) holds an HBI model, rather than a CLIP one."""
    config_file = Path(name_or_path) / "config.json"
    if config_file.exists():
        return json.loads(config_file.read_text()).get("model_type") == HBIConfig.model_type
    try:
        return AutoConfig.from_pretrained(name_or_path).model_type == HBIConfig.model_type
    except (OSError, ValueError):
        return False


def load_teacher(model: HBIModel | HBIForVideoQuestionAnswering, estimator: str | None) -> None:
    """Loads a Banzhaf estimator file (ours or official) into the model's frozen teacher."""
    if estimator is not None:
        model.base_model.banzhaf_teacher.load_state_dict(load_estimator_state_dict(estimator))


def load_model(name_or_path: str, estimator: str | None = None, **config_overrides) -> HBIModel:
    """A retrieval model: an HBI folder or hub name as saved, or a fresh HBI from a transformers
    CLIP checkpoint; `config_overrides` set HBI hyper-parameters; `estimator` fills the teacher."""
    if is_hbi_checkpoint(name_or_path):
        model = HBIModel.from_pretrained(name_or_path, **config_overrides)
    else:
        model = HBIModel.from_clip_pretrained(name_or_path, **config_overrides)
    load_teacher(model, estimator)
    return model


def load_qa_model(
    name_or_path: str, answers: str | None = None, estimator: str | None = None, **config_overrides
) -> HBIForVideoQuestionAnswering:
    """A question answering model: a QA folder as saved (its answer vocabulary must equal
    `answers` when given); a retrieval folder with the official QA settings and fresh answer
    heads; or a fresh model from a CLIP checkpoint (`answers` needed for both)."""
    if is_hbi_checkpoint(name_or_path):
        config = HBIConfig.from_pretrained(name_or_path)
        is_qa_model = HBIForVideoQuestionAnswering.__name__ in (config.architectures or [])
        if answers is not None:
            answered = config_with_answers(config, answers)
            if is_qa_model and answered.label2id != config.label2id:
                raise ValueError(f"{name_or_path} was trained for another answer vocabulary than {answers}")
            config = answered
        elif not is_qa_model:
            raise ValueError(f"{name_or_path} is a retrieval model: give its answer vocabulary with --answers")
        if is_qa_model:
            config = HBIConfig.from_dict({**config.to_dict(), **config_overrides})
        else:
            config = video_qa_config(config, **config_overrides)
        model = HBIForVideoQuestionAnswering.from_pretrained(name_or_path, config=config)
    else:
        if answers is None:
            raise ValueError(f"starting from the CLIP checkpoint {name_or_path} needs the answer vocabulary: give --answers")
        model = HBIForVideoQuestionAnswering.from_clip_pretrained(
            name_or_path, **{**VIDEO_QA_SETTINGS, **answer_label_maps(answers), **config_overrides}
        )
    load_teacher(model, estimator)
    return model


def load_processor(
    model_name_or_path: str,
    image_size: int,
    tokenizer_name_or_path: str | None = None,
    max_words: int = 24,
    max_frames: int = 12,
    video_framerate: float = 1.0,
    frame_sampling: str = "fps",
) -> HBIProcessor:
    """The processor saved with an HBI model folder, or one built from these settings for frames
    of `image_size` pixels (the vision tower's) with the tokenizer of `tokenizer_name_or_path`
    (default: the model's)."""
    if (Path(model_name_or_path) / "processor_config.json").exists() and tokenizer_name_or_path is None:
        return HBIProcessor.from_pretrained(model_name_or_path)
    video_processor = HBIVideoProcessor(
        max_frames=max_frames,
        video_framerate=video_framerate,
        frame_sampling=frame_sampling,
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    tokenizer_name = tokenizer_name_or_path or model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    if len(tokenizer) < 3:
        # Offline, a hub name can come back as an empty shell tokenizer instead of an error.
        raise ValueError(
            f"the tokenizer of {tokenizer_name} has {len(tokenizer)} tokens: build one with hbi-build-tokenizer "
            "and pass its folder as the tokenizer"
        )
    return HBIProcessor(video_processor, tokenizer, max_words=max_words)


def load_model_and_processor(
    model_name_or_path: str, tokenizer_name_or_path: str | None = None, device: str | None = None
) -> tuple[HBIModel, HBIProcessor]:
    """A saved retrieval model in evaluation mode on `device`, with its processor."""
    model = HBIModel.from_pretrained(model_name_or_path)
    model.to(default_device(device)).eval()
    processor = load_processor(model_name_or_path, model.config.vision_config.image_size, tokenizer_name_or_path)
    return model, processor


def frame_sampling_for(dataset: str, frame_sampling: str | None = None, annotations: tuple = ()) -> str:
    """The sampling rule a corpus uses unless one is given: that of a prepared-frame corpus among
    `annotations`, else per second for ActivityNet / DiDeMo."""
    if frame_sampling:
        return frame_sampling
    for source in annotations:
        if is_prepared_corpus(source):
            return read_manifest(source)["settings"]["frame_sampling"]
    return "per_second" if dataset in PER_SECOND_DATASETS else "fps"


def load_corpus(
    dataset: str,
    split: str,
    annotations: str | None = None,
    annotations_dir: str | None = None,
    video_root: str | None = None,
    streaming: bool = False,
    max_bad_fraction: float = 1.0,
    msrvtt_train_split: str = "9k",
    hub_split: str = "train",
):
    """Records (or a streamed dataset) of one split, "train" or "eval": of an official dataset
    (`dataset` msrvtt, activitynet or didemo, from `annotations_dir`), or for "generic" of
    `annotations` (annotation file, webdataset shards, prepared-frame corpus folder, or hub
    dataset, of which `hub_split`). None when a generic split has no annotations. Captions that fail the annotation checks are skipped and counted; more
    than `max_bad_fraction` of them stops here, before any training."""
    report = AnnotationReport()
    if dataset in OFFICIAL_DATASETS:
        if annotations_dir is None or video_root is None:
            raise ValueError(f"--dataset {dataset} needs --annotations_dir and --video_root")
        official_split = "train" if split == "train" else OFFICIAL_EVAL_SPLIT[dataset]
        options = {"train_split": msrvtt_train_split} if dataset == "msrvtt" else {}
        corpus = OFFICIAL_DATASETS[dataset](official_split, annotations_dir, video_root, report=report, **options)
    elif dataset != "generic":
        raise ValueError(f"unknown --dataset {dataset!r}: generic, {', '.join(OFFICIAL_DATASETS)}")
    elif annotations is None:
        return None
    else:
        corpus = load_video_text_dataset(annotations, video_root=video_root, streaming=streaming, split=hub_split,
                                         annotation_report=report)
    if report.skipped_fraction > max_bad_fraction:
        raise ValueError(
            f"{report.summary()}: {report.skipped_fraction:.1%} of the captions, over max_bad_fraction="
            f"{max_bad_fraction:.1%}: fix the annotations, or raise max_bad_fraction"
        )
    return corpus


def write_metrics(metrics: dict, output_dir: str, name: str, format_table: Callable[[dict], str]) -> None:
    """`name.json` and `name.txt` (the table `format_table` draws) in `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    Path(output_dir, f"{name}.json").write_text(json.dumps(metrics, indent=2))
    unprefixed = {key.removeprefix("eval_"): value for key, value in metrics.items()}
    Path(output_dir, f"{name}.txt").write_text(format_table(unprefixed) + "\n")
