import math

import pytest
import torch
from conftest import make_batch, tiny_config

from hbi_transformers import HBIModel
from hbi_transformers.training import optimization
from hbi_transformers.training.optimization import BertAdam, hbi_parameter_groups, warmup_cosine, warmup_cosine_schedule
from hbi_transformers.training import HBITrainer, HBITrainingArguments


class PairDataset(torch.utils.data.Dataset):
    """Fixed random text-video pairs, one dict of tensors per item."""

    def __init__(self, size=8, seed=0):
        self.batch = make_batch(n_text=size, n_video=size, seed=seed)

    def __len__(self):
        return self.batch["input_ids"].shape[0]

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.batch.items()}


def test_parameter_groups_follow_the_official_rule():
    model = HBIModel(tiny_config())
    model.vision_model.embeddings.patch_embedding.requires_grad_(False)
    model.banzhaf_teacher.requires_grad_(False)
    groups = hbi_parameter_groups(model, learning_rate=1e-4, coef_lr=1e-3, weight_decay=0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    by_setting = {(g["lr"], g["weight_decay"]): {names[id(p)] for p in g["params"]} for g in groups}
    clip_decay, clip_no_decay = by_setting[(1e-4 * 1e-3, 0.2)], by_setting[(1e-4 * 1e-3, 0.0)]
    head_decay, head_no_decay = by_setting[(1e-4, 0.2)], by_setting[(1e-4, 0.0)]
    assert "logit_scale" in clip_decay and "text_projection.weight" in clip_decay
    assert "text_model.final_layer_norm.weight" in clip_decay  # LayerNorm weights are decayed officially
    assert "text_model.final_layer_norm.bias" in clip_no_decay
    assert "temporal.encoder.layers.0.mlp.fc1.weight" in head_decay  # officially `transformerClip`: full lr
    assert "levels.0.banzhaf_student.query" in head_decay
    assert "levels.1.text_merge.attention.query.bias" in head_no_decay
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert clip_decay | clip_no_decay | head_decay | head_no_decay == trainable
    assert "vision_model.embeddings.patch_embedding.weight" not in trainable


def test_bert_adam_matches_the_formula():
    torch.manual_seed(0)
    weights = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)]
    reference = [w.detach().clone() for w in weights]
    optimizer = BertAdam(weights, lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2, max_grad_norm=1.0)
    moments = [(torch.zeros_like(w), torch.zeros_like(w)) for w in reference]
    for step in range(3):
        grads = [torch.randn_like(w) * (3.0 if step == 1 else 0.1) for w in weights]
        for weight, grad in zip(weights, grads):
            weight.grad = grad.clone()
        optimizer.step()
        for index, grad in enumerate(grads):
            norm = grad.norm().item()
            clipped = grad * min(1.0, 1.0 / (norm + 1e-6))
            m, v = moments[index]
            m = 0.9 * m + 0.1 * clipped
            v = 0.98 * v + 0.02 * clipped * clipped
            moments[index] = (m, v)
            # No bias correction; weight decay inside the update.
            reference[index] = reference[index] - 0.1 * (m / (v.sqrt() + 1e-6) + 0.2 * reference[index])
    for weight, expected in zip(weights, reference):
        torch.testing.assert_close(weight.detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_elements", [None, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bert_adam_foreach_matches_the_per_tensor_loop(dtype, batch_elements, monkeypatch):
    # Two groups (one without decay or clipping), a parameter without gradient, mixed dtypes and
    # gradients both under and over the clipping norm: the updates must be the same bits. With
    # batches of 64 elements (a multiple of every SIMD width, as the real size) the foreach path
    # also slices tensors (300 and 277 elements; a non-contiguous one of 120 is updated whole) and
    # batches small ones together.
    if batch_elements is not None:
        monkeypatch.setattr(optimization, "BERT_ADAM_BATCH_ELEMENTS", batch_elements)
    torch.manual_seed(0)
    shapes = [(3, 4), (5,), (2, 3, 2), (7,), (300,), (277,)]
    start = [torch.randn(shape).to(dtype) for shape in shapes] + [torch.randn(4, dtype=torch.float32)]
    start.append(torch.randn(3, 40).to(dtype).t())
    runs = {}
    for foreach in (False, True):
        weights = [w.clone().requires_grad_() for w in start]
        groups = [
            {"params": weights[:2] + weights[4:], "weight_decay": 0.2},
            {"params": weights[2:4], "weight_decay": 0.0, "max_grad_norm": 0.0, "lr": 0.05},
        ]
        optimizer = BertAdam(groups, lr=0.1, betas=(0.9, 0.98), eps=1e-6, max_grad_norm=1.0, foreach=foreach,
                             fused=False)
        generator = torch.Generator().manual_seed(1)
        for step in range(4):
            for index, weight in enumerate(weights):
                scale = 3.0 if step % 2 else 0.1
                grad = (torch.randn(weight.shape, generator=generator) * scale).to(weight.dtype)
                weight.grad = None if index == 3 and step == 0 else grad
            optimizer.step()
        runs[foreach] = [w.detach() for w in weights]
    for loop, fused in zip(runs[False], runs[True]):
        torch.testing.assert_close(fused, loop, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sqrt_floor_leaves_the_adam_denominator_unchanged(dtype):
    eps = 1e-6
    floor = optimization.sqrt_floor(dtype, eps)
    assert floor >= torch.finfo(dtype).tiny
    tiny = torch.finfo(dtype).tiny
    # Zeros, subnormals, the floor and its neighbours, and magnitudes from far below to far above.
    special = torch.tensor([0.0, tiny / 8, tiny, floor / 2, floor, floor * 2, 1e-30, 1e-26, 1e-20, 1.0], dtype=torch.float64)
    magnitudes = torch.logspace(-45, 2, 20000, dtype=torch.float64)
    values = torch.cat([special, magnitudes]).to(dtype)
    values = torch.cat([values, torch.nextafter(values, torch.full_like(values, math.inf))])
    plain = values.sqrt().add_(eps)
    floored = values.clamp_min(floor).sqrt().add_(eps)
    assert torch.equal(floored, plain)


def test_sqrt_floor_is_zero_where_no_floor_is_safe():
    assert optimization.sqrt_floor(torch.float16, 1e-6) == 0.0
    assert optimization.sqrt_floor(torch.float32, 0.0) == 0.0


def test_bert_adam_foreach_with_zero_and_tiny_gradients_matches_the_loop():
    # Rows of an embedding that no batch used (zero moments) and gradients so small that the
    # second moment is subnormal: the floor under the square root must not change a bit.
    start = torch.randn(40, 8)
    grads = torch.zeros(4, 40, 8)
    grads[:, :5] = torch.randn(4, 5, 8)
    grads[:, 5:10] = 1e-20
    runs = []
    for foreach in (False, True):
        weight = start.clone().requires_grad_()
        optimizer = BertAdam([weight], lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2, foreach=foreach,
                             fused=False)
        for grad in grads:
            weight.grad = grad.clone()
            optimizer.step()
        runs.append(weight.detach())
    tiny_moments = optimizer.state[weight]["exp_avg_sq"][5:10]
    assert ((tiny_moments > 0) & (tiny_moments < torch.finfo(torch.float32).tiny)).all()
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=0)


def test_bert_adam_fused_stays_within_rounding_of_the_loop():
    # The fused kernel orders the same arithmetic differently: float32 parameters drift from the
    # per-tensor loop's by at most one unit in the last place a step (two groups, one without
    # decay or clipping, gradients under and over the clipping norm, zero rows, second moments
    # driven subnormal, a parameter without gradient at first); a transposed view (its gradient
    # laid out otherwise) and float16 ones stay off the kernel (here, with foreach=False, on the
    # loop) and match the loop exactly.
    torch.manual_seed(0)
    start = [torch.randn(40, 8), torch.randn(300), torch.randn(7), torch.randn(3, 40).t(), torch.randn(9).half()]
    runs = []
    for fused in (False, True):
        weights = [w.clone().requires_grad_() for w in start]
        groups = [{"params": weights[:2] + weights[4:], "weight_decay": 0.2},
                  {"params": weights[2:4], "weight_decay": 0.0, "max_grad_norm": 0.0, "lr": 0.05}]
        optimizer = BertAdam(groups, lr=0.01, betas=(0.9, 0.98), eps=1e-6, max_grad_norm=1.0, foreach=False,
                             fused=fused)
        generator = torch.Generator().manual_seed(1)
        for step in range(50):
            for index, weight in enumerate(weights):
                grad = torch.randn(weight.shape, generator=generator) * (3.0 if step % 2 else 0.1)
                if index == 0:
                    grad[:5] = 0
                    grad[5:10] = 1e-20
                weight.grad = None if index == 2 and step == 0 else grad.to(weight.dtype)
            optimizer.step()
        runs.append([w.detach() for w in weights])
        if not fused:
            loop_moments = optimizer.state[weights[0]]["exp_avg_sq"][5:10]
    assert ((loop_moments > 0) & (loop_moments < torch.finfo(torch.float32).tiny)).all()
    for loop, fused in zip(runs[0][:3], runs[1][:3]):
        ulps = (fused - loop).abs() / (torch.finfo(torch.float32).eps * loop.abs().clamp_min(0.5))
        assert ulps.max() <= 50
    assert not torch.equal(runs[1][0], runs[0][0])  # the fused kernel did run
    for loop, fused in zip(runs[0][3:], runs[1][3:]):
        torch.testing.assert_close(fused, loop, rtol=0, atol=0)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0.0, 0.1) == 0.0
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.5, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1) == pytest.approx(0.0)
    # Past the horizon the official cosine comes back up.
    assert warmup_cosine(1.5, 0.1) == pytest.approx(0.5)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    scheduler = warmup_cosine_schedule(optimizer, total_steps=20, warmup=0.1)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.0 and rates[1] == pytest.approx(1.0)
    # The warm-up ends at step 2, where the cosine has already started.
    assert rates[2] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert rates[10] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def make_trainer(tmp_path, **overrides):
    torch.manual_seed(0)
    model = HBIModel(tiny_config(logit_scale_init_value=5.0))
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_train_epochs=4,
        learning_rate=1e-3,
        coef_lr=1.0,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    settings.update(overrides)
    return HBITrainer(model=model, args=HBITrainingArguments(**settings), train_dataset=PairDataset())


def test_training_learns_and_keeps_frozen_parts(tmp_path):
    trainer = make_trainer(tmp_path)
    model = trainer.model
    patch_before = model.vision_model.embeddings.patch_embedding.weight.detach().clone()
    teacher_before = {k: v.clone() for k, v in model.banzhaf_teacher.state_dict().items()}
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert {"contrastive_entity", "banzhaf_event", "distillation", "logit_scale"} <= logged[0].keys()
    # log(100) clamp: the scale started at 5 and lr 1e-3 steps alone cannot bring it down by 0.39.
    assert 4.5 < model.logit_scale.item() <= math.log(100)
    assert torch.equal(model.vision_model.embeddings.patch_embedding.weight, patch_before)
    for key, value in model.banzhaf_teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    # The schedule's horizon is 5 epochs of 2 steps, whatever the 4 epochs trained.
    assert trainer.lr_scheduler.lr_lambdas[0](10) == pytest.approx(0.0)


def test_transformers_optimizer_choice(tmp_path):
    trainer = make_trainer(tmp_path, hbi_optimizer="transformers", num_train_epochs=1)
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer,
                      torch.optim.AdamW)


def test_gradient_accumulation_and_resume(tmp_path):
    full = make_trainer(tmp_path / "full", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                        num_train_epochs=2)
    full.train()
    interrupted = make_trainer(tmp_path / "part", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                               num_train_epochs=2, save_strategy="steps", save_steps=2)
    interrupted.train()
    resumed = make_trainer(tmp_path / "part", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                           num_train_epochs=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "out" / "checkpoint-2"))
    for (name, expected), (_, got) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_trains(tmp_path):
    trainer = make_trainer(tmp_path, bf16=True, num_train_epochs=1)
    trainer.train()
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    assert trainer.model.text_projection.weight.dtype == torch.float32  # autocast, fp32 master weights
