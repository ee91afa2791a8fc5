"""The network that estimates Banzhaf interaction maps (docs/banzhaf.md).

Players are the words and the frames of a matched text-video pair; the Banzhaf interaction of
word i and frame j measures how much more they contribute to the pair's similarity together than
apart. HBI trains one student estimator per level against a frozen, pre-trained teacher; the
labels the teacher is pre-trained on are computed in `hbi_transformers.training.banzhaf_labels`.
"""

import torch
import torch.nn.functional as F
from torch import nn


class BanzhafEstimator(nn.Module):
    """Predicts a `[words, frames]` Banzhaf interaction map from a word-frame similarity map.

    Conv3x3(1 -> width) -> ReLU -> unscaled self-attention over all word-frame positions with
    learned `query`, `key`, `value` matrices, residual -> Conv3x3(width -> 1), as the official
    `BanzhafModule` (whose unused BatchNorm is left out).
    """

    def __init__(self, width: int = 64):
        super().__init__()
        self.width = width
        self.conv_in = nn.Conv2d(1, width, kernel_size=3, padding=1)
        self.activation = nn.ReLU()
        self.query = nn.Parameter(torch.empty(width, width))
        self.key = nn.Parameter(torch.empty(width, width))
        self.value = nn.Parameter(torch.empty(width, width))
        self.conv_out = nn.Conv2d(width, 1, kernel_size=3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init of the attention matrices (the convolutions keep torch's default)."""
        for matrix in (self.query, self.key, self.value):
            nn.init.xavier_uniform_(matrix, gain=1.414)

    def forward(self, similarity_map: torch.Tensor) -> torch.Tensor:
        """`similarity_map` `[batch, words, frames]` -> interaction map of the same shape."""
        if similarity_map.dim() != 3:
            raise ValueError(
                f"BanzhafEstimator expects a [batch, words, frames] map, got shape {tuple(similarity_map.shape)}"
            )
        batch_size, num_words, num_frames = similarity_map.shape
        hidden = self.activation(self.conv_in(similarity_map[:, None]))
        positions = hidden.flatten(2).transpose(1, 2)
        query, key, value = positions @ self.query, positions @ self.key, positions @ self.value
        attended = F.scaled_dot_product_attention(query, key, value, scale=1.0)
        hidden = hidden + attended.transpose(1, 2).reshape(batch_size, self.width, num_words, num_frames)
        return self.conv_out(hidden)[:, 0]
