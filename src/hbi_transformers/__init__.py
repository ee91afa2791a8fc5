"""hbi-transformers: Hierarchical Banzhaf Interaction (HBI) for text-video retrieval, as a
Hugging Face transformers model."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
    AutoVideoProcessor,
)

from .models.hbi.configuration_hbi import HBIConfig, config_with_answers, video_qa_config
from .models.hbi.modeling_hbi import (
    HBIModel,
    HBIOutput,
    HBIPreTrainedModel,
    HBISimilarityOutput,
    HBITextOutput,
    HBIVideoOutput,
)
from .hub.model_card import render_model_card, write_model_card
from .models.hbi.modeling_hbi_qa import HBIForVideoQuestionAnswering, HBIVideoQuestionAnsweringOutput
from .models.hbi.processing_hbi import HBIProcessor, HBIVideoProcessor
from .apps.search import IndexReport, SearchHit, VideoIndex, build_index, search
from .models.hbi.video_io import DecodedVideo, VideoDecodingError, read_video

AutoConfig.register(HBIConfig.model_type, HBIConfig, exist_ok=True)
AutoModel.register(HBIConfig, HBIModel, exist_ok=True)
# transformers has no video question answering Auto class; this one has the same contract
# (pixels and a question in, answer-vocabulary logits with id2label out).
AutoModelForVisualQuestionAnswering.register(HBIConfig, HBIForVideoQuestionAnswering, exist_ok=True)
AutoVideoProcessor.register(HBIConfig, HBIVideoProcessor, exist_ok=True)
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
