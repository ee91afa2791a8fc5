"""HBI for video question answering (docs/video_qa.md): the HBI retrieval body, trained with its own
objective, plus one answer classifier per level of the hierarchy. Officially MSRVTT-QA, with CLIP
ViT-B/16 and 1500 answers."""

from collections import OrderedDict
from dataclasses import dataclass
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .configuration_hbi import LEVEL_NAMES, OUT_OF_VOCABULARY_LABEL, HBIConfig
from .losses import gather_from_all_processes, kl_divergence, same_video_targets
from .modeling_hbi import HBIModel, HBIPreTrainedModel, HBITextOutput, HBIVideoOutput
from .wti import LevelTokens, weighted_token_interaction


@dataclass
class HBIVideoQuestionAnsweringOutput(ModelOutput):
    """Output of [`HBIForVideoQuestionAnswering`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned with `labels`):
            The QA objective (docs/video_qa.md) over the (global) batch.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Answer logits: the levels' logits weighted by `config.qa_level_weights`.
        level_logits (`tuple(torch.FloatTensor)`):
            Entity, action and event answer logits, each `(batch_size, num_labels)`.
        loss_terms (`dict[str, torch.FloatTensor]`, *optional*):
            The loss's parts, detached, for logging: the retrieval terms of `HBIModel.hbi_loss`,
            `answer_{entity,action,event}` (cross-entropy) and `answer_distillation`.
        text_model_output, vision_model_output (`HBITextOutput`, `HBIVideoOutput`):
            the towers' outputs (hidden states and attentions when asked), as in `HBIOutput`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    level_logits: tuple[torch.FloatTensor, ...] | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    text_model_output: HBITextOutput | None = None
    vision_model_output: HBIVideoOutput | None = None

    def to_tuple(self) -> tuple:
        return tuple(
            self[key].to_tuple() if key in ("text_model_output", "vision_model_output") else self[key]
            for key in self.keys()
        )


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

    def forward(self, text: LevelTokens, video: LevelTokens) -> torch.Tensor:
        """One level's answer logits from its question and frame tokens before normalisation."""
        video = self.video_projection(self.video_pooling(video.features, video.mask))
        text = self.text_projection(self.text_pooling(text.features, text.mask))
        return self.classifier(self.dropout(torch.cat([video, text], dim=-1)))


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the questions whose answer is in the vocabulary; questions labelled
    `OUT_OF_VOCABULARY_LABEL` are left out (0 when none is left). The official training set holds
    only answers of the vocabulary (its loader fails on any other), so there they never occur."""
    total = F.cross_entropy(logits, labels, ignore_index=OUT_OF_VOCABULARY_LABEL, reduction="sum")
    return total / (labels != OUT_OF_VOCABULARY_LABEL).sum().clamp(min=1)


class HBIForVideoQuestionAnswering(HBIPreTrainedModel):
    """HBI for video question answering: the retrieval body [`HBIModel`] (CLIP towers, temporal
    module, hierarchy, Banzhaf estimators) under `hbi`, plus one [`AnswerHead`] per level, applied
    to that level's question tokens and frame tokens (before normalisation). A retrieval
    checkpoint initialises the body; see docs/video_qa.md and [`video_qa_config`] for the official
    MSRVTT-QA settings; the answers are `config.id2label`.

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
        self.hbi = HBIModel(config)
        self.answer_heads = nn.ModuleList(
            AnswerHead(config.projection_dim, config.num_labels, config.qa_dropout) for _ in LEVEL_NAMES
        )
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            # The official QA model creates its merge blocks before its init pass, which then draws
            # their score layer as every Linear; retrieval creates them after it (torch's default).
            for level in self.hbi.levels[1:]:
                for merge in (level.text_merge.merge, level.video_merge.merge):
                    init.normal_(merge.score.weight, std=self.config.initializer_range)
                    init.zeros_(merge.score.bias)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # with output_loading_info
        # Loading replaces parameters with trainable ones; the teacher estimator stays frozen.
        model.hbi.banzhaf_teacher.requires_grad_(False)
        return loaded

    @classmethod
    def from_clip_pretrained(cls, clip_name_or_path: str, **hbi_kwargs) -> "HBIForVideoQuestionAnswering":
        """A fresh QA model whose body starts from a transformers CLIP checkpoint (see
        [`HBIModel.from_clip_pretrained`]); the answer heads are freshly initialised."""
        body = HBIModel.from_clip_pretrained(clip_name_or_path, **hbi_kwargs)
        model = cls(body.config)
        model.hbi.load_state_dict(body.state_dict())
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.hbi.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.hbi.set_input_embeddings(value)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          **kwargs: Unpack[TransformersKwargs]) -> HBITextOutput:
        """[`HBIModel.get_text_features`] of the body."""
        return self.hbi.get_text_features(input_ids, attention_mask, **kwargs)

    def get_video_features(self, pixel_values_videos: torch.Tensor, video_mask: torch.Tensor | None = None,
                           **kwargs: Unpack[TransformersKwargs]) -> HBIVideoOutput:
        """[`HBIModel.get_video_features`] of the body."""
        return self.hbi.get_video_features(pixel_values_videos, video_mask, **kwargs)

    def _answer_logits(self, text_levels: list[LevelTokens], video_levels: list[LevelTokens]) -> list[torch.Tensor]:
        return [head(text, video) for head, text, video in zip(self.answer_heads, text_levels, video_levels)]

    def _weighted_logits(self, level_logits: list[torch.Tensor]) -> torch.Tensor:
        return sum(weight * logits for weight, logits in zip(self.config.qa_level_weights, level_logits))

    def _walk(self, text_embeds, text_mask, video_embeds, video_mask) -> tuple[list[LevelTokens], list[LevelTokens]]:
        # Questions and videos merged level by level, questions first, as officially, so that a
        # seeded run draws the clustering noise in the official order.
        return tuple(self.hbi.walk_levels(("text", text_embeds, text_mask), ("video", video_embeds, video_mask)))

    def compute_answer_logits(
        self, text_outputs: HBITextOutput, video_outputs: HBIVideoOutput
    ) -> HBIVideoQuestionAnsweringOutput:
        """Answer logits of question i about video i from `get_text_features` /
        `get_video_features` outputs, so that evaluation can encode each video once and repeat its
        embeddings for each of its questions."""
        with self._without_autocast():
            text_levels, video_levels = self._walk(
                text_outputs.text_embeds, text_outputs.attention_mask, video_outputs.video_embeds, video_outputs.video_mask
            )
            level_logits = self._answer_logits(text_levels, video_levels)
        return HBIVideoQuestionAnsweringOutput(logits=self._weighted_logits(level_logits), level_logits=tuple(level_logits))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        video_index: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
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
        kwargs: `output_hidden_states`, `output_attentions` (of both towers) and `return_dict`.
        """
        if input_ids is None or pixel_values_videos is None:
            raise ValueError("video question answering needs questions (input_ids) and videos (pixel_values_videos)")
        if return_loss is None:
            return_loss = labels is not None
        if return_loss and labels is None:
            raise ValueError("the video question answering loss needs labels")
        if input_ids.shape[0] != pixel_values_videos.shape[0]:
            raise ValueError(
                f"question i is about video i: got {input_ids.shape[0]} questions and "
                f"{pixel_values_videos.shape[0]} videos"
            )
        text_outputs = self.get_text_features(input_ids, attention_mask, return_dict=True, **kwargs)
        video_outputs = self.get_video_features(pixel_values_videos, video_mask, return_dict=True, **kwargs)
        text_embeds, text_mask = text_outputs.text_embeds, text_outputs.attention_mask
        video_embeds, video_mask = video_outputs.video_embeds, video_outputs.video_mask
        if return_loss:
            # As officially, the loss sees the global batch: every process's pairs are negatives.
            text_embeds, text_mask, video_embeds, video_mask, labels = (
                gather_from_all_processes(tensor) for tensor in (text_embeds, text_mask, video_embeds, video_mask, labels)
            )
            if video_index is not None:
                video_index = gather_from_all_processes(video_index)
        # Like the retrieval heads, the answer heads and the loss run in float32 under mixed precision.
        with self._without_autocast():
            text_levels, video_levels = self._walk(text_embeds, text_mask, video_embeds, video_mask)
            level_logits = self._answer_logits(text_levels, video_levels)

            loss = loss_terms = None
            if return_loss:
                loss, loss_terms = self.video_qa_loss(level_logits, labels, text_levels, video_levels, video_index)
            logits = self._weighted_logits(level_logits)
        return HBIVideoQuestionAnsweringOutput(
            loss=loss,
            logits=logits,
            level_logits=tuple(level_logits),
            loss_terms=loss_terms,
            text_model_output=text_outputs,
            vision_model_output=video_outputs,
        )

    def video_qa_loss(
        self,
        level_logits: list[torch.Tensor],
        labels: torch.Tensor,
        text_levels: list[LevelTokens],
        video_levels: list[LevelTokens],
        video_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The QA objective (docs/video_qa.md) over a batch where question i is about video i:
        half the retrieval objective of `HBIModel.hbi_loss` (per level InfoNCE +
        `banzhaf_kl_weight` x Banzhaf KL, plus `distillation_kl_weight` x the similarity
        self-distillation, 0 in the official QA settings), plus each level's answer
        cross-entropy, plus `qa_distillation_kl_weight` x [KL(action, entity) + KL(event, entity)]
        on the answer logits (`kl_divergence`: targets not detached, as officially)."""
        level_similarities = [weighted_token_interaction(text, video) for text, video in zip(text_levels, video_levels)]
        targets = None
        if self.config.same_video_positives and video_index is not None:
            targets = same_video_targets(video_index)
        retrieval_loss, terms = self.hbi.hbi_loss(level_similarities, text_levels, video_levels, targets)

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
