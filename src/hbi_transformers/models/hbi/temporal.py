"""Temporal modules: let each frame embedding see the other frames of its video."""

import copy

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers.models.clip.modeling_clip import CLIPEncoder

from .configuration_hbi import HBIConfig

# Additive attention bias of padding frames in the official temporal transformer.
PADDING_FRAME_BIAS = -1e6


def temporal_encoder_config(config: HBIConfig):
    """A CLIP text-encoder config for the temporal transformer: the text layers' shape (so they can
    initialise it) at the joint embedding size, with the official TF-style LayerNorm epsilon."""
    temporal_config = copy.deepcopy(config.text_config)
    temporal_config.hidden_size = config.projection_dim
    temporal_config.num_hidden_layers = config.temporal_num_layers
    temporal_config.layer_norm_eps = config.temporal_layer_norm_eps
    temporal_config.attention_dropout = 0.0
    return temporal_config


class TemporalTransformer(nn.Module):
    """`seqTransf`: learned frame position embeddings, a non-causal CLIP transformer over frames
    (padding frames masked as keys), then a residual add of the input frame embeddings."""

    def __init__(self, config: HBIConfig):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(
            config.text_config.max_position_embeddings, config.projection_dim
        )
        self.encoder = CLIPEncoder(temporal_encoder_config(config))

    def forward(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        num_frames = frames.shape[1]
        if num_frames > self.frame_position_embeddings.num_embeddings:
            raise ValueError(
                f"{num_frames} frames exceed the {self.frame_position_embeddings.num_embeddings} frame "
                "positions of the temporal module"
            )
        positions = torch.arange(num_frames, device=frames.device)
        hidden = frames + self.frame_position_embeddings(positions)[None]
        key_bias = (1.0 - video_mask.to(frames.dtype)) * PADDING_FRAME_BIAS
        attention_bias = key_bias[:, None, None, :].expand(-1, 1, num_frames, -1)
        hidden = self.encoder(inputs_embeds=hidden, attention_mask=attention_bias).last_hidden_state
        return hidden + frames


class TemporalLSTM(nn.Module):
    """`seqLSTM`: an LSTM over the valid frames plus a residual, reproducing the official
    padding behaviour (positions past the longest video in the batch keep twice their input)."""

    def __init__(self, config: HBIConfig):
        super().__init__()
        self.lstm = nn.LSTM(config.projection_dim, config.projection_dim, batch_first=True)

    def forward(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        lengths = video_mask.sum(dim=-1).long().cpu()
        packed = pack_padded_sequence(frames, lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True)
        hidden = torch.cat([hidden, frames[:, hidden.shape[1] :]], dim=1)
        return hidden + frames


class IdentityTemporal(nn.Module):
    """`meanP` / `none`: frame embeddings unchanged (the official code does nothing for either)."""

    def forward(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        return frames


def build_temporal_module(config: HBIConfig) -> nn.Module:
    if config.temporal_module == "seqTransf":
        return TemporalTransformer(config)
    if config.temporal_module == "seqLSTM":
        return TemporalLSTM(config)
    return IdentityTemporal()
