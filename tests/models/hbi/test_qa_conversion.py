"""Conversion of the official video question answering checkpoint (`main_vqa.py`, the HBI of
`modeling_qa.py`), checked on state dicts laid out as that model saves them (built here, tiny and
random): every tensor in its place, the answer heads computing what the official heads compute
from the official tensors, and the command line with an answer vocabulary."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch
from test_conversion import (
    BATCH_NORM_KEYS,
    EMBED_DIM,
    IMAGE_SIZE,
    OFFICIAL_ESTIMATORS,
    OFFICIAL_LEVEL_SUFFIXES,
    RandomTensors,
    official_hbi_state_dict,
    official_source,
)
from transformers import AutoModelForVisualQuestionAnswering

from hbi_transformers.models.hbi.convert_hbi_original_to_hf import (
    convert_checkpoint,
    convert_official_qa_state_dict,
    convert_official_state_dict,
)
from hbi_transformers.cli.convert import run as convert_command
from hbi_transformers.models.hbi.modeling_hbi_qa import HBIForVideoQuestionAnswering

NUM_ANSWERS = 5
ANSWERS = ["red", "green", "blue", "two", "yes"]
# Where each answer head tensor comes from: `answer_heads.{level}.<target>` <- `<source>` with the
# level's official suffix ("", "0", "1").
ANSWER_HEAD_SOURCES = {
    "text_pooling.fc_in": "t_weight{}.0",
    "text_pooling.fc_out": "t_weight{}.2",
    "video_pooling.fc_in": "v_weight{}.0",
    "video_pooling.fc_out": "v_weight{}.2",
    "text_projection": "t_proj{}",
    "video_projection": "v_proj{}",
    "classifier.fc_in": "classifier{}.0",
    "classifier.fc_out": "classifier{}.2",
}


def official_qa_state_dict(seed=0, prefix=""):
    """`HBI(...).state_dict()` of the official `modeling_qa.py`: the retrieval layout (with the
    seqTransf temporal module it always has) plus, per level, `t_weight` / `v_weight`
    (Linear(D, D), ReLU, Linear(D, 1)), `t_proj` / `v_proj` (Linear(D, 4D)) and `classifier`
    (Linear(8D, 16D), ReLU, Linear(16D, answers))."""
    rand = RandomTensors(seed + 2)
    dim = EMBED_DIM
    state_dict = official_hbi_state_dict(seed)
    for suffix in OFFICIAL_LEVEL_SUFFIXES:
        for side in ("t", "v"):
            state_dict.update(rand.linear(f"{side}_weight{suffix}.0", dim, dim))
            state_dict.update(rand.linear(f"{side}_weight{suffix}.2", dim, 1))
            state_dict.update(rand.linear(f"{side}_proj{suffix}", dim, 4 * dim))
        state_dict.update(rand.linear(f"classifier{suffix}.0", 8 * dim, 16 * dim))
        state_dict.update(rand.linear(f"classifier{suffix}.2", 16 * dim, NUM_ANSWERS))
    return {prefix + key: tensor for key, tensor in state_dict.items()}


def official_qa_source(official, target):
    """`(source key, expected tensor)` of HBIForVideoQuestionAnswering tensor `target`."""
    if not target.startswith("answer_heads."):
        return official_source(official, target.removeprefix("hbi."))
    _, level, rest = target.split(".", 2)
    module, param = rest.rsplit(".", 1)
    key = ANSWER_HEAD_SOURCES[module].format(OFFICIAL_LEVEL_SUFFIXES[int(level)]) + f".{param}"
    return key, official[key]


def answer_labels():
    return {"id2label": dict(enumerate(ANSWERS)), "label2id": {answer: i for i, answer in enumerate(ANSWERS)}}


def converted_qa_model(state_dict, **overrides):
    config, converted = convert_official_qa_state_dict(state_dict, **overrides)
    model = HBIForVideoQuestionAnswering(config)
    model.load_state_dict(converted, strict=True)
    return model.eval()


@pytest.mark.parametrize("prefix", ["", "module."])
def test_every_tensor_lands_in_its_place(prefix):
    official = official_qa_state_dict(prefix=prefix)
    config, converted = convert_official_qa_state_dict(official)
    assert config.num_labels == NUM_ANSWERS and config.projection_dim == EMBED_DIM
    assert config.text_merge_ratios == [0.25, 0.125] and config.video_merge_ratios == [0.25, 0.25]
    assert not config.mask_entity_banzhaf_maps and config.distillation_kl_weight == 0
    assert config.qa_level_weights == [0.4, 0.4, 0.2] and config.temporal_module == "seqTransf"

    model = HBIForVideoQuestionAnswering(config)
    model.load_state_dict(converted, strict=True)
    official = {key[len(prefix) :]: tensor for key, tensor in official.items()}
    used = set()
    for target, tensor in model.state_dict().items():
        source, expected = official_qa_source(official, target)
        assert torch.equal(tensor, expected), target
        used.add(source)
    assert set(official) - used == {f"{name}.{key}" for name in OFFICIAL_ESTIMATORS for key in BATCH_NORM_KEYS}


def test_answer_logits_follow_the_official_heads():
    """Each level's logits from the official tensors, as the official `get_*_level_output`
    computes them: unmasked softmax pooling (padded entity tokens zeroed), projections,
    [video, text], classifier; the prediction weighs the levels 0.4 / 0.4 / 0.2."""
    official = official_qa_state_dict()
    model = converted_qa_model(official, **answer_labels())
    batch = make_batch(n_text=3, n_video=3, words=10, frames=6, image_size=IMAGE_SIZE)

    def linear(x, name):
        return x @ official[f"{name}.weight"].T + official[f"{name}.bias"]

    def pooled(tokens, mask, name):
        weights = torch.softmax(linear(torch.relu(linear(tokens, f"{name}.0")), f"{name}.2")[..., 0], dim=-1)
        if mask is not None:
            tokens = tokens * mask[..., None]
        return (tokens * weights[..., None]).sum(dim=1)

    with torch.no_grad():
        torch.manual_seed(0)
        out = model(**batch)
        torch.manual_seed(0)
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        video = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
        text_levels, video_levels = model.hbi.walk_levels(
            ("text", text.text_embeds, text.attention_mask), ("video", video.video_embeds, video.video_mask)
        )
        levels = [(t.features, t.mask, v.features, v.mask) for t, v in zip(text_levels, video_levels)]
    expected = []
    for suffix, (text_tokens, text_mask, video_tokens, video_mask) in zip(OFFICIAL_LEVEL_SUFFIXES, levels):
        joint = torch.cat([
            linear(pooled(video_tokens, video_mask, f"v_weight{suffix}"), f"v_proj{suffix}"),
            linear(pooled(text_tokens, text_mask, f"t_weight{suffix}"), f"t_proj{suffix}"),
        ], dim=1)
        expected.append(linear(F.relu(linear(joint, f"classifier{suffix}.0")), f"classifier{suffix}.2"))
    for got, want in zip(out.level_logits, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.logits, 0.4 * expected[0] + 0.4 * expected[1] + 0.2 * expected[2], atol=1e-4, rtol=1e-4)


def test_layout_errors_name_the_keys():
    official = official_qa_state_dict()
    with pytest.raises(ValueError, match="video QA checkpoint: convert it with `convert_official_qa_state_dict`"):
        convert_official_state_dict(official)
    with pytest.raises(ValueError, match="not an official video QA checkpoint"):
        convert_official_qa_state_dict(official_hbi_state_dict())
    missing = {key: tensor for key, tensor in official.items() if key != "v_proj1.bias"}
    with pytest.raises(ValueError, match=r"expected key\(s\) missing: v_proj1.bias"):
        convert_official_qa_state_dict(missing)
    with pytest.raises(ValueError, match=r"no place in HBIModel: t_weight2.0.weight"):
        convert_official_qa_state_dict({**official, "t_weight2.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="answers with 5 labels, but the answer vocabulary has 2"):
        convert_official_qa_state_dict(official, id2label={0: "yes", 1: "no"}, label2id={"yes": 0, "no": 1})


def test_cli_with_an_answer_vocabulary(tmp_path, capsys):
    official = official_qa_state_dict(prefix="module.")
    checkpoint, output, answers = tmp_path / "pytorch_model.bin.4", tmp_path / "hbi-qa", tmp_path / "train_ans2label.json"
    torch.save(official, checkpoint)
    answers.write_text(json.dumps({answer: i for i, answer in enumerate(ANSWERS)}))

    convert_command(["--checkpoint", str(checkpoint), "--output", str(output), "--answers", str(answers),
          "--qa-level-weights", "0.5", "0.3", "0.2"])

    summary = capsys.readouterr().out
    assert "HBI video QA checkpoint" in summary and f"5 answers, named from {answers}" in summary
    assert "HBIForVideoQuestionAnswering tensors" in summary
    reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(output)
    assert isinstance(reloaded, HBIForVideoQuestionAnswering)
    assert reloaded.config.id2label == dict(enumerate(ANSWERS)) and reloaded.config.label2id["blue"] == 2
    assert reloaded.config.qa_level_weights == [0.5, 0.3, 0.2]
    expected_state = converted_qa_model(official).state_dict()
    for key, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected_state[key]), key

    torch.save(official_hbi_state_dict(), tmp_path / "retrieval.bin")
    with pytest.raises(ValueError, match="an answer vocabulary is for a video QA checkpoint"):
        convert_checkpoint(tmp_path / "retrieval.bin", tmp_path / "out", answers=answers)
