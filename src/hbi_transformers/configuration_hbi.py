"""Configuration of HBI (Hierarchical Banzhaf Interaction) models."""

from transformers import CLIPTextConfig, CLIPVisionConfig, PretrainedConfig

LEVEL_NAMES = ("entity", "action", "event")
TEMPORAL_MODULES = ("seqTransf", "seqLSTM", "meanP", "none")
INTERACTIONS = ("wti",)


class HBIConfig(PretrainedConfig):
    r"""
    Configuration of [`HBIModel`]: two CLIP towers plus the HBI heads. Defaults are those of the
    official code (`jpthu17/HBI`) for MSR-VTT retrieval with ViT-B/32.

    Args:
        text_config (`dict` or `CLIPTextConfig`, *optional*):
            The CLIP text tower.
        vision_config (`dict` or `CLIPVisionConfig`, *optional*):
            The CLIP vision tower (applied to every frame).
        projection_dim (`int`, *optional*, defaults to 512):
            Size `D` of the joint word / frame embedding space. The temporal module, the weight
            heads, the token merging blocks all work at this size.
        logit_scale_init_value (`float`, *optional*, defaults to 2.6592):
            Initial value of the learned log temperature (CLIP's `ln(1 / 0.07)`).
        temporal_module (`str`, *optional*, defaults to `"seqTransf"`):
            How frame embeddings see each other before matching: `"seqTransf"` (a CLIP-style
            transformer over frames with learned frame position embeddings, plus a residual),
            `"seqLSTM"` (an LSTM plus a residual), `"meanP"` or `"none"` (frames unchanged; the
            official code treats both as a no-op).
        temporal_num_layers (`int`, *optional*, defaults to 4):
            Layers of the `"seqTransf"` module (initialised from the first CLIP text layers).
        temporal_layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            LayerNorm epsilon of the temporal transformer (the official code uses TF-style
            LayerNorms with 1e-12 there; CLIP's own use 1e-5).
        interaction (`str`, *optional*, defaults to `"wti"`):
            Word-frame interaction: weighted token-wise interaction.
        text_merge_ratios (`list[float]`, *optional*, defaults to `[0.25, 0.5]`):
            Share of text tokens kept as cluster centres when going entity -> action and
            action -> event (24 words -> 6 -> 3).
        video_merge_ratios (`list[float]`, *optional*, defaults to `[0.25, 0.5]`):
            The same for frames (12 frames -> 3 -> 2).
        cluster_num_neighbors (`int`, *optional*, defaults to 3):
            `k` of the DPC-KNN local density used to pick cluster centres.
        merge_attention_heads (`int`, *optional*, defaults to 8):
            Heads of the attention block that refines merged tokens.
        banzhaf_estimator_width (`int`, *optional*, defaults to 64):
            Channels of the Banzhaf interaction estimator network.
        level_weights (`list[float]`, *optional*, defaults to `[1.0, 0.0, 0.0]`):
            Weights of the entity, action and event similarities in the inference score.
        banzhaf_kl_weight (`float`, *optional*, defaults to 1.0):
            Weight of the student-teacher Banzhaf KL terms in the loss (`skl` officially).
        distillation_kl_weight (`float`, *optional*, defaults to 0.2):
            Weight of the action/event -> entity self-distillation KL terms (`kl` officially).
        mask_entity_banzhaf_maps (`bool`, *optional*, defaults to `True`):
            Mask padding words and frames in the entity-level Banzhaf maps before the KL (as in
            retrieval; video QA does not).
        same_video_positives (`bool`, *optional*, defaults to `False`):
            When the batch carries a `video_index`, treat every pair of the same video as a positive
            in the InfoNCE terms (soft targets). Off by default: the official loss takes only the
            diagonal, so two captions of one video in a batch are each other's negatives.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal init of the HBI heads.

    Example:

    ```python
    >>> from hbi_transformers import HBIConfig, HBIModel
    >>> config = HBIConfig()
    >>> model = HBIModel(config)
    ```
    """

    model_type = "hbi"
    sub_configs_defaults = {
        "text_config": CLIPTextConfig,
        "vision_config": CLIPVisionConfig,
    }

    text_config: dict | CLIPTextConfig | None = None
    vision_config: dict | CLIPVisionConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    temporal_module: str = "seqTransf"
    temporal_num_layers: int = 4
    temporal_layer_norm_eps: float = 1e-12
    interaction: str = "wti"
    text_merge_ratios: list[float] | tuple[float, ...] = (0.25, 0.5)
    video_merge_ratios: list[float] | tuple[float, ...] = (0.25, 0.5)
    cluster_num_neighbors: int = 3
    merge_attention_heads: int = 8
    banzhaf_estimator_width: int = 64
    level_weights: list[float] | tuple[float, ...] = (1.0, 0.0, 0.0)
    banzhaf_kl_weight: float = 1.0
    distillation_kl_weight: float = 0.2
    mask_entity_banzhaf_maps: bool = True
    same_video_positives: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # JSON has no tuples: keep the values in one type so a saved config reloads equal.
        self.text_merge_ratios = [float(r) for r in self.text_merge_ratios]
        self.video_merge_ratios = [float(r) for r in self.video_merge_ratios]
        self.level_weights = [float(w) for w in self.level_weights]
        self._validate_hbi()

    def _validate_hbi(self):
        if self.temporal_module not in TEMPORAL_MODULES:
            raise ValueError(f"temporal_module must be one of {TEMPORAL_MODULES}, got {self.temporal_module!r}")
        if self.interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, got {self.interaction!r}")
        num_merges = len(LEVEL_NAMES) - 1
        for name in ("text_merge_ratios", "video_merge_ratios"):
            ratios = getattr(self, name)
            if len(ratios) != num_merges or not all(0 < r <= 1 for r in ratios):
                raise ValueError(f"{name} must hold {num_merges} ratios in (0, 1], got {ratios}")
        if len(self.level_weights) != len(LEVEL_NAMES):
            raise ValueError(
                f"level_weights needs one weight per level {LEVEL_NAMES}, got {self.level_weights}"
            )
        if self.projection_dim % self.merge_attention_heads:
            raise ValueError(
                f"projection_dim ({self.projection_dim}) must be divisible by merge_attention_heads "
                f"({self.merge_attention_heads})"
            )
