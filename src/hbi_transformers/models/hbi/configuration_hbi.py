"""Configuration of HBI (Hierarchical Banzhaf Interaction) models."""

import json
import os

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
        qa_level_weights (`list[float]`, *optional*, defaults to `[0.4, 0.4, 0.2]`):
            Video question answering: weights of the entity, action and event answer logits in the
            prediction (the official `rate` of MSRVTT-QA).
        qa_dropout (`float`, *optional*, defaults to 0.1):
            Video question answering: dropout on each level's pooled [video, question] vector before
            its answer classifier.
        qa_distillation_kl_weight (`float`, *optional*, defaults to 0.2):
            Video question answering: weight of the self-distillation of the action and event answer
            logits towards the entity ones (the official `kl` in the QA objective). The similarity
            self-distillation of retrieval (`distillation_kl_weight`) is not part of the official QA
            objective: [`video_qa_config`] sets it to 0.

    The answer vocabulary of video question answering is the standard `id2label` / `label2id`
    (see [`config_with_answers`]); [`video_qa_config`] gives the official MSRVTT-QA settings.

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
    qa_level_weights: list[float] | tuple[float, ...] = (0.4, 0.4, 0.2)
    qa_dropout: float = 0.1
    qa_distillation_kl_weight: float = 0.2

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # JSON has no tuples: keep the values in one type so a saved config reloads equal.
        self.text_merge_ratios = [float(r) for r in self.text_merge_ratios]
        self.video_merge_ratios = [float(r) for r in self.video_merge_ratios]
        self.level_weights = [float(w) for w in self.level_weights]
        self.qa_level_weights = [float(w) for w in self.qa_level_weights]
        self._validate_hbi()

    @property
    def num_fused_levels(self) -> int:
        """How many levels, from the entity level up, the fused score uses: up to the last one with
        a non-zero `level_weights` entry (1 with the retrieval default [1, 0, 0])."""
        return max((index + 1 for index, weight in enumerate(self.level_weights) if weight), default=1)

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
        for name in ("level_weights", "qa_level_weights"):
            if len(getattr(self, name)) != len(LEVEL_NAMES):
                raise ValueError(f"{name} needs one weight per level {LEVEL_NAMES}, got {getattr(self, name)}")
        if not 0 <= self.qa_dropout < 1:
            raise ValueError(f"qa_dropout must be within [0, 1), got {self.qa_dropout}")
        if self.projection_dim % self.merge_attention_heads:
            raise ValueError(
                f"projection_dim ({self.projection_dim}) must be divisible by merge_attention_heads "
                f"({self.merge_attention_heads})"
            )


# --------------------------------------------------------------------------------------------
# Video question answering (docs/video_qa.md)
# --------------------------------------------------------------------------------------------
# Where the official MSRVTT-QA model differs from retrieval in settings that the weights do not
# tell: 32 words -> 8 -> 1 and 12 frames -> 3 -> 1, entity-level Banzhaf maps left unmasked, and
# no similarity self-distillation (the QA objective distils answer logits instead).
VIDEO_QA_SETTINGS = {
    "text_merge_ratios": (0.25, 0.125),
    "video_merge_ratios": (0.25, 0.25),
    "mask_entity_banzhaf_maps": False,
    "distillation_kl_weight": 0.0,
}
# The official MSRVTT-QA answer vocabulary: the 1500 answers of `train_ans2label.json`.
OFFICIAL_NUM_ANSWERS = 1500
# The label of an answer outside the vocabulary (what `HBIDataCollator` gives it, as officially).
OUT_OF_VOCABULARY_LABEL = -1
# The official QA backbone is CLIP ViT-B/16; its text tower is the CLIPTextConfig default.
VIT_B16_VISION_CONFIG = {"patch_size": 16}


def video_qa_config(config: HBIConfig | None = None, **overrides) -> HBIConfig:
    """The official MSRVTT-QA configuration ([`VIDEO_QA_SETTINGS`]) applied to a copy of `config`
    (its towers, sizes and answer vocabulary are kept), then `overrides`. Without `config`: CLIP
    ViT-B/16 towers and 1500 (generically named) answers, as the official model."""
    if config is None:
        config = HBIConfig(vision_config=dict(VIT_B16_VISION_CONFIG), num_labels=OFFICIAL_NUM_ANSWERS)
    return HBIConfig.from_dict({**config.to_dict(), **VIDEO_QA_SETTINGS, **overrides})


def read_answer_vocabulary(path: str | os.PathLike) -> dict[str, int]:
    """`{answer: label}` from a JSON file: an object mapping each answer to its label (the official
    `train_ans2label.json`) or a list of answers (the label is the position). Labels must be
    0 .. n - 1, each used once."""
    with open(path, encoding="utf-8") as handle:
        content = json.load(handle)
    if isinstance(content, list):
        vocabulary = {str(answer): label for label, answer in enumerate(content)}
        if len(vocabulary) != len(content):
            raise ValueError(f"{path}: the answer list repeats answers")
    elif isinstance(content, dict):
        vocabulary = {str(answer): int(label) for answer, label in content.items()}
    else:
        raise ValueError(f"{path}: expected a JSON object (answer -> label) or a list of answers")
    if sorted(vocabulary.values()) != list(range(len(vocabulary))):
        raise ValueError(f"{path}: the {len(vocabulary)} answers' labels must be 0 .. {len(vocabulary) - 1}, each once")
    return vocabulary


def answer_label_maps(answers_path: str | os.PathLike) -> dict[str, dict]:
    """`{"id2label": ..., "label2id": ...}` of the answer vocabulary file `answers_path` (see
    [`read_answer_vocabulary`]), as config keyword arguments."""
    label2id = read_answer_vocabulary(answers_path)
    return {"id2label": {label: answer for answer, label in label2id.items()}, "label2id": label2id}


def config_with_answers(config: HBIConfig, answers_path: str | os.PathLike) -> HBIConfig:
    """A copy of `config` whose `id2label` / `label2id` (and so `num_labels`) are the answer
    vocabulary of `answers_path` (see [`read_answer_vocabulary`])."""
    return HBIConfig.from_dict({**config.to_dict(), **answer_label_maps(answers_path)})
