"""hbi-transformers: Hierarchical Banzhaf Interaction (HBI) for text-video retrieval, as a
Hugging Face transformers model."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
    AutoVideoProcessor,
)

from .apps.search import IndexReport, SearchHit, VideoIndex, build_index, search
from .data import HBIDataCollator, VideoTextRecord, iter_annotations, load_video_text_dataset
from .hub.model_card import render_model_card, write_model_card
from .hub.publishing import write_push_card
from .models.hbi import (
    DecodedVideo,
    HBIConfig,
    HBIForVideoQuestionAnswering,
    HBIModel,
    HBIOutput,
    HBIPreTrainedModel,
    HBIProcessor,
    HBISimilarityOutput,
    HBITextOutput,
    HBIVideoOutput,
    HBIVideoProcessor,
    HBIVideoQuestionAnsweringOutput,
    VideoDecodingError,
    config_with_answers,
    read_video,
    video_qa_config,
)
from .training import HBITrainer, HBITrainingArguments, VideoQATrainingArguments, evaluate_retrieval

AutoConfig.register(HBIConfig.model_type, HBIConfig, exist_ok=True)
AutoModel.register(HBIConfig, HBIModel, exist_ok=True)
# transformers has no video question answering Auto class; this one has the same contract
# (pixels and a question in, answer-vocabulary logits with id2label out).
AutoModelForVisualQuestionAnswering.register(HBIConfig, HBIForVideoQuestionAnswering, exist_ok=True)
AutoVideoProcessor.register(HBIConfig, HBIVideoProcessor, exist_ok=True)
HBIPreTrainedModel.push_card_writer = staticmethod(write_push_card)
AutoProcessor.register(HBIConfig, HBIProcessor, exist_ok=True)
# Saved or pushed models then carry `auto_map` and their code, so that
# `AutoModel.from_pretrained(path, trust_remote_code=True)` works without this package.
HBIConfig.register_for_auto_class()
HBIModel.register_for_auto_class("AutoModel")
HBIForVideoQuestionAnswering.register_for_auto_class("AutoModelForVisualQuestionAnswering")
HBIVideoProcessor.register_for_auto_class("AutoVideoProcessor")
HBIProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "DecodedVideo",
    "HBIConfig",
    "HBIDataCollator",
    "HBITrainer",
    "HBITrainingArguments",
    "VideoQATrainingArguments",
    "VideoTextRecord",
    "evaluate_retrieval",
    "iter_annotations",
    "load_video_text_dataset",
    "HBIForVideoQuestionAnswering",
    "HBIModel",
    "HBIOutput",
    "HBIPreTrainedModel",
    "HBIProcessor",
    "HBISimilarityOutput",
    "HBITextOutput",
    "HBIVideoOutput",
    "HBIVideoProcessor",
    "HBIVideoQuestionAnsweringOutput",
    "IndexReport",
    "SearchHit",
    "VideoDecodingError",
    "VideoIndex",
    "build_index",
    "config_with_answers",
    "read_video",
    "render_model_card",
    "search",
    "video_qa_config",
    "write_model_card",
]
