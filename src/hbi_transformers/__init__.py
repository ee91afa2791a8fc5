"""hbi-transformers: Hierarchical Banzhaf Interaction (HBI) for text-video retrieval, as a
Hugging Face transformers model."""

from transformers import AutoConfig, AutoModel

from .configuration_hbi import HBIConfig
from .modeling_hbi import (
    HBIModel,
    HBIOutput,
    HBIPreTrainedModel,
    HBISimilarityOutput,
    HBITextOutput,
    HBIVideoOutput,
)

AutoConfig.register(HBIConfig.model_type, HBIConfig, exist_ok=True)
AutoModel.register(HBIConfig, HBIModel, exist_ok=True)
# Saved or pushed models then carry `auto_map` and their code, so that
# `AutoModel.from_pretrained(path, trust_remote_code=True)` works without this package.
HBIConfig.register_for_auto_class()
HBIModel.register_for_auto_class("AutoModel")

__all__ = [
    "HBIConfig",
    "HBIModel",
    "HBIOutput",
    "HBIPreTrainedModel",
    "HBISimilarityOutput",
    "HBITextOutput",
    "HBIVideoOutput",
]
