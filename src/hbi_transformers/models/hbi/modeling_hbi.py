"""HBI: Hierarchical Banzhaf Interaction for text-video retrieval, as a transformers model."""

import math
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers import CLIPModel, CLIPTextModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging

from .banzhaf_estimator import BanzhafEstimator
from .configuration_hbi import LEVEL_NAMES, HBIConfig
from .wti import (
    LevelTokens,
    TokenWeightHead,
    chunked_weighted_token_interaction,
    l2_normalize,
    matched_word_frame_similarity,
    weighted_token_interaction,
)
from .losses import (
    banzhaf_kl,
    gather_from_all_processes,
    kl_divergence,
    same_video_targets,
    symmetric_info_nce,
)
from .temporal import TemporalLSTM, TemporalTransformer, build_temporal_module
from .token_merging import MergedTokenAttention, TokenClusterMerge, TokenMergeBlock

logger = logging.get_logger(__name__)

# The official evaluation merges tokens in mini-batches of 32 items; clustering of items with
# fewer valid tokens than `cluster_num_neighbors` depends on the group they are merged in.
OFFICIAL_MERGE_GROUP_SIZE = 32
# Items per batch when a gallery's items are merged in batches of similar length.
SORTED_MERGE_BATCH = 64


@dataclass
class HBITextOutput(BaseModelOutputWithPooling):
    """The text tower's output and the token-level text embeddings HBI scores with.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, words, text_hidden_size)`):
            The text tower's final-LayerNorm output.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            CLIP's sentence embedding: the end-of-text token through the text projection (HBI's
            own scores are token-level and do not use it).
        hidden_states, attentions: the text tower's, with `output_hidden_states` /
            `output_attentions`.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, words, projection_dim)`):
            Every position's final-LayerNorm output through the text projection (not normalised).
        attention_mask (`torch.LongTensor` of shape `(batch_size, words)`):
            1 for real tokens, 0 for padding.
    """

    text_embeds: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None


@dataclass
class HBIVideoOutput(BaseModelOutputWithPooling):
    """The vision tower's output over each frame and the frame-level video embeddings HBI scores with.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, frames, patches + 1, vision_hidden_size)`):
            The vision tower's last layer on every frame.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            The mean of the real frames' `video_embeds`: one vector per video (HBI's own scores are
            frame-level and do not use it).
        hidden_states, attentions: the vision tower's, with `output_hidden_states` /
            `output_attentions`, each shaped `(batch_size, frames, ...)`.
        video_embeds (`torch.FloatTensor` of shape `(batch_size, frames, projection_dim)`):
            Frame embeddings after the temporal module (not normalised).
        video_mask (`torch.LongTensor` of shape `(batch_size, frames)`):
            1 for real frames, 0 for padding.
        frame_embeds (`torch.FloatTensor` of shape `(batch_size, frames, projection_dim)`):
            Per-frame CLIP embeddings before the temporal module.
    """

    video_embeds: torch.FloatTensor | None = None
    video_mask: torch.LongTensor | None = None
    frame_embeds: torch.FloatTensor | None = None


@dataclass
class HBISimilarityOutput(ModelOutput):
    """Scores of every text against every video.

    Args:
        logits_per_text (`torch.FloatTensor` of shape `(n_text, n_video)`):
            Level-weighted similarity times `exp(logit_scale)`.
        logits_per_video (`torch.FloatTensor` of shape `(n_video, n_text)`):
            Its transpose.
        level_logits_per_text (`tuple(torch.FloatTensor)`):
            Entity, action and event similarity matrices (those scored), scaled the same way.
    """

    logits_per_text: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    level_logits_per_text: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class HBIOutput(ModelOutput):
    """Output of [`HBIModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss` is True):
            The HBI training objective: per level symmetric InfoNCE plus the Banzhaf KL, plus the
            self-distillation of the action and event levels towards the entity level.
        logits_per_text (`torch.FloatTensor` of shape `(n_text, n_video)`):
            Level-weighted similarity (weights `config.level_weights`) times `exp(logit_scale)`.
        logits_per_video (`torch.FloatTensor` of shape `(n_video, n_text)`):
            Its transpose.
        level_logits_per_text (`tuple(torch.FloatTensor)`):
            Entity, action and event similarity matrices, scaled the same way.
        text_embeds (`torch.FloatTensor` of shape `(n_text, words, projection_dim)`):
            Token-level text embeddings.
        video_embeds (`torch.FloatTensor` of shape `(n_video, frames, projection_dim)`):
            Frame-level video embeddings after the temporal module.
        loss_terms (`dict[str, torch.FloatTensor]`, *optional*):
            The loss's parts, detached, for logging.
        text_model_output (`HBITextOutput`):
            `get_text_features`'s output (the text tower's hidden states and attentions when asked).
        vision_model_output (`HBIVideoOutput`):
            `get_video_features`'s output (the vision tower's hidden states and attentions when asked).
        text_levels, video_levels (`tuple(LevelTokens)`, *optional*, returned with `output_levels=True`):
            Entity, action and event tokens of each side, their weights and, above the entity
            level, `cluster_index`: which merged token each token of the level below went into.
    """

    loss: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    level_logits_per_text: tuple[torch.FloatTensor, ...] | None = None
    text_embeds: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    text_model_output: HBITextOutput | None = None
    vision_model_output: HBIVideoOutput | None = None
    text_levels: tuple[LevelTokens, ...] | None = None
    video_levels: tuple[LevelTokens, ...] | None = None

    def to_tuple(self) -> tuple:
        return tuple(
            self[key].to_tuple() if key in ("text_model_output", "vision_model_output") else self[key]
            for key in self.keys()
        )


class HBILevel(nn.Module):
    """One level of the hierarchy: how its tokens are made (merging from the level below, except
    at the entity level), weighted, and how its Banzhaf maps are predicted."""

    def __init__(self, config: HBIConfig, text_merge_ratio: float | None, video_merge_ratio: float | None):
        super().__init__()
        dim = config.projection_dim
        self.text_weight_head = TokenWeightHead(dim)
        self.video_weight_head = TokenWeightHead(dim)
        self.text_merge = self._merge_block(config, text_merge_ratio)
        self.video_merge = self._merge_block(config, video_merge_ratio)
        self.banzhaf_student = BanzhafEstimator(config.banzhaf_estimator_width)

    @staticmethod
    def _merge_block(config: HBIConfig, ratio: float | None) -> TokenMergeBlock | None:
        if ratio is None:
            return None
        return TokenMergeBlock(
            config.projection_dim, ratio, config.cluster_num_neighbors, config.merge_attention_heads
        )


def _torch_default_init(module: nn.Module) -> None:
    """What torch's `reset_parameters` does for Linear / Conv layers, which the official code
    leaves in place for the token-merging convolution and score and the estimator's convs."""
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    if module.bias is not None:
        fan_in = module.weight[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        init.uniform_(module.bias, -bound, bound)


class HBIPreTrainedModel(PreTrainedModel):
    config_class = HBIConfig
    config: HBIConfig
    base_model_prefix = "hbi"
    main_input_name = "input_ids"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    # The loss is a mean over the (global) batch: the Trainer scales it for gradient accumulation.
    accepts_loss_kwargs = False
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings"]
    _supports_sdpa = True

    # Set by the hbi_transformers package to write an HBI model card into the folder
    # `push_to_hub` uploads; None in remote code loaded without the package (transformers' card).
    push_card_writer = None

    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        if HBIPreTrainedModel.push_card_writer is not None:
            HBIPreTrainedModel.push_card_writer(self, working_dir, repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        super().set_attn_implementation(attn_implementation, *args, **kwargs)
        # The temporal transformer is a CLIP encoder on its own copy of the text config.
        temporal = getattr(self.base_model, "temporal", None)
        if isinstance(temporal, TemporalTransformer):
            temporal.encoder.config._attn_implementation = self.base_model.config.text_config._attn_implementation

    def _without_autocast(self):
        """The region where everything after the CLIP projections runs: autocast off on the model's
        device, so that under mixed precision the heads run in float32 as officially, where only
        CLIP runs in reduced precision (docs/training.md#precision). Inputs must be cast to the
        heads' dtype on entering it."""
        return torch.autocast(self.device.type, enabled=False)

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # For code defined outside transformers, transformers skips every module without a
        # parameter of its own (merge blocks, temporal module), leaving their layers to the generic
        # branch or uninitialised. HBI initialises only through `transformers.initialization`,
        # which leaves loaded tensors alone by itself, so every module can be visited.
        super()._initialize_weights(module, is_custom_code=False)

    def _init_weights(self, module):
        """The official initialisation of the HBI heads; the CLIP towers initialise themselves."""
        std = self.config.initializer_range
        if isinstance(module, TokenWeightHead):
            for linear in (module.fc_in, module.fc_out):
                init.normal_(linear.weight, std=std)
                init.zeros_(linear.bias)
        elif isinstance(module, TokenClusterMerge):
            _torch_default_init(module.conv)
            _torch_default_init(module.score)
            init.ones_(module.norm.weight)
            init.zeros_(module.norm.bias)
        elif isinstance(module, MergedTokenAttention):
            for linear in (module.query, module.key_value, module.out_proj):
                init.trunc_normal_(linear.weight, std=0.02)
                init.zeros_(linear.bias)
            init.ones_(module.norm.weight)
            init.zeros_(module.norm.bias)
        elif isinstance(module, BanzhafEstimator):
            _torch_default_init(module.conv_in)
            _torch_default_init(module.conv_out)
            for matrix in (module.query, module.key, module.value):
                init.xavier_uniform_(matrix, gain=1.414)
        elif isinstance(module, TemporalTransformer):
            init.normal_(module.frame_position_embeddings.weight, std=std)
        elif isinstance(module, TemporalLSTM):
            # torch's LSTM default, through the initialisation that spares loaded weights.
            bound = 1 / math.sqrt(module.lstm.hidden_size)
            for parameter in module.lstm.parameters():
                init.uniform_(parameter, -bound, bound)
        elif isinstance(module, HBIModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            # As transformers' CLIPModel initialises its projections.
            init.normal_(module.text_projection.weight, std=self.config.text_config.hidden_size**-0.5)
            init.normal_(module.visual_projection.weight, std=self.config.vision_config.hidden_size**-0.5)
        elif isinstance(module, nn.Linear):
            # The temporal transformer's layers, when not copied from a CLIP text tower.
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class HBIModel(HBIPreTrainedModel):
    """HBI text-video retrieval model: CLIP text and vision towers, a temporal module over frames,
    and a three-level (entity, action, event) hierarchy of weighted token-wise interactions with
    Banzhaf interaction estimators. See docs/README.md for exactly what is computed.

    Example:

    ```python
    >>> model = HBIModel.from_clip_pretrained("openai/clip-vit-base-patch32")
    >>> outputs = model(**processor(text=captions, videos=videos, return_tensors="pt"))
    >>> outputs.logits_per_text.softmax(dim=-1)  # which video each caption describes
    ```
    """

    def __init__(self, config: HBIConfig):
        super().__init__(config)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.temporal = build_temporal_module(config)
        merge_ratios = list(zip([None, *config.text_merge_ratios], [None, *config.video_merge_ratios]))
        self.levels = nn.ModuleList(
            HBILevel(config, text_ratio, video_ratio) for text_ratio, video_ratio in merge_ratios
        )
        self.banzhaf_teacher = BanzhafEstimator(config.banzhaf_estimator_width)
        self.banzhaf_teacher.requires_grad_(False)
        self.post_init()

    @property
    def head_dtype(self) -> torch.dtype:
        """The dtype of the heads' weights: what the towers' outputs are cast to (float32 under
        mixed precision, bfloat16 for a model loaded in bfloat16)."""
        return self.levels[0].text_weight_head.fc_in.weight.dtype

    # ----------------------------------------------------------------------------------------
    # Encoders
    # ----------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.embeddings.token_embedding = value

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HBITextOutput:
        """The text tower's output and the token-level text embeddings `text_embeds` `[batch,
        words, D]` with their mask; `pooler_output` is CLIP's projected sentence embedding."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, words], got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        _check_mask(attention_mask, "text", "attention_mask")
        # Padding positions read as the official padding id 0, whatever the caller put there.
        input_ids = input_ids * attention_mask.to(input_ids.dtype)
        tower = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        # The heads' precision from here on, as the official `.float()` after CLIP.
        text_embeds = self.text_projection(tower.last_hidden_state).to(self.head_dtype)
        return HBITextOutput(
            last_hidden_state=tower.last_hidden_state,
            pooler_output=self.text_projection(tower.pooler_output),
            hidden_states=tower.hidden_states,
            attentions=tower.attentions,
            text_embeds=text_embeds,
            attention_mask=attention_mask,
        )

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HBIVideoOutput:
        """The vision tower's output on every frame and the frame-level video embeddings
        `video_embeds` `[batch, frames, D]` (after the temporal module) with their mask;
        `pooler_output` is their mean over the real frames."""
        if pixel_values_videos.dim() != 5:
            raise ValueError(
                "pixel_values_videos must be [batch, frames, channels, height, width], got shape "
                f"{tuple(pixel_values_videos.shape)}"
            )
        batch_size, num_frames = pixel_values_videos.shape[:2]
        if video_mask is None:
            video_mask = torch.ones(batch_size, num_frames, dtype=torch.long, device=pixel_values_videos.device)
        if video_mask.shape != (batch_size, num_frames):
            raise ValueError(
                f"video_mask {tuple(video_mask.shape)} does not match the [batch, frames] = "
                f"{(batch_size, num_frames)} of pixel_values_videos"
            )
        _check_mask(video_mask, "video", "video_mask")
        # Padding frames are the official zero images whatever their pixels, so they cannot
        # change any output (their features still take part where the official code lets them).
        pixel_values_videos = pixel_values_videos * video_mask[:, :, None, None, None].to(pixel_values_videos.dtype)
        pixel_values = pixel_values_videos.flatten(0, 1).to(self.visual_projection.weight.dtype)
        tower = self._vision_tower_per_frame(pixel_values, video_mask.flatten(), **kwargs)
        frames = self.visual_projection(tower.pooler_output)
        # The official temporal module is outside CLIP: it runs in float32 after CLIP's `.float()`.
        frames = frames.view(batch_size, num_frames, -1).to(self.head_dtype)
        with self._without_autocast():
            video_embeds = self.temporal(frames, video_mask)
            weights = video_mask.to(video_embeds.dtype)[..., None]
            pooled = (video_embeds * weights).sum(dim=1) / weights.sum(dim=1)

        def per_video(tensors):
            # Entries are None for layers left out by a list of `output_hidden_states` indices.
            if tensors is None:
                return None
            return tuple(None if t is None else t.view(batch_size, num_frames, *t.shape[1:]) for t in tensors)

        return HBIVideoOutput(
            last_hidden_state=tower.last_hidden_state.view(batch_size, num_frames, *tower.last_hidden_state.shape[1:]),
            pooler_output=pooled,
            hidden_states=per_video(tower.hidden_states),
            attentions=per_video(tower.attentions),
            video_embeds=video_embeds,
            video_mask=video_mask,
            frame_embeds=frames,
        )

    def _vision_tower_per_frame(
        self, pixel_values: torch.Tensor, frame_mask: torch.Tensor, **kwargs
    ) -> BaseModelOutputWithPooling:
        """The vision tower's output for every frame `[frames, ...]`. Padding frames are all the
        same zero image, so the tower sees only one of them and its output is copied to the others
        (the gradients of the copies add up on it): the same outputs and gradients as running it
        on every frame, for the cost of the real frames. Not where the frames differ anyway
        (attention dropout in training) or under tracing (the kept frames are data-dependent)."""
        shared_padding = not torch.compiler.is_compiling() and not (
            self.training and self.config.vision_config.attention_dropout > 0
        )
        if shared_padding:
            real = frame_mask.bool()
            first_padding = ~real & ((~real).cumsum(0) == 1)
            kept_mask = real | first_padding
            kept = kept_mask.nonzero().flatten()  # the one host sync: how many frames the tower sees
            shared_padding = kept.numel() < frame_mask.numel()
        if not shared_padding:
            return self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        # Each frame's row in the kept frames' output: its own, or the first padding frame's.
        row = kept_mask.cumsum(0) - 1
        source = torch.where(real, row, (row * first_padding).sum())
        tower = self.vision_model(pixel_values=pixel_values[kept], return_dict=True, **kwargs)

        def every_frame(tensors):
            if tensors is None:
                return None
            return tuple(None if t is None else t.index_select(0, source) for t in tensors)

        return BaseModelOutputWithPooling(
            last_hidden_state=tower.last_hidden_state.index_select(0, source),
            pooler_output=tower.pooler_output.index_select(0, source),
            hidden_states=every_frame(tower.hidden_states),
            attentions=every_frame(tower.attentions),
        )

    # ----------------------------------------------------------------------------------------
    # Hierarchy and scores
    # ----------------------------------------------------------------------------------------
    def text_levels(
        self, text_embeds: torch.Tensor, attention_mask: torch.Tensor, num_levels: int | None = None
    ) -> list[LevelTokens]:
        """The entity, action and event tokens (the first `num_levels` of them) of a batch of texts,
        merged together as one batch."""
        return self.walk_levels(("text", text_embeds, attention_mask), num_levels=num_levels)[0]

    def video_levels(
        self, video_embeds: torch.Tensor, video_mask: torch.Tensor, num_levels: int | None = None
    ) -> list[LevelTokens]:
        """The entity, action and event tokens (the first `num_levels` of them) of a batch of videos,
        merged together as one batch."""
        return self.walk_levels(("video", video_embeds, video_mask), num_levels=num_levels)[0]

    def walk_levels(
        self,
        *sides: tuple[str, torch.Tensor, torch.Tensor | None],
        num_levels: int | None = None,
        padded_length: int | None = None,
        lookahead: bool = False,
        stacked_taps: bool = False,
    ) -> list[list[LevelTokens]]:
        """The hierarchy: for each side `(kind, embeds, mask)`, kind "text" or "video", its entity,
        action and event `LevelTokens` (the first `num_levels`). Each level is merged from the one
        below; at each level the sides are merged in the order given, which fixes the order in
        which the clustering draws its noise (see docs/token_merging.md). `padded_length` is the
        length the entity tokens were padded to where trailing padding has been cut off since: the
        first merge's cluster count comes from it. With `lookahead`, the entity tokens' last
        position is padding that only the first merge's convolution reads: it is no entity token.
        `stacked_taps` computes every merge's convolution as one matrix product
        (`convolve_by_stacked_taps`), as gallery scoring does."""
        current = [(embeds.to(self.head_dtype), mask) for _, embeds, mask in sides]
        walks = [[] for _ in sides]
        with self._without_autocast():
            for level in self.levels[:num_levels]:
                for index, (kind, _, _) in enumerate(sides):
                    tokens, mask = current[index]
                    merge, cluster_index = getattr(level, f"{kind}_merge"), None
                    if merge is not None:
                        # Merged tokens are never padding: levels above the entity level are unmasked.
                        entity = mask is not None
                        (tokens, cluster_index), mask = merge.merge_tokens(
                            tokens, mask, padded_length if entity else None, lookahead and entity, stacked_taps
                        ), None
                    current[index] = (tokens, mask)
                    if lookahead and mask is not None:
                        tokens, mask = tokens[:, :-1], mask[:, :-1]
                    weights = getattr(level, f"{kind}_weight_head")(tokens, mask)
                    walks[index].append(LevelTokens(l2_normalize(tokens), weights, mask, tokens, cluster_index))
        return walks

    def _levels_merged_once(
        self, embeds, mask, side: str, group_size: int, num_levels: int | None = None
    ) -> list[LevelTokens]:
        """Every item's level tokens (the first `num_levels` levels), each item merged once: what
        scoring a gallery needs.

        Items are merged in batches of similar length cut to their longest item (and to no fewer
        positions than clusters), the convolution alone reading the padding position after it:
        the same tokens as at the padded width, for fewer products. Items with fewer valid tokens than
        the first merge's k neighbours, whose densities the batch's padding fill scales against the
        clustering noise, are merged with their official group instead: `group_size` consecutive
        items at the padded width (docs/inference.md#merging-a-gallery).
        """
        count, width = mask.shape
        first_merge = getattr(self.levels[1], f"{side}_merge").merge
        lengths = mask.sum(dim=1)
        group_of_item = torch.arange(count, device=mask.device) // group_size
        short_groups = group_of_item[lengths < min(first_merge.num_neighbors, width)].unique()
        in_short_group = torch.isin(group_of_item, short_groups)
        least_width = first_merge.num_clusters(width)

        def batches_of(items: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
            return items.split(size) if len(items) else ()

        batches = [(items, width) for items in batches_of(in_short_group.nonzero().squeeze(1), group_size)]
        others = (~in_short_group).nonzero().squeeze(1)
        by_length = others[torch.argsort(lengths[others], descending=True, stable=True)]
        longest = lengths[by_length[::SORTED_MERGE_BATCH]].tolist()
        batches += [
            (items, min(max(int(longest[index]), least_width), width))
            for index, items in enumerate(batches_of(by_length, SORTED_MERGE_BATCH))
        ]

        embeds = embeds.to(self.head_dtype)
        # Cut positions are padding: zero tokens (masked in any case) of weight 0.
        levels = [LevelTokens(embeds.new_zeros(count, width, embeds.shape[-1]), embeds.new_zeros(count, width), mask)]
        tokens_per_item = width
        for level in self.levels[1:num_levels]:
            tokens_per_item = getattr(level, f"{side}_merge").merge.num_clusters(tokens_per_item)
            shape = (count, tokens_per_item)
            levels.append(LevelTokens(embeds.new_empty(*shape, embeds.shape[-1]), embeds.new_empty(shape), None))
        for items, keep in batches:
            # Below the padded width, the convolution also reads the position after the last kept.
            read = min(keep + 1, width)
            walk = self.walk_levels(
                (side, embeds[items, :read], mask[items, :read]),
                num_levels=num_levels,
                padded_length=width,
                lookahead=read > keep,
                stacked_taps=True,
            )[0]
            levels[0].tokens[items, :keep] = walk[0].tokens
            levels[0].weights[items, :keep] = walk[0].weights
            for merged, walked in zip(levels[1:], walk[1:]):
                merged.tokens[items] = walked.tokens
                merged.weights[items] = walked.weights
        return levels

    def _scaled_similarity(self, level_similarities: list[torch.Tensor], in_place: bool = False) -> HBISimilarityOutput:
        """Fused and per-level logits; `in_place` scales the given level matrices themselves, which
        saves a copy of each for a large gallery."""
        if len(level_similarities) < self.config.num_fused_levels:
            raise ValueError(
                f"{len(level_similarities)} level(s) scored, but level_weights {self.config.level_weights} weigh "
                f"{self.config.num_fused_levels}: score at least config.num_fused_levels levels"
            )
        scale = self.logit_scale.exp()
        levels = [sim.mul_(scale) if in_place else sim * scale for sim in level_similarities]
        logits_per_text = torch.zeros_like(levels[0])
        for weight, level in zip(self.config.level_weights, levels):
            if weight:
                logits_per_text.add_(level, alpha=weight)
        return HBISimilarityOutput(
            logits_per_text=logits_per_text,
            logits_per_video=logits_per_text.t(),
            level_logits_per_text=tuple(levels),
        )

    @torch.no_grad()
    def compute_similarity(
        self,
        text_outputs: HBITextOutput,
        video_outputs: HBIVideoOutput,
        chunk_size: int = 64,
        merge_group_size: int = OFFICIAL_MERGE_GROUP_SIZE,
        num_levels: int | None = None,
    ) -> HBISimilarityOutput:
        """Scores every text against every video from `get_text_features` / `get_video_features`
        outputs, without re-encoding.

        Each item's merged (action / event) tokens are computed once, in batches of similar
        length without their all-padding positions; items with fewer valid tokens than
        `cluster_num_neighbors` are merged in the official evaluation's groups of
        `merge_group_size` items, which their merge depends on. The word-frame similarity is then
        computed in blocks of `chunk_size` texts x `chunk_size` videos so that a large gallery fits
        in memory.

        `num_levels` scores only the first levels (`level_logits_per_text` then holds those):
        `config.num_fused_levels` gives the same `logits_per_text` without the levels it does not
        weigh, and with the retrieval default [1, 0, 0] without merging at all. By default every
        level is scored, as the official evaluation does whatever the weights.
        """
        text_levels = self._levels_merged_once(
            text_outputs.text_embeds, text_outputs.attention_mask, "text", merge_group_size, num_levels
        )
        video_levels = self._levels_merged_once(
            video_outputs.video_embeds, video_outputs.video_mask, "video", merge_group_size, num_levels
        )
        return self.similarity_from_levels(text_levels, video_levels, chunk_size)

    @torch.no_grad()
    def similarity_from_levels(
        self, text_levels: list[LevelTokens], video_levels: list[LevelTokens], chunk_size: int = 64
    ) -> HBISimilarityOutput:
        """Scores texts against videos from their level tokens (`text_levels` / `video_levels`),
        in blocks of `chunk_size` x `chunk_size` at the entity level: for galleries whose level
        tokens are stored, as a search index does, so that nothing is merged again. The merged
        levels, with fewer tokens per item, take blocks of more items but no more word-frame
        cells (docs/wti.md#chunked-evaluation)."""
        entity_cells = text_levels[0].tokens.shape[1] * video_levels[0].tokens.shape[1] if text_levels else 0

        def level_chunk_size(text: LevelTokens, video: LevelTokens) -> int:
            cells = max(text.tokens.shape[1] * video.tokens.shape[1], 1)
            return chunk_size * max(math.isqrt(entity_cells // cells), 1)

        with self._without_autocast():
            return self._scaled_similarity(
                [
                    chunked_weighted_token_interaction(text, video, level_chunk_size(text, video))
                    for text, video in zip(text_levels, video_levels)
                ],
                in_place=True,
            )

    # ----------------------------------------------------------------------------------------
    # Forward and loss
    # ----------------------------------------------------------------------------------------
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        video_index: torch.Tensor | None = None,
        output_levels: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HBIOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(n_text, words)`): CLIP token ids, padded with 0.
        attention_mask (`torch.LongTensor` of shape `(n_text, words)`): 1 for real tokens.
        pixel_values_videos (`torch.FloatTensor` of shape `(n_video, frames, 3, height, width)`).
        video_mask (`torch.LongTensor` of shape `(n_video, frames)`, *optional*): 1 for real frames,
            all ones when omitted.
        return_loss (`bool`, *optional*): compute the training objective; text i and video i are
            then a matched pair, so `n_text` must equal `n_video`. By default, in training mode
            when the texts and videos pair up (as a plain `Trainer` feeds them), not in eval mode.
            Under torch.distributed the embeddings of all processes are gathered first, so the
            logits are then those of the global batch.
        video_index (`torch.LongTensor` of shape `(n_text,)`, *optional*): which video each pair
            shows; with `config.same_video_positives`, pairs of one video are not negatives.
        output_levels (`bool`, *optional*): also return each level's tokens, weights and cluster
            assignments (`text_levels`, `video_levels`).
        kwargs: `output_hidden_states`, `output_attentions` (of both towers, in
            `text_model_output` / `vision_model_output`) and `return_dict`.
        """
        if input_ids is None or pixel_values_videos is None:
            raise ValueError("HBIModel scores texts against videos: give both input_ids and pixel_values_videos")
        if return_loss is None:
            return_loss = self.training and input_ids.shape[0] == pixel_values_videos.shape[0]
        text_outputs = self.get_text_features(input_ids, attention_mask, return_dict=True, **kwargs)
        video_outputs = self.get_video_features(pixel_values_videos, video_mask, return_dict=True, **kwargs)
        if return_loss and input_ids.shape[0] != pixel_values_videos.shape[0]:
            raise ValueError(
                f"return_loss needs matched pairs: got {input_ids.shape[0]} texts and "
                f"{pixel_values_videos.shape[0]} videos"
            )
        text_embeds, text_mask = text_outputs.text_embeds, text_outputs.attention_mask
        video_embeds, video_mask = video_outputs.video_embeds, video_outputs.video_mask
        if return_loss:
            # As officially, the loss sees the global batch: every process's pairs are negatives.
            text_embeds, text_mask, video_embeds, video_mask = (
                gather_from_all_processes(tensor) for tensor in (text_embeds, text_mask, video_embeds, video_mask)
            )
        with self._without_autocast():
            text_levels = self.text_levels(text_embeds, text_mask)
            video_levels = self.video_levels(video_embeds, video_mask)
            level_similarities = [
                weighted_token_interaction(text, video) for text, video in zip(text_levels, video_levels)
            ]
            similarity = self._scaled_similarity(level_similarities)

            loss = loss_terms = None
            if return_loss:
                targets = None
                if self.config.same_video_positives and video_index is not None:
                    targets = same_video_targets(gather_from_all_processes(video_index))
                loss, loss_terms = self.hbi_loss(level_similarities, text_levels, video_levels, targets)

        return HBIOutput(
            loss=loss,
            logits_per_text=similarity.logits_per_text,
            logits_per_video=similarity.logits_per_video,
            level_logits_per_text=similarity.level_logits_per_text,
            text_embeds=text_outputs.text_embeds,
            video_embeds=video_outputs.video_embeds,
            loss_terms=loss_terms,
            text_model_output=text_outputs,
            vision_model_output=video_outputs,
            text_levels=tuple(text_levels) if output_levels else None,
            video_levels=tuple(video_levels) if output_levels else None,
        )

    def hbi_loss(
        self,
        level_similarities: list[torch.Tensor],
        text_levels: list[LevelTokens],
        video_levels: list[LevelTokens],
        contrastive_targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The retrieval objective (docs/training.md) over a batch of matched pairs, where text i
        goes with video i (or with the target distribution `contrastive_targets`)."""
        scale = self.logit_scale.exp()
        terms = {}
        for index, (name, level) in enumerate(zip(LEVEL_NAMES, self.levels)):
            text, video = text_levels[index], video_levels[index]
            terms[f"contrastive_{name}"] = symmetric_info_nce(level_similarities[index] * scale, contrastive_targets)
            similarity_map = matched_word_frame_similarity(text, video)
            student = level.banzhaf_student(similarity_map)
            with torch.no_grad():
                teacher = self.banzhaf_teacher(similarity_map.detach())
            if index == 0 and self.config.mask_entity_banzhaf_maps:
                map_mask = text.mask[:, :, None] * video.mask[:, None, :]
                student, teacher = student * map_mask, teacher * map_mask
            terms[f"banzhaf_{name}"] = banzhaf_kl(student, teacher)

        entity = level_similarities[0]
        terms["distillation"] = sum(
            kl_divergence(sim.t(), entity.t()) + kl_divergence(sim, entity) for sim in level_similarities[1:]
        )
        loss = sum(
            terms[f"contrastive_{name}"] + self.config.banzhaf_kl_weight * terms[f"banzhaf_{name}"]
            for name in LEVEL_NAMES
        )
        loss = loss + self.config.distillation_kl_weight * terms["distillation"]
        return loss, {name: value.detach() for name, value in terms.items()}

    # ----------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # with output_loading_info
        # Loading replaces parameters with trainable ones; the teacher estimator stays frozen.
        model.banzhaf_teacher.requires_grad_(False)
        return loaded

    @classmethod
    def from_clip_pretrained(cls, clip_name_or_path: str, **hbi_kwargs) -> "HBIModel":
        """A fresh HBI initialised from a transformers CLIP checkpoint (hub name or local folder),
        as the official code starts training: CLIP's towers, projections and temperature, frame
        position embeddings copied from CLIP's text positional embedding, the temporal transformer
        from CLIP's first text layers; every HBI head freshly initialised."""
        clip = CLIPModel.from_pretrained(clip_name_or_path)
        config = HBIConfig(
            text_config=clip.config.text_config.to_dict(),
            vision_config=clip.config.vision_config.to_dict(),
            projection_dim=clip.config.projection_dim,
            logit_scale_init_value=float(clip.logit_scale.detach()),
            **hbi_kwargs,
        )
        model = cls(config)
        model.load_clip_weights(clip)
        return model

    @torch.no_grad()
    def load_clip_weights(self, clip: CLIPModel) -> None:
        """Copies a `CLIPModel`'s weights into this model and initialises the temporal module from
        its text tower (the official initialisation trick)."""
        self.text_model.load_state_dict(clip.text_model.state_dict())
        self.vision_model.load_state_dict(clip.vision_model.state_dict())
        self.text_projection.load_state_dict(clip.text_projection.state_dict())
        self.visual_projection.load_state_dict(clip.visual_projection.state_dict())
        self.logit_scale.copy_(clip.logit_scale)
        if isinstance(self.temporal, TemporalTransformer):
            self.init_temporal_from_text_tower()

    @torch.no_grad()
    def init_temporal_from_text_tower(self) -> None:
        """Frame position embeddings <- the text positional embedding; temporal layers <- the first
        text layers. Needs the text width to equal `projection_dim` (true of every OpenAI CLIP)."""
        if not isinstance(self.temporal, TemporalTransformer):
            raise ValueError(f"temporal_module {self.config.temporal_module!r} has no transformer to initialise")
        if self.config.text_config.hidden_size != self.config.projection_dim:
            raise ValueError(
                f"cannot initialise the temporal transformer (width {self.config.projection_dim}) from a "
                f"text tower of width {self.config.text_config.hidden_size}"
            )
        if self.config.temporal_num_layers > self.config.text_config.num_hidden_layers:
            raise ValueError(
                f"cannot initialise {self.config.temporal_num_layers} temporal layers from a text tower of "
                f"{self.config.text_config.num_hidden_layers} layers"
            )
        self.temporal.frame_position_embeddings.weight.copy_(
            self.text_model.embeddings.position_embedding.weight
        )
        for temporal_layer, text_layer in zip(self.temporal.encoder.layers, self.text_model.encoder.layers):
            temporal_layer.load_state_dict(text_layer.state_dict())


def _check_mask(mask: torch.Tensor, kind: str, mask_name: str) -> None:
    """A clear error for a batch of no items, a mask that is not 0/1, or an item with no token.
    Traced (torch.compile, torch.export), the value checks become an assertion inside the graph,
    which breaks nothing and still refuses the batch; eager, the error names the items."""
    if mask.shape[0] == 0:
        raise ValueError(f"{mask_name} holds no {kind}: the batch is empty")
    valid = ((mask == 0) | (mask == 1)).all() & (mask.sum(dim=-1) > 0).all()
    if torch.compiler.is_compiling():
        torch._assert_async(valid, f"{mask_name} must hold only 0 and 1, and every {kind} at least one token")
        return
    # One host sync for a good mask; the details are looked up only for the error.
    if valid:
        return
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError(f"{mask_name} must hold only 0 and 1, got values {sorted(mask.unique().tolist())}")
    empty = (mask.sum(dim=-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{mask_name} is all zeros for {kind} item(s) {empty}: every {kind} needs at least one token")
