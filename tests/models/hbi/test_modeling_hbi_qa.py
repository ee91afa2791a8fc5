"""HBIForVideoQuestionAnswering: answer heads and the QA objective against an independent
computation written with loops, out-of-vocabulary answers, Auto classes and saving, the accuracy
metrics against a loop, and a tiny end-to-end run of the command line (train, then evaluate)."""

import json
import logging

import pytest
import torch
from conftest import make_batch, textured_frames, tiny_clip_tokenizer, tiny_config, write_mp4
from transformers import AutoConfig, AutoModelForVisualQuestionAnswering, CLIPConfig, CLIPModel

from hbi_transformers import HBIModel
from hbi_transformers.models.hbi.configuration_hbi import config_with_answers, read_answer_vocabulary, video_qa_config
from hbi_transformers.models.hbi.wti import LevelTokens, l2_normalize, weighted_token_interaction
from hbi_transformers.models.hbi.modeling_hbi_qa import HBIForVideoQuestionAnswering
from hbi_transformers.training.optimization import hbi_parameter_groups
from hbi_transformers.cli.train_qa import read_qa_annotations
from hbi_transformers.cli.train_qa import run as train_qa_command
from hbi_transformers.training.metrics.video_qa import (
    OTHER_QUESTION_TYPE,
    QUESTION_TYPES,
    format_qa_table,
    question_type,
    video_qa_accuracy,
)

ANSWERS = ["red", "green", "blue"]


def qa_config(**overrides):
    labels = dict(id2label=dict(enumerate(ANSWERS)), label2id={answer: i for i, answer in enumerate(ANSWERS)})
    return video_qa_config(tiny_config(), **labels, **overrides)


def qa_model(**overrides):
    """A tiny QA model whose answer heads are moved off their init (zero biases)."""
    torch.manual_seed(0)
    model = HBIForVideoQuestionAnswering(qa_config(**overrides))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.answer_heads.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()  # no dropout


# --------------------------------------------------------------------------------------------
# Independent computation
# --------------------------------------------------------------------------------------------
def reference_pooling(pooling, tokens, mask):
    """Item by item, token by token: softmax over EVERY position of w2 . relu(W1 x + b1) + b2,
    then the weighted sum of the tokens, padded ones counting as zero vectors."""
    pooled = []
    for item in range(tokens.shape[0]):
        scores = torch.stack([
            pooling.fc_out.weight[0] @ torch.relu(pooling.fc_in.weight @ token + pooling.fc_in.bias) + pooling.fc_out.bias[0]
            for token in tokens[item]
        ])
        weights = torch.softmax(scores, dim=0)
        kept = torch.ones(tokens.shape[1]) if mask is None else mask[item].float()
        pooled.append(sum(weights[t] * kept[t] * tokens[item, t] for t in range(tokens.shape[1])))
    return torch.stack(pooled)


def reference_answer_logits(head, text, text_mask, video, video_mask):
    video_vector = reference_pooling(head.video_pooling, video, video_mask) @ head.video_projection.weight.T
    text_vector = reference_pooling(head.text_pooling, text, text_mask) @ head.text_projection.weight.T
    joint = torch.cat([video_vector + head.video_projection.bias, text_vector + head.text_projection.bias], dim=1)
    classifier = head.classifier
    return torch.relu(joint @ classifier.fc_in.weight.T + classifier.fc_in.bias) @ classifier.fc_out.weight.T + classifier.fc_out.bias


def reference_cross_entropy(logits, labels):
    """Mean of -log p(answer) over the questions with an answer in the vocabulary."""
    losses = [-torch.log_softmax(logits[i], dim=0)[label] for i, label in enumerate(labels.tolist()) if label >= 0]
    return sum(losses) / len(losses) if losses else torch.tensor(0.0)


def reference_kl(input_logits, target_logits):
    """sum p_target (log p_target - log p_input), divided by the number of elements."""
    target = torch.softmax(target_logits, dim=-1)
    return (target * (target.log() - torch.log_softmax(input_logits, dim=-1))).sum() / target.numel()


def reference_levels(model, batch):
    """Entity tokens and, merged by the model's own blocks in the official order (questions then
    videos, level by level), the action and event tokens."""
    text = model.get_text_features(batch["input_ids"], batch["attention_mask"])
    video = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
    levels = [(text.text_embeds, text.attention_mask, video.video_embeds, video.video_mask)]
    for level in model.hbi.levels[1:]:
        text_tokens, text_mask, video_tokens, video_mask = levels[-1]
        levels.append((level.text_merge(text_tokens, text_mask), None, level.video_merge(video_tokens, video_mask), None))
    return levels


def test_heads_and_loss_match_an_independent_computation():
    model = qa_model(qa_level_weights=[0.5, 0.3, 0.2], qa_distillation_kl_weight=0.7, banzhaf_kl_weight=1.3)
    assert not model.config.mask_entity_banzhaf_maps and model.config.distillation_kl_weight == 0
    batch = make_batch(n_text=4, n_video=4, words=10, frames=12)
    labels = torch.tensor([2, 0, 1, 2])

    torch.manual_seed(1)
    out = model(**batch, labels=labels)
    with torch.no_grad():
        torch.manual_seed(1)
        levels = reference_levels(model, batch)
        level_logits = [reference_answer_logits(head, *level) for head, level in zip(model.answer_heads, levels)]
        # The retrieval half is HBIModel.hbi_loss (tested on its own) on the same level tokens.
        text_levels, video_levels = [], []
        for level, (text, text_mask, video, video_mask) in zip(model.hbi.levels, levels):
            text_levels.append(LevelTokens(l2_normalize(text), level.text_weight_head(text, text_mask), text_mask))
            video_levels.append(LevelTokens(l2_normalize(video), level.video_weight_head(video, video_mask), video_mask))
        similarities = [weighted_token_interaction(t, v) for t, v in zip(text_levels, video_levels)]
        retrieval_loss, retrieval_terms = model.hbi.hbi_loss(similarities, text_levels, video_levels)

    for got, expected in zip(out.level_logits, level_logits):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, 0.5 * level_logits[0] + 0.3 * level_logits[1] + 0.2 * level_logits[2])
    names = ("entity", "action", "event")
    # No similarity self-distillation in the official QA objective.
    torch.testing.assert_close(
        retrieval_loss, sum(retrieval_terms[f"contrastive_{n}"] + 1.3 * retrieval_terms[f"banzhaf_{n}"] for n in names)
    )
    answer = [reference_cross_entropy(logits, labels) for logits in level_logits]
    distillation = reference_kl(level_logits[1], level_logits[0]) + reference_kl(level_logits[2], level_logits[0])
    torch.testing.assert_close(out.loss, 0.5 * retrieval_loss + sum(answer) + 0.7 * distillation, atol=1e-5, rtol=1e-5)
    for name, expected in zip(names, answer):
        torch.testing.assert_close(out.loss_terms[f"answer_{name}"], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.loss_terms[f"contrastive_{name}"], retrieval_terms[f"contrastive_{name}"])
    torch.testing.assert_close(out.loss_terms["answer_distillation"], distillation, atol=1e-6, rtol=1e-5)

    # Predictions need no labels and equal the logits from separately encoded questions and videos.
    torch.manual_seed(1)
    with torch.no_grad():
        inference = model(**batch)
        torch.manual_seed(1)
        from_features = model.compute_answer_logits(
            model.get_text_features(batch["input_ids"], batch["attention_mask"]),
            model.get_video_features(batch["pixel_values_videos"], batch["video_mask"]),
        )
    assert inference.loss is None and inference.loss_terms is None
    torch.testing.assert_close(inference.logits, out.logits)
    torch.testing.assert_close(from_features.logits, out.logits)


def test_padded_tokens_are_zeroed_but_keep_their_pooling_weight():
    head = qa_model().answer_heads[0].text_pooling
    tokens, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        pooled = head(tokens, mask)
        torch.testing.assert_close(pooled, reference_pooling(head, tokens, mask), atol=1e-6, rtol=1e-5)
        # Changing a padded token changes the weights of the others (the softmax is not masked).
        changed = tokens.clone()
        changed[0, 4] += 1.0
        assert not torch.allclose(head(changed, mask)[0], pooled[0])


def test_out_of_vocabulary_labels_are_left_out_of_the_answer_loss():
    model = qa_model()
    batch = make_batch(n_text=4, n_video=4, words=10, frames=12)
    torch.manual_seed(1)
    out = model(**batch, labels=torch.tensor([2, -1, 1, -1]))
    for name, logits in zip(("entity", "action", "event"), out.level_logits):
        expected = reference_cross_entropy(logits[[0, 2]], torch.tensor([2, 1]))
        torch.testing.assert_close(out.loss_terms[f"answer_{name}"], expected, atol=1e-5, rtol=1e-5)

    torch.manual_seed(1)
    unanswerable = model(**batch, labels=torch.full((4,), -1))
    assert all(unanswerable.loss_terms[f"answer_{name}"] == 0 for name in ("entity", "action", "event"))
    unanswerable.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="needs labels"):
        model(**batch, return_loss=True)


# --------------------------------------------------------------------------------------------
# Configuration, Auto classes, saving, initialisation from retrieval
# --------------------------------------------------------------------------------------------
def test_official_qa_config_and_answer_vocabulary(tmp_path):
    official = video_qa_config()
    assert official.vision_config.patch_size == 16 and official.vision_config.hidden_size == 768
    assert official.text_merge_ratios == [0.25, 0.125] and official.video_merge_ratios == [0.25, 0.25]
    assert official.num_labels == 1500 and official.qa_level_weights == [0.4, 0.4, 0.2]
    assert official.qa_dropout == 0.1 and not official.mask_entity_banzhaf_maps

    (tmp_path / "train_ans2label.json").write_text(json.dumps({"blue": 2, "red": 0, "green": 1}))
    (tmp_path / "answers.json").write_text(json.dumps(ANSWERS))
    for name in ("train_ans2label.json", "answers.json"):
        config = config_with_answers(tiny_config(), tmp_path / name)
        assert config.id2label == dict(enumerate(ANSWERS)) and config.num_labels == 3
    (tmp_path / "gaps.json").write_text(json.dumps({"red": 0, "blue": 2}))
    with pytest.raises(ValueError, match="must be 0 .. 1"):
        read_answer_vocabulary(tmp_path / "gaps.json")


def test_auto_classes_and_save_load_round_trip(tmp_path):
    model = qa_model()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForVisualQuestionAnswering"] == "modeling_hbi_qa.HBIForVideoQuestionAnswering"
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.id2label == dict(enumerate(ANSWERS)) and config.label2id == {"red": 0, "green": 1, "blue": 2}
    assert config.text_merge_ratios == [0.25, 0.125] and config.qa_level_weights == [0.4, 0.4, 0.2]

    loaded = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HBIForVideoQuestionAnswering)
    assert not any(p.requires_grad for p in loaded.hbi.banzhaf_teacher.parameters())
    expected_state = model.state_dict()
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected_state[key]), key
    batch = make_batch(n_text=3, n_video=3, words=10, frames=12)
    with torch.no_grad():
        torch.manual_seed(0)
        expected = model(**batch).logits
        torch.manual_seed(0)
        torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=1e-5)


def test_a_retrieval_checkpoint_initialises_everything_but_the_answer_heads(tmp_path):
    torch.manual_seed(0)
    retrieval = HBIModel(tiny_config())
    retrieval.save_pretrained(tmp_path)
    model = HBIForVideoQuestionAnswering.from_pretrained(tmp_path, config=qa_config())
    state = model.hbi.state_dict()
    for key, tensor in retrieval.state_dict().items():
        assert torch.equal(state[key], tensor), key
    classifier = model.answer_heads[0].classifier.fc_in
    assert classifier.weight.std().item() == pytest.approx(0.02, rel=0.1) and not classifier.bias.any()
    # HBITrainer's parameter groups see the same names: CLIP at lr x coef_lr, the heads at lr.
    clip_group, *_ = hbi_parameter_groups(model, learning_rate=1.0, coef_lr=1e-3, weight_decay=0.2)
    clip_parameters = {id(parameter) for parameter in clip_group["params"]}
    assert clip_group["lr"] == 1e-3 and id(model.hbi.text_model.embeddings.token_embedding.weight) in clip_parameters
    assert id(classifier.weight) not in clip_parameters


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def test_accuracy_under_both_protocols_against_a_loop():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 4, (300,), generator=generator)
    predictions = torch.where(torch.rand(300, generator=generator) < 0.5, labels, torch.randint(-1, 4, (300,), generator=generator))
    kinds = (*QUESTION_TYPES, OTHER_QUESTION_TYPE)
    types = [kinds[i] for i in torch.randint(0, len(kinds), (300,), generator=generator).tolist()]
    metrics = video_qa_accuracy(predictions, labels, types)

    for prefix, members in [("", range(300))] + [(f"{kind}_", [i for i in range(300) if types[i] == kind]) for kind in kinds]:
        right = sum(1 for i in members if labels[i] >= 0 and predictions[i] == labels[i])
        answerable = sum(1 for i in members if labels[i] >= 0)
        assert metrics[f"{prefix}accuracy"] == pytest.approx(100 * right / answerable)
        assert metrics[f"{prefix}accuracy_all"] == pytest.approx(100 * right / len(members))
        assert metrics[f"{prefix}num_questions"] == len(members)
        assert metrics[f"{prefix}num_out_of_vocabulary"] == len(members) - answerable

    # An unanswered question (-1) about an out-of-vocabulary answer (-1) is still wrong.
    assert video_qa_accuracy([-1, 0], [-1, 0]) == {
        "accuracy": 100.0, "accuracy_all": 50.0, "num_questions": 2, "num_out_of_vocabulary": 1
    }
    table = format_qa_table(metrics)
    assert table.splitlines()[1].startswith("all") and "where" in table
    assert [question_type(q) for q in ("What is it?", "who's there", "How many", "is it red?")] == [
        "what", "who", "how", OTHER_QUESTION_TYPE
    ]


# --------------------------------------------------------------------------------------------
# End to end: generated clips, the command line trains, saves, evaluates
# --------------------------------------------------------------------------------------------
COLOURS = ["red", "green", "blue", "red"]


@pytest.fixture(scope="module")
def qa_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa_corpus")
    rows = []
    for index, colour in enumerate(COLOURS):
        write_mp4(root / f"clip{index}.mp4", textured_frames(16, 32, 32, seed=index * 3), fps=8)
        rows.append({"video": f"clip{index}.mp4", "question": "what colour is it?", "answer": colour})
        rows.append({"video": f"clip{index}.mp4", "question": "who made it?", "answer": colour, "question_type": "who"})
    rows.append({"video": "clip0.mp4", "question": "what shape is it?", "answer": "square"})  # out of vocabulary
    annotations = root / "qa.jsonl"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "train_ans2label.json").write_text(json.dumps({answer: i for i, answer in enumerate(ANSWERS)}))
    return root, annotations


def test_read_qa_annotations_types(qa_corpus):
    root, annotations = qa_corpus
    records, types = read_qa_annotations(str(annotations), str(root))
    assert [record.answer for record in records][:2] == ["red", "red"] and records[0].caption == "what colour is it?"
    assert types == ["what", "who"] * 4 + ["what"]


def test_command_line_trains_then_evaluates(qa_corpus, tmp_path, caplog):
    root, annotations = qa_corpus
    tokenizer = tiny_clip_tokenizer(tmp_path)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    text_config = {**tiny_config().text_config.to_dict(), "vocab_size": len(tokenizer)}
    CLIPModel(CLIPConfig(text_config=text_config, vision_config=tiny_config().vision_config.to_dict(),
                         projection_dim=32)).save_pretrained(tmp_path / "clip")
    output_dir = tmp_path / "run"
    common = ["--eval_annotations", str(annotations), "--video_root", str(root), "--max_frames", "4",
              "--max_words", "10", "--answers", str(root / "train_ans2label.json"), "--use_cpu", "--report_to", "none",
              "--disable_tqdm", "true", "--per_device_eval_batch_size", "3"]
    with caplog.at_level(logging.WARNING):
        metrics = train_qa_command([
            "--model_name_or_path", str(tmp_path / "clip"), "--tokenizer_name_or_path", str(tmp_path / "tokenizer"),
            "--train_annotations", str(annotations), "--output_dir", str(output_dir), "--max_steps", "8",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--coef_lr", "1", "--logging_steps", "1",
            "--seed", "0", *common,
        ])
    assert "1 of 9 training questions have an answer outside the 3-answer vocabulary" in caplog.text

    losses = [entry["loss"] for entry in json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])
    assert metrics["num_questions"] == 9 and metrics["num_out_of_vocabulary"] == 1 and metrics["num_unanswered"] == 0
    assert metrics["accuracy_all"] == pytest.approx(metrics["accuracy"] * 8 / 9)
    assert metrics["who_num_questions"] == 4 and metrics["what_num_out_of_vocabulary"] == 1
    assert json.loads((output_dir / "eval_results.json").read_text()) == metrics
    assert "accuracy (official)" in (output_dir / "eval_results.txt").read_text()

    trained = HBIForVideoQuestionAnswering.from_pretrained(output_dir)
    assert trained.config.id2label == dict(enumerate(ANSWERS)) and trained.config.text_merge_ratios == [0.25, 0.125]
    # Frozen as officially: CLIP's embeddings did not move.
    fresh = CLIPModel.from_pretrained(tmp_path / "clip")
    assert torch.equal(trained.hbi.text_model.embeddings.token_embedding.weight, fresh.text_model.embeddings.token_embedding.weight)

    evaluated = train_qa_command(["--model_name_or_path", str(output_dir), "--output_dir", str(tmp_path / "eval"), *common])
    assert evaluated["accuracy"] == pytest.approx(metrics["accuracy"])


def test_merge_scores_are_initialised_as_officially():
    """The official QA model draws its merge blocks' score layers as every Linear: N(0, 0.02), bias 0."""
    torch.manual_seed(0)
    qa = HBIForVideoQuestionAnswering(qa_config())
    scores = [getattr(level, side).merge.score for level in qa.hbi.levels[1:] for side in ("text_merge", "video_merge")]
    assert not any(score.bias.any() for score in scores)
    weights = torch.cat([score.weight.flatten() for score in scores])
    assert weights.abs().max() < 4 * 0.02 and weights.std().item() == pytest.approx(0.02, rel=0.35)
