"""Conversion of official HBI checkpoints (`jpthu17/HBI`) and OpenAI CLIP checkpoints into
[`HBIModel`] (or [`HBIForVideoQuestionAnswering`]) weights and folders.

Three kinds of files are accepted:

- a full HBI state dict, as the official training script saves it (CLIP under `clip.`, the HBI
  heads at the top level, with or without the `module.` prefix of DDP);
- the same for the official video question answering model (`main_vqa.py`), which adds per-level
  answer heads (`t_weight`, `v_weight`, `t_proj`, `v_proj`, `classifier`, suffixed like the
  weight heads): it becomes a [`HBIForVideoQuestionAnswering`];
- an OpenAI CLIP checkpoint (`ViT-B-32.pt` style: a TorchScript archive or a plain state dict), to
  start a fresh HBI as the official code does: CLIP towers loaded, HBI heads freshly initialised,
  the temporal transformer copied from the first CLIP text layers.

and, optionally, an official Banzhaf estimator checkpoint for the frozen teacher.

Every architecture size is read from the weights, as the official `build_model` does. Every source
key must find its place and every target key must be filled: anything else is an error that
lists the keys. The few keys the official modules hold but never use are dropped by name.
"""

import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.utils import logging

from .configuration_hbi import VIDEO_QA_SETTINGS, HBIConfig, answer_label_maps
from .modeling_hbi import HBIModel
from .modeling_hbi_qa import HBIForVideoQuestionAnswering

logger = logging.get_logger(__name__)

# OpenAI CLIP sizes its attention heads at 64 channels (`build_model`: heads = width // 64).
CLIP_HEAD_WIDTH = 64
DDP_PREFIX = "module."
HBI_CLIP_PREFIX = "clip."
# Where an estimator checkpoint keeps the BanzhafModule: saved bare by the official pre-training
# script, or inside the state dict of the model that holds it.
ESTIMATOR_PREFIXES = ("", "banzhafteacher.", "banzhafmodel.")
# HBIModel parts that a CLIP checkpoint does not provide: they keep their fresh initialisation.
HBI_HEAD_PREFIXES = ("temporal.", "levels.", "banzhaf_teacher.")
LINEAR_PARAMS = ("weight", "bias")
LSTM_PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
BATCH_NORM_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Error messages list at most this many keys, then say how many more there are.
MAX_LISTED_KEYS = 30
# Official suffixes of the entity, action and event heads (`text_weight_fc`, `text_weight_fc0`, ...).
OFFICIAL_LEVEL_SUFFIXES = ("", "0", "1")
# The entity level's answer classifier of the official QA model: its presence marks a QA
# checkpoint, and its output size is the number of answers.
QA_CLASSIFIER_OUTPUT = "classifier.2.weight"


@dataclass
class KeyMap:
    """How the keys of an official state dict become HBIModel keys.

    `renamed` keys are copied, `transposed` ones are `[in, out]` matrices used as `x @ W` that
    become `nn.Linear` weights, `fused_qkv` ones are `nn.MultiheadAttention` input projections
    split in thirds (query, key, value). `unused` keys are held by the official modules but never
    used by their forward: they may be present and are dropped.
    """

    renamed: dict[str, str] = field(default_factory=dict)
    transposed: dict[str, str] = field(default_factory=dict)
    fused_qkv: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    unused: set[str] = field(default_factory=set)

    def rename_module(self, source: str, target: str, params: tuple[str, ...] = LINEAR_PARAMS) -> None:
        self.renamed.update({f"{source}.{param}": f"{target}.{param}" for param in params})

    def add_residual_block(self, source: str, target: str) -> None:
        """An OpenAI CLIP `ResidualAttentionBlock` -> a transformers `CLIPEncoderLayer`."""
        for param in LINEAR_PARAMS:
            self.fused_qkv[f"{source}.attn.in_proj_{param}"] = tuple(
                f"{target}.self_attn.{projection}_proj.{param}" for projection in "qkv"
            )
        self.rename_module(f"{source}.attn.out_proj", f"{target}.self_attn.out_proj")
        self.rename_module(f"{source}.ln_1", f"{target}.layer_norm1")
        self.rename_module(f"{source}.mlp.c_fc", f"{target}.mlp.fc1")
        self.rename_module(f"{source}.mlp.c_proj", f"{target}.mlp.fc2")
        self.rename_module(f"{source}.ln_2", f"{target}.layer_norm2")

    def include(self, other: "KeyMap", source_prefix: str = "", target_prefix: str = "") -> None:
        self.renamed.update({source_prefix + s: target_prefix + t for s, t in other.renamed.items()})
        self.transposed.update({source_prefix + s: target_prefix + t for s, t in other.transposed.items()})
        self.fused_qkv.update(
            {source_prefix + s: tuple(target_prefix + t for t in ts) for s, ts in other.fused_qkv.items()}
        )
        self.unused.update(source_prefix + s for s in other.unused)

    def required_keys(self) -> set[str]:
        return set(self.renamed) | set(self.transposed) | set(self.fused_qkv)

    def convert(self, state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        required = self.required_keys()
        unmapped = [key for key in state_dict if key not in required and key not in self.unused]
        missing = required - state_dict.keys()
        if unmapped or missing:
            raise ValueError(
                f"{source} does not match the expected layout:"
                + _key_list("key(s) with no place in HBIModel", unmapped)
                + _key_list("expected key(s) missing", missing)
            )
        converted = {}
        for key, tensor in state_dict.items():
            if key in self.renamed:
                converted[self.renamed[key]] = tensor
            elif key in self.transposed:
                converted[self.transposed[key]] = tensor.t().contiguous()
            elif key in self.fused_qkv:
                # Cloned so that the three parts do not share storage (safetensors refuses that).
                for target, part in zip(self.fused_qkv[key], tensor.chunk(3, dim=0)):
                    converted[target] = part.clone()
        return converted


def _key_list(what: str, keys) -> str:
    if not keys:
        return ""
    keys = sorted(keys)
    listed = ", ".join(keys[:MAX_LISTED_KEYS])
    more = f" and {len(keys) - MAX_LISTED_KEYS} more" if len(keys) > MAX_LISTED_KEYS else ""
    return f"\n  {len(keys)} {what}: {listed}{more}"


# --------------------------------------------------------------------------------------------
# Key layouts
# --------------------------------------------------------------------------------------------
def _clip_key_map(num_text_layers: int, num_vision_layers: int) -> KeyMap:
    key_map = KeyMap()
    key_map.renamed.update(
        {
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "positional_embedding": "text_model.embeddings.position_embedding.weight",
            "logit_scale": "logit_scale",
            "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "visual.class_embedding": "vision_model.embeddings.class_embedding",
            "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        }
    )
    key_map.rename_module("ln_final", "text_model.final_layer_norm")
    key_map.rename_module("visual.ln_pre", "vision_model.pre_layrnorm")
    key_map.rename_module("visual.ln_post", "vision_model.post_layernorm")
    # OpenAI applies its projections as `x @ proj` with `proj` [width, D]; nn.Linear holds [D, width].
    key_map.transposed.update({"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"})
    for layer in range(num_text_layers):
        key_map.add_residual_block(f"transformer.resblocks.{layer}", f"text_model.encoder.layers.{layer}")
    for layer in range(num_vision_layers):
        key_map.add_residual_block(f"visual.transformer.resblocks.{layer}", f"vision_model.encoder.layers.{layer}")
    # Hyper-parameters that OpenAI's TorchScript archives keep next to the weights.
    key_map.unused.update(("input_resolution", "context_length", "vocab_size"))
    return key_map


def _estimator_key_map() -> KeyMap:
    """An official `BanzhafModule` -> a `BanzhafEstimator`."""
    key_map = KeyMap()
    key_map.rename_module("cnn1", "conv_in")
    key_map.rename_module("cnn2", "conv_out")
    key_map.renamed.update({"Q": "query", "K": "key", "V": "value"})
    # The official BanzhafModule defines a BatchNorm that its forward never applies.
    key_map.unused.update(f"bn.{param}" for param in BATCH_NORM_PARAMS)
    return key_map


def _hbi_key_map(config: HBIConfig) -> KeyMap:
    key_map = KeyMap()
    key_map.include(
        _clip_key_map(config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers),
        source_prefix=HBI_CLIP_PREFIX,
    )
    # Official names per level: entity `text_weight_fc`, action `text_weight_fc0`, event `text_weight_fc1`.
    for level, suffix in enumerate(OFFICIAL_LEVEL_SUFFIXES):
        for side in ("text", "video"):
            head = f"levels.{level}.{side}_weight_head"
            key_map.rename_module(f"{side}_weight_fc{suffix}.0", f"{head}.fc_in")
            key_map.rename_module(f"{side}_weight_fc{suffix}.2", f"{head}.fc_out")
    # Merge i (official `t_ctm{i}` + `t_block{i}`, `v_...` for videos) builds level i + 1.
    for merge_index in range(2):
        for side, short in (("text", "t"), ("video", "v")):
            ctm, block = f"{short}_ctm{merge_index}", f"{short}_block{merge_index}"
            merge = f"levels.{merge_index + 1}.{side}_merge"
            key_map.rename_module(f"{ctm}.conv.conv", f"{merge}.merge.conv", params=("weight",))
            key_map.rename_module(f"{ctm}.norm", f"{merge}.merge.norm")
            key_map.rename_module(f"{ctm}.score", f"{merge}.merge.score")
            key_map.rename_module(f"{block}.norm1", f"{merge}.attention.norm")
            key_map.rename_module(f"{block}.attn.q", f"{merge}.attention.query")
            key_map.rename_module(f"{block}.attn.kv", f"{merge}.attention.key_value")
            key_map.rename_module(f"{block}.attn.proj", f"{merge}.attention.out_proj")
    estimators = {
        "banzhafmodel.": "levels.0.banzhaf_student.",
        "banzhafmodel0.": "levels.1.banzhaf_student.",
        "banzhafmodel1.": "levels.2.banzhaf_student.",
        "banzhafteacher.": "banzhaf_teacher.",
    }
    for source, target in estimators.items():
        key_map.include(_estimator_key_map(), source, target)
    if config.temporal_module == "seqTransf":
        key_map.renamed["frame_position_embeddings.weight"] = "temporal.frame_position_embeddings.weight"
        for layer in range(config.temporal_num_layers):
            key_map.add_residual_block(f"transformerClip.resblocks.{layer}", f"temporal.encoder.layers.{layer}")
    elif config.temporal_module == "seqLSTM":
        key_map.rename_module("lstm_visual", "temporal.lstm", params=LSTM_PARAMS)
        # The official code creates frame position embeddings for its LSTM too, and never adds them.
        key_map.unused.add("frame_position_embeddings.weight")
    return key_map


def _qa_key_map(config: HBIConfig) -> KeyMap:
    """The official video QA model: the HBI layout plus, per level (suffixed as the weight heads),
    pooling weights `t_weight` / `v_weight`, projections `t_proj` / `v_proj` and `classifier`."""
    key_map = _hbi_key_map(config)
    for level, suffix in enumerate(OFFICIAL_LEVEL_SUFFIXES):
        head = f"answer_heads.{level}"
        for side, short in (("text", "t"), ("video", "v")):
            key_map.rename_module(f"{short}_weight{suffix}.0", f"{head}.{side}_pooling.fc_in")
            key_map.rename_module(f"{short}_weight{suffix}.2", f"{head}.{side}_pooling.fc_out")
            key_map.rename_module(f"{short}_proj{suffix}", f"{head}.{side}_projection")
        key_map.rename_module(f"classifier{suffix}.0", f"{head}.classifier.fc_in")
        key_map.rename_module(f"classifier{suffix}.2", f"{head}.classifier.fc_out")
    return key_map


# --------------------------------------------------------------------------------------------
# Reading the architecture from the weights
# --------------------------------------------------------------------------------------------
def _strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state_dict and all(key.startswith(DDP_PREFIX) for key in state_dict):
        return {key[len(DDP_PREFIX) :]: tensor for key, tensor in state_dict.items()}
    return dict(state_dict)


def _sub_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: tensor for key, tensor in state_dict.items() if key.startswith(prefix)}


def _count_layers(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".", 1)[0] for key in state_dict if key.startswith(prefix)})


def _tensor(state_dict: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"{source} has no `{key}`, which gives the size of the model")
    return state_dict[key]


def _clip_heads(width: int, tower: str) -> int:
    if width % CLIP_HEAD_WIDTH:
        raise ValueError(
            f"the {tower} width {width} is not a multiple of {CLIP_HEAD_WIDTH}, the head width of OpenAI CLIP"
        )
    return width // CLIP_HEAD_WIDTH


def _clip_architecture(clip_state_dict: Mapping[str, torch.Tensor], source: str) -> dict:
    """`text_config`, `vision_config`, `projection_dim` and the temperature of a CLIP state dict
    (no prefix), read as OpenAI's `build_model` reads them."""
    if any(key.startswith("visual.attnpool.") for key in clip_state_dict):
        raise ValueError(f"{source} has a ResNet vision tower: only ViT CLIP checkpoints are supported")
    vocab_size = _tensor(clip_state_dict, "token_embedding.weight", source).shape[0]
    text_width = _tensor(clip_state_dict, "ln_final.weight", source).shape[0]
    patch_embedding = _tensor(clip_state_dict, "visual.conv1.weight", source)
    vision_width, patch_size = patch_embedding.shape[0], patch_embedding.shape[-1]
    num_patches = _tensor(clip_state_dict, "visual.positional_embedding", source).shape[0] - 1
    grid_size = round(num_patches**0.5)
    if grid_size**2 != num_patches:
        raise ValueError(f"{source}: {num_patches} patch positions do not make a square grid")
    projection_dim = _tensor(clip_state_dict, "text_projection", source).shape[1]
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=text_width,
        intermediate_size=4 * text_width,
        num_hidden_layers=_count_layers(clip_state_dict, "transformer.resblocks."),
        num_attention_heads=_clip_heads(text_width, "text"),
        max_position_embeddings=_tensor(clip_state_dict, "positional_embedding", source).shape[0],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=projection_dim,
        # OpenAI's end-of-text token is the last id of the vocabulary, start-of-text the one before.
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=0,
    )
    vision_config = dict(
        hidden_size=vision_width,
        intermediate_size=4 * vision_width,
        num_hidden_layers=_count_layers(clip_state_dict, "visual.transformer.resblocks."),
        num_attention_heads=_clip_heads(vision_width, "vision"),
        image_size=patch_size * grid_size,
        patch_size=patch_size,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=projection_dim,
    )
    return dict(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=projection_dim,
        logit_scale_init_value=float(_tensor(clip_state_dict, "logit_scale", source)),
    )


def _hbi_head_architecture(state_dict: Mapping[str, torch.Tensor], source: str) -> dict:
    """The sizes of the HBI heads of a full HBI state dict (no DDP prefix)."""
    architecture = dict(
        banzhaf_estimator_width=_tensor(state_dict, "banzhafteacher.cnn1.weight", source).shape[0]
    )
    num_temporal_layers = _count_layers(state_dict, "transformerClip.resblocks.")
    if num_temporal_layers:
        architecture.update(temporal_module="seqTransf", temporal_num_layers=num_temporal_layers)
    elif any(key.startswith("lstm_visual.") for key in state_dict):
        architecture.update(temporal_module="seqLSTM")
    else:
        # Official `meanP` and `None` both leave the frames as they are, and hold no weights.
        architecture.update(temporal_module="meanP")
    return architecture


def _checkpoint_kind(state_dict: Mapping[str, torch.Tensor], source: str) -> str:
    """`"hbi"`, `"hbi_qa"` or `"clip"`, for a state dict without DDP prefix; anything else is an error."""
    if f"{HBI_CLIP_PREFIX}visual.conv1.weight" in state_dict:
        return "hbi_qa" if QA_CLASSIFIER_OUTPUT in state_dict else "hbi"
    if "visual.conv1.weight" in state_dict:
        return "clip"
    if any(f"{prefix}cnn1.weight" in state_dict for prefix in ESTIMATOR_PREFIXES):
        raise ValueError(
            f"{source} is a Banzhaf estimator checkpoint: pass it as the estimator (`--estimator`), "
            "with a HBI or CLIP checkpoint as the checkpoint"
        )
    raise ValueError(
        f"{source} is neither a HBI checkpoint (expected `{HBI_CLIP_PREFIX}visual.conv1.weight`, with or "
        f"without `{DDP_PREFIX}`) nor an OpenAI CLIP checkpoint (expected `visual.conv1.weight`)"
    )


def _hbi_config(architecture: dict, hbi_overrides: dict, source: str) -> HBIConfig:
    """The config from the sizes read from the weights plus the caller's HBI hyper-parameters,
    which may not contradict the weights (the initial temperature is only a default)."""
    conflicts = [
        name
        for name, value in hbi_overrides.items()
        if name in architecture and name != "logit_scale_init_value" and value != architecture[name]
    ]
    if conflicts:
        raise ValueError(
            f"{source} fixes {', '.join(f'{name}={architecture[name]!r}' for name in conflicts)}; "
            f"got {', '.join(f'{name}={hbi_overrides[name]!r}' for name in conflicts)}"
        )
    return HBIConfig(**{**architecture, **hbi_overrides})


# --------------------------------------------------------------------------------------------
# Public conversion functions
# --------------------------------------------------------------------------------------------
def config_from_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "the state dict", **hbi_overrides
) -> HBIConfig:
    """The [`HBIConfig`] of a full HBI (retrieval or video QA) state dict or of an OpenAI CLIP
    state dict.

    All sizes come from the weights: CLIP's as OpenAI's `build_model` reads them, and for a HBI
    state dict the temporal module (`seqTransf` with as many layers as `transformerClip` holds,
    `seqLSTM`, or `meanP` when there are no temporal weights) and the estimator width.
    `hbi_overrides` sets the HBI hyper-parameters that weights cannot tell (merge ratios, level
    weights, loss weights, ..., and for a CLIP state dict the temporal module); the defaults are
    the official ones.
    """
    state_dict = _strip_ddp_prefix(state_dict)
    if _checkpoint_kind(state_dict, source) == "clip":
        return _hbi_config(_clip_architecture(state_dict, source), hbi_overrides, source)
    architecture = _clip_architecture(_sub_state_dict(state_dict, HBI_CLIP_PREFIX), source)
    architecture.update(_hbi_head_architecture(state_dict, source))
    return _hbi_config(architecture, hbi_overrides, source)


def convert_openai_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "the CLIP state dict"
) -> dict[str, torch.Tensor]:
    """An OpenAI CLIP state dict (keys without prefix) -> the CLIP part of a HBIModel state dict
    (`text_model.*`, `vision_model.*`, `text_projection.weight`, `visual_projection.weight`,
    `logit_scale`)."""
    key_map = _clip_key_map(
        _count_layers(state_dict, "transformer.resblocks."), _count_layers(state_dict, "visual.transformer.resblocks.")
    )
    return key_map.convert(state_dict, source)


def convert_estimator_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "the estimator state dict"
) -> dict[str, torch.Tensor]:
    """An official Banzhaf estimator checkpoint -> a `BanzhafEstimator` state dict.

    The estimator is taken at the top level or, when the file holds a larger model, under
    `banzhafteacher.` (else `banzhafmodel.`); the rest of such a model is not used, and logged.
    """
    state_dict = _strip_ddp_prefix(state_dict)
    prefix = next((p for p in ESTIMATOR_PREFIXES if f"{p}cnn1.weight" in state_dict), None)
    if prefix is None:
        raise ValueError(
            f"{source} holds no Banzhaf estimator: expected `cnn1.weight`, `cnn2.weight`, `Q`, `K`, `V` at "
            f"the top level or under one of {[p for p in ESTIMATOR_PREFIXES if p]}"
        )
    estimator = _sub_state_dict(state_dict, prefix)
    if len(estimator) < len(state_dict):
        logger.warning(
            "%s: using the estimator under `%s`; the other %d keys of the model around it are not used",
            source,
            prefix,
            len(state_dict) - len(estimator),
        )
    return _estimator_key_map().convert(estimator, source)


def load_estimator_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A `BanzhafEstimator` state dict from a safetensors file of one (as estimator pre-training
    saves it) or an official estimator checkpoint (`BanzhafModule` keys)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state_dict = load_file(str(path))
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if "conv_in.weight" in state_dict:
        return state_dict
    return convert_estimator_state_dict(state_dict, source=str(path))


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "the HBI state dict", **hbi_overrides
) -> tuple[HBIConfig, dict[str, torch.Tensor]]:
    """A full official HBI state dict (with or without `module.`) -> `(config, HBIModel state dict)`.

    Raises `ValueError` listing the keys when any source key has no place in HBIModel or any
    expected key is missing.
    """
    state_dict = _strip_ddp_prefix(state_dict)
    kind = _checkpoint_kind(state_dict, source)
    if kind == "clip":
        raise ValueError(
            f"{source} is an OpenAI CLIP checkpoint, not a HBI one: start a fresh HBI from it with "
            "`convert_checkpoint` (or use `convert_openai_clip_state_dict` for its CLIP part)"
        )
    if kind == "hbi_qa":
        raise ValueError(f"{source} is an official video QA checkpoint: convert it with `convert_official_qa_state_dict`")
    config = config_from_official_state_dict(state_dict, source, **hbi_overrides)
    return config, _hbi_key_map(config).convert(state_dict, source)


def convert_official_qa_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "the HBI video QA state dict", **hbi_overrides
) -> tuple[HBIConfig, dict[str, torch.Tensor]]:
    """A full official video QA state dict (`main_vqa.py`, with or without `module.`) ->
    `(config, HBIForVideoQuestionAnswering state dict)`.

    The config has the official QA settings (`VIDEO_QA_SETTINGS`) and as many answers as the
    classifiers have outputs, named by `id2label` / `label2id` when `hbi_overrides` give them (e.g.
    `**answer_label_maps("train_ans2label.json")`), generically otherwise. Raises
    `ValueError` listing the keys when any source key has no place or any expected key is missing.
    """
    state_dict = _strip_ddp_prefix(state_dict)
    if _checkpoint_kind(state_dict, source) != "hbi_qa":
        raise ValueError(f"{source} is not an official video QA checkpoint: it has no `{QA_CLASSIFIER_OUTPUT}`")
    num_answers = state_dict[QA_CLASSIFIER_OUTPUT].shape[0]
    id2label = hbi_overrides.get("id2label")
    if id2label is not None and len(id2label) != num_answers:
        raise ValueError(f"{source} answers with {num_answers} labels, but the answer vocabulary has {len(id2label)}")
    labels = {} if id2label is not None else {"num_labels": num_answers}
    config = config_from_official_state_dict(state_dict, source, **{**VIDEO_QA_SETTINGS, **labels, **hbi_overrides})
    converted = _qa_key_map(config).convert(state_dict, source)
    # The retrieval body sits under the QA model's base_model_prefix; the answer heads beside it.
    body = HBIForVideoQuestionAnswering.base_model_prefix
    return config, {key if key.startswith("answer_heads.") else f"{body}.{key}": tensor for key, tensor in converted.items()}


def _is_torchscript_archive(path: Path) -> bool:
    # Both torch.save and TorchScript write zip files; only TorchScript adds `constants.pkl`.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint file: `.safetensors`, a `torch.save`d state dict
    (loaded with `weights_only=True`), or a TorchScript archive such as OpenAI's released CLIP
    files (loaded with `torch.jit.load`: only use archives from a source you trust)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    if _is_torchscript_archive(path):
        with warnings.catch_warnings():
            # OpenAI released CLIP only as TorchScript archives: there is no other way to read them.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
            return dict(torch.jit.load(path, map_location="cpu").state_dict())
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state_dict)


def _load_checked(model: HBIModel, converted: Mapping[str, torch.Tensor], source: str, fresh_prefixes=()) -> None:
    """Loads `converted` into `model` after checking names and shapes; only keys under
    `fresh_prefixes` may be left out (they keep their initialisation)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in converted and not key.startswith(fresh_prefixes)]
    unexpected = [key for key in converted if key not in expected]
    wrong_shapes = [
        f"{key} {tuple(tensor.shape)} (model {tuple(expected[key].shape)})"
        for key, tensor in converted.items()
        if key in expected and tensor.shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shapes:
        raise ValueError(
            f"{source} does not fit the HBIModel built from it:"
            + _key_list("key(s) missing", missing)
            + _key_list("key(s) the model does not have", unexpected)
            + _key_list("tensor(s) of the wrong shape", wrong_shapes)
        )
    model.load_state_dict(converted, strict=not fresh_prefixes)


def _describe(config: HBIConfig) -> str:
    text, vision = config.text_config, config.vision_config
    temporal = config.temporal_module
    if temporal == "seqTransf":
        temporal += f" ({config.temporal_num_layers} layers)"
    return (
        f"  text: width {text.hidden_size}, {text.num_hidden_layers} layers, {text.num_attention_heads} heads, "
        f"context {text.max_position_embeddings}, vocabulary {text.vocab_size}\n"
        f"  vision: width {vision.hidden_size}, {vision.num_hidden_layers} layers, {vision.num_attention_heads} "
        f"heads, patch {vision.patch_size}, image {vision.image_size}\n"
        f"  joint embedding {config.projection_dim}, temporal module {temporal}, "
        f"Banzhaf estimator width {config.banzhaf_estimator_width}"
    )


def convert_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    estimator: str | Path | None = None,
    report: Callable[[str], None] = logger.info,
    answers: str | Path | None = None,
    **hbi_overrides,
) -> HBIModel:
    """Converts `checkpoint` (a full HBI checkpoint, retrieval or video QA, or an OpenAI CLIP one to
    start a fresh HBI) and optionally an official Banzhaf `estimator` checkpoint (loaded into the
    teacher) into a HBIModel (a HBIForVideoQuestionAnswering for a QA checkpoint), saves it to the
    folder `output` and returns it. `answers` is the answer vocabulary file of a QA checkpoint
    (`train_ans2label.json`, see `read_answer_vocabulary`), which names its labels. `report`
    receives a summary; `hbi_overrides` are HBI hyper-parameters (see
    `config_from_official_state_dict`)."""
    source = str(checkpoint)
    state_dict = _strip_ddp_prefix(load_official_checkpoint(checkpoint))
    kind = _checkpoint_kind(state_dict, source)
    if answers is not None:
        if kind != "hbi_qa":
            raise ValueError(f"an answer vocabulary is for a video QA checkpoint, and {source} is not one")
        hbi_overrides = {**hbi_overrides, **answer_label_maps(answers)}

    teacher = None
    if estimator is not None:
        teacher = convert_estimator_state_dict(load_official_checkpoint(estimator), str(estimator))
        if kind == "clip":
            hbi_overrides = {"banzhaf_estimator_width": teacher["conv_in.weight"].shape[0], **hbi_overrides}

    model_class = HBIForVideoQuestionAnswering if kind == "hbi_qa" else HBIModel
    fresh_prefixes = ()
    if kind == "hbi":
        config, converted = convert_official_state_dict(state_dict, source, **hbi_overrides)
    elif kind == "hbi_qa":
        config, converted = convert_official_qa_state_dict(state_dict, source, **hbi_overrides)
    else:
        config = config_from_official_state_dict(state_dict, source, **hbi_overrides)
        if config.temporal_module == "seqTransf" and config.temporal_num_layers > config.text_config.num_hidden_layers:
            raise ValueError(
                f"temporal_num_layers {config.temporal_num_layers} exceeds the {config.text_config.num_hidden_layers} "
                f"text layers of {source} that initialise the temporal transformer"
            )
        converted = convert_openai_clip_state_dict(state_dict, source)
        fresh_prefixes = HBI_HEAD_PREFIXES
    if teacher is not None:
        body = f"{model_class.base_model_prefix}." if model_class is HBIForVideoQuestionAnswering else ""
        converted.update({f"{body}banzhaf_teacher.{key}": tensor for key, tensor in teacher.items()})

    model = model_class(config)
    _load_checked(model, converted, source, fresh_prefixes)
    if kind == "clip" and config.temporal_module == "seqTransf":
        # The official initialisation: frame positions and temporal layers from the text tower.
        model.init_temporal_from_text_tower()
    model.save_pretrained(output)

    kind_name = {"hbi": "HBI", "hbi_qa": "HBI video QA", "clip": "OpenAI CLIP"}[kind]
    lines = [f"Converted {source} ({kind_name} checkpoint):", _describe(config)]
    lines.append(f"  {len(state_dict)} source tensors -> {len(converted)} {model_class.__name__} tensors")
    if kind == "hbi_qa":
        named = f"named from {answers}" if answers is not None else "named generically (pass the answer vocabulary)"
        lines.append(f"  {config.num_labels} answers, {named}")
    if kind == "clip":
        lines.append("  HBI heads freshly initialised; temporal module from the CLIP text tower")
    if estimator is not None:
        lines.append(f"  Banzhaf teacher from {estimator}")
    lines.append(f"Saved to {output}")
    report("\n".join(lines))
    return model
