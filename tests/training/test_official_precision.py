import copy

import pytest
import torch
from conftest import make_batch, tiny_config
from test_trainer import make_trainer

from hbi_transformers import HBIModel
from hbi_transformers.models.hbi.configuration_hbi import video_qa_config
from hbi_transformers.models.hbi.modeling_hbi_qa import HBIForVideoQuestionAnswering
from hbi_transformers.training import HBITrainingArguments
from hbi_transformers.training.official_precision import use_official_fp16_towers
from hbi_transformers.training.optimization import BertAdam


def test_towers_cast_as_officially_and_heads_stay_float32():
    torch.manual_seed(0)
    model = HBIModel(tiny_config()).eval()
    converted = copy.deepcopy(model)
    count = use_official_fp16_towers(converted)
    assert use_official_fp16_towers(converted) == count  # idempotent: hooks not stacked
    dtypes = {name: p.dtype for name, p in converted.named_parameters()}
    half = {name for name, dtype in dtypes.items() if dtype == torch.float16}
    assert count == sum(p.numel() for name, p in converted.named_parameters() if name in half)
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in half
    assert "text_model.encoder.layers.0.mlp.fc1.bias" in half
    assert {"vision_model.embeddings.patch_embedding.weight", "text_projection.weight", "visual_projection.weight"} <= half
    for name in ("text_model.embeddings.token_embedding.weight", "vision_model.embeddings.class_embedding",
                 "text_model.encoder.layers.0.layer_norm1.weight", "vision_model.post_layernorm.bias", "logit_scale"):
        assert dtypes[name] == torch.float32, name
    assert all(name.startswith(("text_", "vision_", "visual_")) for name in half)

    batch = make_batch()
    expected, got = model(**batch, return_loss=True), converted(**batch, return_loss=True)
    assert got.logits_per_text.dtype == torch.float32
    torch.testing.assert_close(got.logits_per_text, expected.logits_per_text, atol=2e-2, rtol=0)
    assert abs(got.loss.item() - expected.loss.item()) < 1e-2
    got.loss.backward()
    grads = {name: p.grad.dtype for name, p in converted.named_parameters() if p.grad is not None}
    assert grads["text_model.encoder.layers.0.self_attn.q_proj.weight"] == torch.float16
    assert grads["levels.0.text_weight_head.fc_in.weight"] == torch.float32


def test_bert_adam_keeps_float16_moments_and_their_underflow():
    # The official step written out in float16: a gradient of 1e-4 makes (1 - beta2) g^2 = 2e-10,
    # below float16's smallest subnormal (6e-8), so v stays 0 and the step is lr * m / eps
    # instead of lr * m / (sqrt(v) + eps).
    weight = torch.nn.Parameter(torch.zeros(4, dtype=torch.float16))
    optimizer = BertAdam([weight], lr=1e-7, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    weight.grad = torch.full((4,), 1e-4, dtype=torch.float16)
    optimizer.step()
    state = optimizer.state[weight]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float16
    assert torch.count_nonzero(state["exp_avg_sq"]) == 0
    half = dict(dtype=torch.float16)
    m = torch.tensor(1e-4, **half) * torch.tensor(0.1, **half)
    expected = -(1e-7 * (m / torch.tensor(1e-6, **half)))
    assert torch.equal(weight.detach(), expected.expand(4))
    assert torch.equal(weight.detach(), torch.tensor(-1.0133e-6, **half).expand(4))  # lr not rounded to 1.19e-7
    # In float32 the same step is lr * m / (sqrt(0.02) g + eps): 15 times smaller.
    reference = torch.nn.Parameter(torch.zeros(1))
    reference_optimizer = BertAdam([reference], lr=1e-7, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    reference.grad = torch.full((1,), 1e-4)
    reference_optimizer.step()
    ratio = weight[0].double().item() / reference.double().item()
    assert ratio == pytest.approx((0.02 ** 0.5 * 1e-4 + 1e-6) / 1e-6, rel=0.02)


def test_trainer_trains_float16_towers_and_saves_float32(tmp_path):
    trainer = make_trainer(tmp_path, official_fp16_towers=True, num_train_epochs=1)
    trainer.train()
    model = trainer.model
    assert model.text_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.float16
    state = trainer.optimizer.state[model.text_model.encoder.layers[0].mlp.fc1.weight]
    assert state["exp_avg"].dtype == torch.float16
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = HBIModel.from_pretrained(str(tmp_path / "saved"))
    for name, tensor in reloaded.state_dict().items():
        assert tensor.dtype != torch.float16, name
        torch.testing.assert_close(tensor, model.state_dict()[name].to(tensor.dtype), atol=0, rtol=0, msg=name)
    assert torch.isfinite(reloaded(**make_batch(), return_loss=True).loss)


def test_float16_towers_refuse_autocast(tmp_path):
    with pytest.raises(ValueError, match="official_fp16_towers"):
        HBITrainingArguments(output_dir=str(tmp_path), official_fp16_towers=True, bf16=True, use_cpu=True)


def test_question_answering_runs_on_float16_towers():
    torch.manual_seed(0)
    answers = dict(id2label={0: "red", 1: "green", 2: "blue"}, label2id={"red": 0, "green": 1, "blue": 2})
    model = HBIForVideoQuestionAnswering(video_qa_config(tiny_config(), **answers)).eval()
    batch = make_batch()
    batch["labels"] = torch.tensor([0, 1, 2, 0])
    expected = model(**batch)
    use_official_fp16_towers(model.base_model)
    got = model(**batch)
    assert model.hbi.text_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.float16
    assert got.logits.dtype == torch.float32
    torch.testing.assert_close(got.logits, expected.logits, atol=5e-2, rtol=0)
    got.loss.backward()
