"""Conversion of official HBI / OpenAI CLIP checkpoints, checked against state dicts laid out as
the official code saves them (built here, tiny and random) and against an independent OpenAI-CLIP
forward pass written with plain torch ops."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch, tiny_processor
from torch import nn
from transformers import AutoModel

from hbi_transformers import HBIModel, HBIProcessor
from hbi_transformers.models.hbi.convert_hbi_original_to_hf import (
    config_from_official_state_dict,
    convert_checkpoint,
    convert_estimator_state_dict,
    convert_official_state_dict,
    convert_openai_clip_state_dict,
    load_official_checkpoint,
)
from hbi_transformers.cli.convert import run as convert_command

# Widths are multiples of 64 so that OpenAI's rule heads = width // 64 holds (2 heads each);
# the text width equals the joint size D, as in every OpenAI CLIP, for the temporal module.
EMBED_DIM = TEXT_WIDTH = VISION_WIDTH = 128
TEXT_LAYERS, VISION_LAYERS, TEMPORAL_LAYERS = 2, 2, 2
VOCAB_SIZE, CONTEXT_LENGTH = 100, 16  # conftest.make_batch uses ids 98 / 99 for SOT / EOT
PATCH_SIZE, IMAGE_SIZE = 16, 32
ESTIMATOR_WIDTH = 16
BATCH_NORM_KEYS = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
OFFICIAL_ESTIMATORS = ("banzhafmodel", "banzhafmodel0", "banzhafmodel1", "banzhafteacher")
# Official suffixes of the entity, action and event weight heads (`text_weight_fc`, `..._fc0`, `..._fc1`).
OFFICIAL_LEVEL_SUFFIXES = ("", "0", "1")


# --------------------------------------------------------------------------------------------
# Official layouts, with the shapes of the official modules
# --------------------------------------------------------------------------------------------
class RandomTensors:
    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, *shape, scale=0.1):
        return torch.randn(*shape, generator=self.generator) * scale

    def norm(self, prefix, width):
        return {f"{prefix}.weight": 1 + self(width), f"{prefix}.bias": self(width)}

    def linear(self, prefix, fan_in, fan_out):
        return {f"{prefix}.weight": self(fan_out, fan_in), f"{prefix}.bias": self(fan_out)}


def residual_block(rand, prefix, width):
    """An OpenAI CLIP `ResidualAttentionBlock` (nn.MultiheadAttention + QuickGELU MLP)."""
    return {
        f"{prefix}.attn.in_proj_weight": rand(3 * width, width),
        f"{prefix}.attn.in_proj_bias": rand(3 * width),
        **rand.linear(f"{prefix}.attn.out_proj", width, width),
        **rand.norm(f"{prefix}.ln_1", width),
        **rand.linear(f"{prefix}.mlp.c_fc", width, 4 * width),
        **rand.linear(f"{prefix}.mlp.c_proj", 4 * width, width),
        **rand.norm(f"{prefix}.ln_2", width),
    }


def openai_clip_state_dict(seed=0):
    rand = RandomTensors(seed)
    num_positions = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1
    state_dict = {
        "positional_embedding": rand(CONTEXT_LENGTH, TEXT_WIDTH),
        "text_projection": rand(TEXT_WIDTH, EMBED_DIM),
        "logit_scale": torch.tensor(math.log(100.0)),
        "token_embedding.weight": rand(VOCAB_SIZE, TEXT_WIDTH),
        **rand.norm("ln_final", TEXT_WIDTH),
        "visual.class_embedding": rand(VISION_WIDTH),
        "visual.positional_embedding": rand(num_positions, VISION_WIDTH),
        "visual.proj": rand(VISION_WIDTH, EMBED_DIM),
        "visual.conv1.weight": rand(VISION_WIDTH, 3, PATCH_SIZE, PATCH_SIZE),
        **rand.norm("visual.ln_pre", VISION_WIDTH),
        **rand.norm("visual.ln_post", VISION_WIDTH),
    }
    for layer in range(TEXT_LAYERS):
        state_dict.update(residual_block(rand, f"transformer.resblocks.{layer}", TEXT_WIDTH))
    for layer in range(VISION_LAYERS):
        state_dict.update(residual_block(rand, f"visual.transformer.resblocks.{layer}", VISION_WIDTH))
    return state_dict


def banzhaf_module_state_dict(seed=0, width=ESTIMATOR_WIDTH):
    """The official `BanzhafModule`, with its never-used BatchNorm."""
    rand = RandomTensors(seed)
    return {
        "cnn1.weight": rand(width, 1, 3, 3),
        "cnn1.bias": rand(width),
        "bn.weight": 1 + rand(width),
        "bn.bias": rand(width),
        "bn.running_mean": rand(width),
        "bn.running_var": 1 + rand(width).abs(),
        "bn.num_batches_tracked": torch.tensor(7),
        "cnn2.weight": rand(1, width, 3, 3),
        "cnn2.bias": rand(1),
        "Q": rand(width, width),
        "K": rand(width, width),
        "V": rand(width, width),
    }


def official_hbi_state_dict(seed=0, temporal_module="seqTransf", prefix=""):
    """`HBI(...).state_dict()` of the official code, for the tiny sizes above."""
    rand = RandomTensors(seed + 1)
    dim = EMBED_DIM
    state_dict = {f"clip.{key}": tensor for key, tensor in openai_clip_state_dict(seed).items()}
    for suffix in OFFICIAL_LEVEL_SUFFIXES:
        for side in ("text", "video"):
            state_dict.update(rand.linear(f"{side}_weight_fc{suffix}.0", dim, 2 * dim))
            state_dict.update(rand.linear(f"{side}_weight_fc{suffix}.2", 2 * dim, 1))
    if temporal_module in ("seqTransf", "seqLSTM"):
        state_dict["frame_position_embeddings.weight"] = rand(CONTEXT_LENGTH, dim)
    if temporal_module == "seqTransf":
        for layer in range(TEMPORAL_LAYERS):
            state_dict.update(residual_block(rand, f"transformerClip.resblocks.{layer}", dim))
    if temporal_module == "seqLSTM":
        for kind in ("ih", "hh"):
            state_dict[f"lstm_visual.weight_{kind}_l0"] = rand(4 * dim, dim)
            state_dict[f"lstm_visual.bias_{kind}_l0"] = rand(4 * dim)
    for index in range(2):
        for side in ("t", "v"):
            state_dict[f"{side}_ctm{index}.conv.conv.weight"] = rand(dim, dim, 3)
            state_dict.update(rand.norm(f"{side}_ctm{index}.norm", dim))
            state_dict.update(rand.linear(f"{side}_ctm{index}.score", dim, 1))
            state_dict.update(rand.norm(f"{side}_block{index}.norm1", dim))
            state_dict.update(rand.linear(f"{side}_block{index}.attn.q", dim, dim))
            state_dict.update(rand.linear(f"{side}_block{index}.attn.kv", dim, 2 * dim))
            state_dict.update(rand.linear(f"{side}_block{index}.attn.proj", dim, dim))
    for index, name in enumerate(OFFICIAL_ESTIMATORS):
        state_dict.update({f"{name}.{key}": t for key, t in banzhaf_module_state_dict(seed + 10 + index).items()})
    return {prefix + key: tensor for key, tensor in state_dict.items()}


def save_torchscript_archive(state_dict, path):
    """A TorchScript archive whose `.state_dict()` is `state_dict`, as OpenAI's released CLIP files."""
    root = nn.Module()
    for key, tensor in state_dict.items():
        *module_names, name = key.split(".")
        module = root
        for module_name in module_names:
            if not hasattr(module, module_name):
                module.add_module(module_name, nn.Module())
            module = getattr(module, module_name)
        module.register_buffer(name, tensor)
    torch.jit.save(torch.jit.script(root), path)


# --------------------------------------------------------------------------------------------
# Where every HBIModel tensor must come from, written target -> source (the converter goes the
# other way), and an independent OpenAI CLIP forward pass
# --------------------------------------------------------------------------------------------
def level_suffix(level):
    return OFFICIAL_LEVEL_SUFFIXES[int(level)]


MERGE_SOURCES = {
    "merge.conv": "ctm{}.conv.conv",
    "merge.norm": "ctm{}.norm",
    "merge.score": "ctm{}.score",
    "attention.norm": "block{}.norm1",
    "attention.query": "block{}.attn.q",
    "attention.key_value": "block{}.attn.kv",
    "attention.out_proj": "block{}.attn.proj",
}
TARGET_TO_SOURCE = [
    (r"^text_model\.encoder\.layers\.", "clip.transformer.resblocks."),
    (r"^vision_model\.encoder\.layers\.", "clip.visual.transformer.resblocks."),
    (r"^temporal\.encoder\.layers\.", "transformerClip.resblocks."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
    (r"^text_model\.embeddings\.token_embedding\.weight$", "clip.token_embedding.weight"),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "clip.positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "clip.ln_final."),
    (r"^text_projection\.weight$", "clip.text_projection"),
    (r"^vision_model\.embeddings\.class_embedding$", "clip.visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "clip.visual.conv1.weight"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "clip.visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "clip.visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "clip.visual.ln_post."),
    (r"^visual_projection\.weight$", "clip.visual.proj"),
    (r"^logit_scale$", "clip.logit_scale"),
    (r"^temporal\.frame_position_embeddings\.", "frame_position_embeddings."),
    (r"^temporal\.lstm\.", "lstm_visual."),
    (r"^levels\.(\d)\.(text|video)_weight_head\.fc_in\.", lambda m: f"{m[2]}_weight_fc{level_suffix(m[1])}.0."),
    (r"^levels\.(\d)\.(text|video)_weight_head\.fc_out\.", lambda m: f"{m[2]}_weight_fc{level_suffix(m[1])}.2."),
    (
        r"^levels\.(\d)\.(text|video)_merge\.(\w+\.\w+)\.",
        lambda m: f"{m[2][0]}_" + MERGE_SOURCES[m[3]].format(int(m[1]) - 1) + ".",
    ),
    (r"^levels\.(\d)\.banzhaf_student\.", lambda m: f"{OFFICIAL_ESTIMATORS[int(m[1])]}."),
    (r"^banzhaf_teacher\.", "banzhafteacher."),
    (r"\.conv_in\.", ".cnn1."),
    (r"\.conv_out\.", ".cnn2."),
    (r"\.query$", ".Q"),
    (r"\.key$", ".K"),
    (r"\.value$", ".V"),
]
FUSED_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def official_source(official, target):
    """`(source key, expected tensor)` of HBIModel tensor `target`."""
    fused = FUSED_QKV.match(target)
    key = f"{fused[1]}.attn.in_proj_{fused[3]}" if fused else target
    for pattern, replacement in TARGET_TO_SOURCE:
        key = re.sub(pattern, replacement, key)
    tensor = official[key]
    if fused:
        tensor = tensor.chunk(3)["qkv".index(fused[2])]
    if target in ("text_projection.weight", "visual_projection.weight"):
        tensor = tensor.t()
    return key, tensor


def layer_norm(x, state_dict, prefix):
    return F.layer_norm(x, x.shape[-1:], state_dict[f"{prefix}.weight"], state_dict[f"{prefix}.bias"], eps=1e-5)


def residual_blocks(x, state_dict, prefix, num_layers, attention_bias):
    """OpenAI CLIP residual attention blocks on `[batch, length, width]` with an additive
    `[batch, length, length]` attention bias."""
    batch_size, length, width = x.shape
    num_heads = width // 64

    def heads(t):
        return t.view(batch_size, length, num_heads, -1).transpose(1, 2)

    for layer in range(num_layers):
        block_prefix = f"{prefix}.{layer}."
        block = {key[len(block_prefix) :]: t for key, t in state_dict.items() if key.startswith(block_prefix)}
        h = layer_norm(x, block, "ln_1")
        query, key, value = map(heads, (h @ block["attn.in_proj_weight"].t() + block["attn.in_proj_bias"]).chunk(3, -1))
        logits = query @ key.transpose(-1, -2) / math.sqrt(width // num_heads) + attention_bias[:, None]
        attended = (logits.softmax(-1) @ value).transpose(1, 2).reshape(batch_size, length, width)
        x = x + attended @ block["attn.out_proj.weight"].t() + block["attn.out_proj.bias"]
        h = layer_norm(x, block, "ln_2") @ block["mlp.c_fc.weight"].t() + block["mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ block["mlp.c_proj.weight"].t() + block["mlp.c_proj.bias"]
    return x


def reference_text_tokens(clip, input_ids, attention_mask):
    length = input_ids.shape[1]
    x = clip["token_embedding.weight"][input_ids] + clip["positional_embedding"][:length]
    causal = torch.full((length, length), float("-inf")).triu(1)
    bias = torch.where(attention_mask[:, None, :] > 0, causal, torch.tensor(float("-inf")))
    x = residual_blocks(x, clip, "transformer.resblocks", TEXT_LAYERS, bias)
    return layer_norm(x, clip, "ln_final") @ clip["text_projection"]


def reference_frames(clip, images):
    patches = F.conv2d(images, clip["visual.conv1.weight"], stride=PATCH_SIZE).flatten(2).transpose(1, 2)
    class_token = clip["visual.class_embedding"].expand(images.shape[0], 1, -1)
    x = torch.cat([class_token, patches], dim=1) + clip["visual.positional_embedding"]
    x = layer_norm(x, clip, "visual.ln_pre")
    x = residual_blocks(x, clip, "visual.transformer.resblocks", VISION_LAYERS, torch.zeros(1, x.shape[1], x.shape[1]))
    return layer_norm(x[:, 0], clip, "visual.ln_post") @ clip["visual.proj"]


def converted_model(state_dict, **hbi_overrides):
    config, converted = convert_official_state_dict(state_dict, **hbi_overrides)
    model = HBIModel(config)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def seeded_forward(model, batch):
    # Clustering adds 1e-6 noise to densities: seed it so two runs are comparable.
    torch.manual_seed(0)
    with torch.no_grad():
        return model(**batch)


# --------------------------------------------------------------------------------------------
# Full HBI checkpoints
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prefix, temporal_module", [("", "seqTransf"), ("module.", "seqTransf"), ("", "seqLSTM"), ("", "meanP")]
)
def test_every_tensor_lands_in_its_place(prefix, temporal_module):
    official = official_hbi_state_dict(temporal_module=temporal_module, prefix=prefix)
    config, converted = convert_official_state_dict(official)

    text, vision = config.text_config, config.vision_config
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (100, 128, 2, 2)
    assert (text.max_position_embeddings, text.bos_token_id, text.eos_token_id, text.pad_token_id) == (16, 98, 99, 0)
    assert (text.intermediate_size, text.hidden_act, text.layer_norm_eps) == (512, "quick_gelu", 1e-5)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (128, 2, 2)
    assert (vision.patch_size, vision.image_size, vision.intermediate_size) == (16, 32, 512)
    assert (config.projection_dim, config.banzhaf_estimator_width, config.merge_attention_heads) == (128, 16, 8)
    assert config.temporal_module == temporal_module
    if temporal_module == "seqTransf":
        assert config.temporal_num_layers == TEMPORAL_LAYERS
    assert config.logit_scale_init_value == pytest.approx(math.log(100.0))

    model = HBIModel(config)
    model.load_state_dict(converted, strict=True)
    official = {key[len(prefix) :]: tensor for key, tensor in official.items()}
    used = set()
    for target, tensor in model.state_dict().items():
        source, expected = official_source(official, target)
        assert torch.equal(tensor, expected), target
        used.add(source)
    unused = set(official) - used
    if temporal_module == "seqLSTM":
        # The official code creates frame position embeddings for its LSTM and never adds them.
        unused.remove("frame_position_embeddings.weight")
    assert unused == {f"{name}.{key}" for name in OFFICIAL_ESTIMATORS for key in BATCH_NORM_KEYS}


def test_encoders_match_an_independent_openai_clip_forward():
    official = official_hbi_state_dict()
    clip = {key[len("clip.") :]: tensor for key, tensor in official.items() if key.startswith("clip.")}
    model = converted_model(official)
    batch = make_batch(n_text=3, n_video=2, words=10, frames=4, image_size=IMAGE_SIZE)

    with torch.no_grad():
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"]).text_embeds
        frames = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"]).frame_embeds
    expected_text = reference_text_tokens(clip, batch["input_ids"], batch["attention_mask"])
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(text[valid], expected_text[valid], atol=1e-5, rtol=1e-5)
    expected_frames = reference_frames(clip, batch["pixel_values_videos"].flatten(0, 1))
    torch.testing.assert_close(frames.flatten(0, 1), expected_frames, atol=1e-5, rtol=1e-5)


def test_unknown_key_is_an_error_that_names_it():
    official = official_hbi_state_dict()
    official["t_ctm0.mystery.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"no place in HBIModel: t_ctm0\.mystery\.weight"):
        convert_official_state_dict(official)


@pytest.mark.parametrize("key", ["v_block1.attn.kv.bias", "clip.visual.transformer.resblocks.1.attn.in_proj_bias"])
def test_missing_key_is_an_error_that_names_it(key):
    official = official_hbi_state_dict(prefix="module.")
    del official[f"module.{key}"]
    with pytest.raises(ValueError, match=f"missing: {re.escape(key)}"):
        convert_official_state_dict(official)


def test_missing_size_key_is_an_error_that_names_it():
    official = official_hbi_state_dict()
    del official["clip.ln_final.weight"]
    with pytest.raises(ValueError, match=r"no `ln_final\.weight`"):
        config_from_official_state_dict(official)


def test_hyper_parameters_pass_through_but_cannot_contradict_the_weights():
    official = official_hbi_state_dict()
    config = config_from_official_state_dict(official, text_merge_ratios=[0.25, 0.125], level_weights=[0.4, 0.4, 0.2])
    assert config.text_merge_ratios == [0.25, 0.125]
    assert config.level_weights == [0.4, 0.4, 0.2]
    with pytest.raises(ValueError, match="temporal_num_layers=2"):
        config_from_official_state_dict(official, temporal_num_layers=4)


def test_clip_checkpoint_is_not_a_hbi_checkpoint():
    with pytest.raises(ValueError, match="OpenAI CLIP checkpoint"):
        convert_official_state_dict(openai_clip_state_dict())


# --------------------------------------------------------------------------------------------
# Files: fresh HBI from CLIP, estimators, loading, CLI
# --------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("file_format", ["state_dict", "torchscript"])
def test_fresh_hbi_from_openai_clip(tmp_path, file_format):
    clip = openai_clip_state_dict()
    path = tmp_path / "ViT-tiny.pt"
    # OpenAI's TorchScript archives keep their hyper-parameters next to the weights.
    metadata = {
        "input_resolution": torch.tensor(IMAGE_SIZE),
        "context_length": torch.tensor(CONTEXT_LENGTH),
        "vocab_size": torch.tensor(VOCAB_SIZE),
    }
    if file_format == "torchscript":
        save_torchscript_archive({**clip, **metadata}, path)
    else:
        torch.save(clip, path)
    assert set(load_official_checkpoint(path)) >= set(clip)

    model = convert_checkpoint(path, tmp_path / "out", temporal_num_layers=TEMPORAL_LAYERS)

    state = model.state_dict()
    for key, tensor in convert_openai_clip_state_dict(clip).items():
        assert torch.equal(state[key], tensor), key
    assert torch.equal(model.text_projection.weight, clip["text_projection"].t())
    assert torch.equal(model.temporal.frame_position_embeddings.weight, clip["positional_embedding"])
    for temporal_layer, text_layer in zip(model.temporal.encoder.layers, model.text_model.encoder.layers):
        for (name, temporal_tensor), text_tensor in zip(
            temporal_layer.state_dict().items(), text_layer.state_dict().values()
        ):
            assert torch.equal(temporal_tensor, text_tensor), name
    # HBI heads as HBIModel initialises them: e.g. weight-head biases at zero.
    assert torch.count_nonzero(model.levels[0].text_weight_head.fc_in.bias) == 0
    assert model.config.temporal_num_layers == TEMPORAL_LAYERS


def test_fresh_hbi_needs_enough_text_layers_for_the_temporal_module(tmp_path):
    torch.save(openai_clip_state_dict(), tmp_path / "clip.pt")
    with pytest.raises(ValueError, match="temporal_num_layers 4 exceeds the 2 text layers"):
        convert_checkpoint(tmp_path / "clip.pt", tmp_path / "out")


@pytest.mark.parametrize("layout", ["bare", "module", "inside_a_model"])
def test_estimator_layouts(layout):
    estimator = banzhaf_module_state_dict(seed=3)
    if layout == "module":
        estimator = {f"module.{key}": tensor for key, tensor in estimator.items()}
    if layout == "inside_a_model":
        estimator = {
            **{f"banzhafteacher.{key}": tensor for key, tensor in estimator.items()},
            "clip.logit_scale": torch.tensor(1.0),
        }
    converted = convert_estimator_state_dict(estimator)
    original = banzhaf_module_state_dict(seed=3)
    assert set(converted) == {
        "conv_in.weight", "conv_in.bias", "conv_out.weight", "conv_out.bias", "query", "key", "value"
    }
    assert torch.equal(converted["conv_in.weight"], original["cnn1.weight"])
    assert torch.equal(converted["value"], original["V"])


@pytest.mark.parametrize("checkpoint", ["hbi", "clip"])
def test_estimator_lands_in_the_teacher(tmp_path, checkpoint):
    width = 8  # differs from the HBI checkpoint's 16: a fresh HBI takes the estimator's width
    estimator = banzhaf_module_state_dict(seed=5, width=width if checkpoint == "clip" else ESTIMATOR_WIDTH)
    torch.save({f"module.{key}": tensor for key, tensor in estimator.items()}, tmp_path / "estimator.bin")
    state_dict = official_hbi_state_dict() if checkpoint == "hbi" else openai_clip_state_dict()
    torch.save(state_dict, tmp_path / "checkpoint.bin")

    model = convert_checkpoint(
        tmp_path / "checkpoint.bin", tmp_path / "out", estimator=tmp_path / "estimator.bin", temporal_num_layers=2
    )
    teacher = model.banzhaf_teacher
    assert torch.equal(teacher.conv_in.weight, estimator["cnn1.weight"])
    assert torch.equal(teacher.conv_out.bias, estimator["cnn2.bias"])
    assert torch.equal(teacher.query, estimator["Q"]) and torch.equal(teacher.key, estimator["K"])
    if checkpoint == "clip":
        assert model.config.banzhaf_estimator_width == width


def test_estimator_of_the_wrong_width_is_an_error(tmp_path):
    torch.save(banzhaf_module_state_dict(width=8), tmp_path / "estimator.bin")
    torch.save(official_hbi_state_dict(), tmp_path / "hbi.bin")
    with pytest.raises(ValueError, match=r"wrong shape: banzhaf_teacher\.conv_in\.bias \(8,\) \(model \(16,\)\)"):
        convert_checkpoint(tmp_path / "hbi.bin", tmp_path / "out", estimator=tmp_path / "estimator.bin")


def test_files_that_are_not_checkpoints_are_named_in_the_error(tmp_path):
    torch.save(banzhaf_module_state_dict(), tmp_path / "estimator.bin")
    with pytest.raises(ValueError, match="estimator.bin is a Banzhaf estimator checkpoint: pass it as the estimator"):
        convert_checkpoint(tmp_path / "estimator.bin", tmp_path / "out")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match=r"other.bin is neither a HBI checkpoint .* nor an OpenAI CLIP"):
        convert_checkpoint(tmp_path / "other.bin", tmp_path / "out")


def test_cli_end_to_end(tmp_path, capsys):
    official = official_hbi_state_dict(prefix="module.")
    checkpoint, output = tmp_path / "pytorch_model.bin.4", tmp_path / "hbi-converted"
    torch.save(official, checkpoint)

    convert_command(["--checkpoint", str(checkpoint), "--output", str(output), "--level-weights", "0.4", "0.4", "0.2"])

    summary = capsys.readouterr().out
    assert "HBI checkpoint" in summary and "text: width 128, 2 layers, 2 heads" in summary
    assert f"{len(official)} source tensors" in summary
    reloaded = AutoModel.from_pretrained(output).eval()
    assert isinstance(reloaded, HBIModel)
    assert reloaded.config.level_weights == [0.4, 0.4, 0.2]
    in_memory = converted_model(official, level_weights=[0.4, 0.4, 0.2])
    expected_state = in_memory.state_dict()
    for key, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected_state[key]), key
    batch = make_batch(n_text=3, n_video=3, words=10, frames=6, image_size=IMAGE_SIZE)
    expected, actual = seeded_forward(in_memory, batch), seeded_forward(reloaded, batch)
    # Equal weights, but from_pretrained may leave them at unaligned (memory-mapped) addresses,
    # where CPU kernels round differently in the last bits.
    torch.testing.assert_close(actual.logits_per_text, expected.logits_per_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual.level_logits_per_text, expected.level_logits_per_text, atol=1e-5, rtol=1e-5)


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    clip = openai_clip_state_dict()
    save_file(clip, tmp_path / "clip.safetensors")
    loaded = load_official_checkpoint(tmp_path / "clip.safetensors")
    assert loaded.keys() == clip.keys() and all(torch.equal(loaded[key], clip[key]) for key in clip)


def test_a_converted_checkpoint_gets_its_runs_processor(tmp_path):
    checkpoint, output = tmp_path / "pytorch_model.bin.4", tmp_path / "hbi-activitynet"
    torch.save(official_hbi_state_dict(), checkpoint)
    processor, _ = tiny_processor(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(SystemExit):
        convert_command(["--checkpoint", str(checkpoint), "--output", str(output), "--recipe", "activitynet"])
    convert_command(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "converted"), "--recipe",
                     "activitynet", "--tokenizer", str(tmp_path / "tokenizer")])
    saved = HBIProcessor.from_pretrained(tmp_path / "converted")
    assert saved.max_words == 64 and saved.video_processor.max_frames == 64
    assert saved.video_processor.frame_sampling == "per_second"
