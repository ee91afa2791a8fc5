"""HBI as transformers keeps a model: configuration, modeling (retrieval and video question
answering), the processors, video decoding and the converter of the official checkpoints. These
modules import nothing else from hbi_transformers: they are the remote code that every saved or
pushed model carries."""

from .configuration_hbi import HBIConfig, config_with_answers, video_qa_config
from .modeling_hbi import HBIModel, HBIOutput, HBIPreTrainedModel, HBISimilarityOutput, HBITextOutput, HBIVideoOutput
from .modeling_hbi_qa import HBIForVideoQuestionAnswering, HBIVideoQuestionAnsweringOutput
from .processing_hbi import HBIProcessor
from .video_io import DecodedVideo, VideoDecodingError, read_video
from .video_processing_hbi import HBIVideoProcessor

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
    "VideoDecodingError",
    "config_with_answers",
    "read_video",
    "video_qa_config",
]
