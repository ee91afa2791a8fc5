"""HBI for video question answering (spec section 7): the HBI retrieval model, trained with its own
objective, plus one answer classifier per level of the hierarchy. Officially MSRVTT-QA, with CLIP
ViT-B/16 and 1500 answers."""

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_hbi import LEVEL_NAMES, OUT_OF_VOCABULARY_LABEL, HBIConfig
from .wti import LevelTokens, l2_normalize, weighted_token_interaction
from .losses import gather_from_all_processes, kl_divergence, same_video_targets
from .modeling_hbi import HBIModel, HBITextOutput, HBIVideoOutput
from .token_merging import TokenClusterMerge


@dataclass
class HBIVideoQuestionAnsweringOutput(ModelOutput):
    """Output of [`HBIForVideoQuestionAnswering`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned with `labels`):
            The QA objective of spec section 7 over the (global) batch.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Answer logits: the levels' logits weighted by `config.qa_level_weights`.
        level_logits (`tuple(torch.FloatTensor)`):
            Entity, action and event answer logits, each `(batch_size, num_labels)`.
        loss_terms (`dict[str, torch.FloatTensor]`, *optional*):
            The loss's parts, detached, for logging: the retrieval terms of `HBIModel.hbi_loss`,
            `answer_{entity,action,event}` (cross-entropy) and `answer_distillation`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    level_logits: tuple[torch.FloatTensor, ...] | None = None
    loss_terms: dict[str, torch.Tensor] | None = None


class LevelFeatures(NamedTuple):
    """One level's question and frame tokens, not normalised, `[batch, tokens, D]`, with their masks
    (None above the entity level: merged tokens are never padding)."""

    text_tokens: torch.Tensor
    text_mask: torch.Tensor | None
    video_tokens: torch.Tensor
    video_mask: torch.Tensor | None


class TokenPooling(nn.Module):
    """One vector per item: the tokens summed with softmax weights from Linear(D, D) -> ReLU ->
    Linear(D, 1). As officially, the weights are NOT masked: padded tokens (given `mask`) are
    zeroed but keep their share of the softmax."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc_in = nn.Linear(dim, dim)
        self.activation = nn.ReLU()
        self.fc_out = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        weights = torch.softmax(self.fc_out(self.activation(self.fc_in(tokens))).squeeze(-1), dim=-1)
        if mask is not None:
            tokens = tokens * mask[..., None].to(tokens.dtype)
        return torch.einsum("btd,bt->bd", tokens, weights)


class AnswerHead(nn.Module):
    """The answer classifier of one level: pooled video and question vectors, each through
    Linear(D, 4D), concatenated as [video, question], dropout, then Linear(8D, 16D) -> ReLU ->
    Linear(16D, num_labels)."""

    def __init__(self, dim: int, num_labels: int, dropout: float):
        super().__init__()
        self.text_pooling = TokenPooling(dim)
        self.video_pooling = TokenPooling(dim)
        self.text_projection = nn.Linear(dim, 4 * dim)
        self.video_projection = nn.Linear(dim, 4 * dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Sequential(
            OrderedDict(fc_in=nn.Linear(8 * dim, 16 * dim), activation=nn.ReLU(), fc_out=nn.Linear(16 * dim, num_labels))
        )

    def forward(self, features: LevelFeatures) -> torch.Tensor:
        video = self.video_projection(self.video_pooling(features.video_tokens, features.video_mask))
        text = self.text_projection(self.text_pooling(features.text_tokens, features.text_mask))
        return self.classifier(self.dropout(torch.cat([video, text], dim=-1)))


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the questions whose answer is in the vocabulary; questions labelled
    `OUT_OF_VOCABULARY_LABEL` are left out (0 when none is left). The official training set holds
    only answers of the vocabulary (its loader fails on any other), so there they never occur."""
    total = F.cross_entropy(logits, labels, ignore_index=OUT_OF_VOCABULARY_LABEL, reduction="sum")
    return total / (labels != OUT_OF_VOCABULARY_LABEL).sum().clamp(min=1)


class HBIForVideoQuestionAnswering(HBIModel):
    """HBI for video question answering: [`HBIModel`] (CLIP towers, temporal module, hierarchy,
    Banzhaf estimators, with the same parameter names, so that a retrieval checkpoint initialises
    it and [`HBITrainer`] trains it unchanged) plus one [`AnswerHead`] per level, applied to that
    level's question tokens and frame tokens (before normalisation). See spec section 7 and
    [`video_qa_config`] for the official MSRVTT-QA settings; the answers are `config.id2label`.

    Example:

    ```python
    >>> config = config_with_answers(video_qa_config(), "train_ans2label.json")
    >>> model = HBIForVideoQuestionAnswering(config)
    >>> outputs = model(**processor(text=questions, videos=videos, return_tensors="pt"))
    >>> [model.config.id2label[label] for label in outputs.logits.argmax(-1).tolist()]
    ```
    """

    def __init__(self, config: HBIConfig):
        super().__init__(config)
        self.answer_heads = nn.ModuleList(
            AnswerHead(config.projection_dim, config.num_labels, config.qa_dropout) for _ in LEVEL_NAMES
        )
        # HBIModel's post_init ran before the answer heads existed; this one initialises only them
        # (transformers skips the modules it has initialised already).
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, TokenClusterMerge):
            # The official QA model creates its merge blocks before its init pass, which then draws
            # their score layer as every Linear; retrieval creates them after it (torch's default).
            init.normal_(module.score.weight, std=self.config.initializer_range)
            init.zeros_(module.score.bias)

    def level_features(self, text_embeds, text_mask, video_embeds, video_mask) -> list[LevelFeatures]:
        """The entity, action and event tokens of a batch of questions and videos: the inputs,
        then each level merged from the one below. Questions and videos are merged level by level,
        questions first, as officially, so that a seeded run draws the clustering noise in the
        official order (it decides the merge of items with fewer valid tokens than
        `cluster_num_neighbors`)."""
        features = [LevelFeatures(text_embeds, text_mask, video_embeds, video_mask)]
        for level in self.levels[1:]:
            below = features[-1]
            features.append(
                LevelFeatures(
                    level.text_merge(below.text_tokens, below.text_mask),
                    None,
                    level.video_merge(below.video_tokens, below.video_mask),
                    None,
                )
            )
        return features

    def _level_tokens(self, features: list[LevelFeatures]) -> tuple[list[LevelTokens], list[LevelTokens]]:
        """Level features made ready for matching, as `HBIModel.text_levels` / `video_levels`."""
        text_levels, video_levels = [], []
        for level, level_features in zip(self.levels, features):
            text, text_mask, video, video_mask = level_features
            text_levels.append(LevelTokens(l2_normalize(text), level.text_weight_head(text, text_mask), text_mask))
            video_levels.append(LevelTokens(l2_normalize(video), level.video_weight_head(video, video_mask), video_mask))
        return text_levels, video_levels

    def _level_answer_logits(self, features: list[LevelFeatures]) -> list[torch.Tensor]:
        return [head(level) for head, level in zip(self.answer_heads, features)]

    def _weighted_logits(self, level_logits: list[torch.Tensor]) -> torch.Tensor:
        return sum(weight * logits for weight, logits in zip(self.config.qa_level_weights, level_logits))

    def compute_answer_logits(
        self, text_outputs: HBITextOutput, video_outputs: HBIVideoOutput
    ) -> HBIVideoQuestionAnsweringOutput:
        """Answer logits of question i about video i from `get_text_features` /
        `get_video_features` outputs, so that evaluation can encode each video once and repeat its
        embeddings for each of its questions."""
        features = self.level_features(
            text_outputs.text_embeds, text_outputs.attention_mask, video_outputs.video_embeds, video_outputs.video_mask
        )
        level_logits = self._level_answer_logits(features)
        return HBIVideoQuestionAnsweringOutput(logits=self._weighted_logits(level_logits), level_logits=tuple(level_logits))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values_videos: torch.Tensor,
        video_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        video_index: torch.Tensor | None = None,
    ) -> HBIVideoQuestionAnsweringOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, words)`): the questions' CLIP token ids.
        attention_mask (`torch.LongTensor` of shape `(batch_size, words)`): 1 for real tokens.
        pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, frames, 3, height, width)`):
            question i is about video i.
        video_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*): 1 for real frames.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): answer labels;
            `OUT_OF_VOCABULARY_LABEL` (-1) for an answer outside the vocabulary, left out of the
            answer cross-entropy.
        return_loss (`bool`, *optional*): compute the loss (needs `labels`); by default, when
            `labels` are given. Under torch.distributed the features and labels of all processes
            are gathered first, so the logits are then those of the global batch.
        video_index (`torch.LongTensor` of shape `(batch_size,)`, *optional*): which video each
            question is about; with `config.same_video_positives`, the questions of one video are
            not each other's negatives in the retrieval terms.
        """
        if return_loss is None:
            return_loss = labels is not None
        if return_loss and labels is None:
            raise ValueError("the video question answering loss needs labels")
        if input_ids.shape[0] != pixel_values_videos.shape[0]:
            raise ValueError(
                f"question i is about video i: got {input_ids.shape[0]} questions and "
                f"{pixel_values_videos.shape[0]} videos"
            )
        text_outputs = self.get_text_features(input_ids, attention_mask)
        video_outputs = self.get_video_features(pixel_values_videos, video_mask)
        text_embeds, text_mask = text_outputs.text_embeds, text_outputs.attention_mask
        video_embeds, video_mask = video_outputs.video_embeds, video_outputs.video_mask
        if return_loss:
            # As officially, the loss sees the global batch: every process's pairs are negatives.
            text_embeds, text_mask, video_embeds, video_mask, labels = (
                gather_from_all_processes(tensor) for tensor in (text_embeds, text_mask, video_embeds, video_mask, labels)
            )
            if video_index is not None:
                video_index = gather_from_all_processes(video_index)
        features = self.level_features(text_embeds, text_mask, video_embeds, video_mask)
        level_logits = self._level_answer_logits(features)

        loss = loss_terms = None
        if return_loss:
            loss, loss_terms = self.video_qa_loss(level_logits, labels, features, video_index)
        return HBIVideoQuestionAnsweringOutput(
            loss=loss, logits=self._weighted_logits(level_logits), level_logits=tuple(level_logits), loss_terms=loss_terms
        )

    def video_qa_loss(
        self,
        level_logits: list[torch.Tensor],
        labels: torch.Tensor,
        features: list[LevelFeatures],
        video_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The QA objective (spec section 7) over a batch where question i is about video i:
        half the retrieval objective of `hbi_loss` (per level InfoNCE + `banzhaf_kl_weight` x
        Banzhaf KL, plus `distillation_kl_weight` x the similarity self-distillation, 0 in the
        official QA settings), plus each level's answer cross-entropy, plus
        `qa_distillation_kl_weight` x [KL(action, entity) + KL(event, entity)] on the answer
        logits (`kl_divergence`: targets not detached, as officially)."""
        text_levels, video_levels = self._level_tokens(features)
        level_similarities = [weighted_token_interaction(text, video) for text, video in zip(text_levels, video_levels)]
        targets = None
        if self.config.same_video_positives and video_index is not None:
            targets = same_video_targets(video_index)
        retrieval_loss, terms = self.hbi_loss(level_similarities, text_levels, video_levels, targets)

        answer_losses = {
            f"answer_{name}": answer_cross_entropy(logits, labels) for name, logits in zip(LEVEL_NAMES, level_logits)
        }
        answer_distillation = sum(kl_divergence(logits, level_logits[0]) for logits in level_logits[1:])
        loss = (
            0.5 * retrieval_loss
            + sum(answer_losses.values())
            + self.config.qa_distillation_kl_weight * answer_distillation
        )
        terms.update({name: value.detach() for name, value in answer_losses.items()})
        terms["answer_distillation"] = answer_distillation.detach()
        return loss, terms

