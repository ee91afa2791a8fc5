"""What transformers users rely on beyond the common suites: initialisation of weights a checkpoint
lacks, the attention switch, a forward that compiles and exports whole and still refuses bad
masks, and a plain `Trainer` getting the loss."""

import math

import pytest
import torch
from conftest import make_batch, tiny_config
from transformers import Trainer, TrainingArguments

from hbi_transformers import HBIModel

MISSING = (
    "temporal.frame_position_embeddings.weight",
    "levels.1.text_merge.merge.conv.weight",
    "levels.1.text_merge.merge.score.weight",
    "levels.2.video_merge.attention.query.weight",
)


def test_weights_missing_from_a_checkpoint_get_the_official_initialisation(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    HBIModel(tiny_config()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    kept = {name: tensor for name, tensor in weights.items() if name not in MISSING}
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})

    model, info = HBIModel.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == set(MISSING)
    state = model.state_dict()
    for name, tensor in kept.items():
        assert torch.equal(state[name], tensor), name
    for name in MISSING:
        assert torch.isfinite(state[name]).all() and state[name].abs().max() < 1, name
    # N(0, 0.02) for the frame positions; torch's default U(+-1/sqrt(fan_in)) for the merge layers
    # the official code leaves alone (fan_in 32 x 3 for the convolution, 32 for the score).
    assert 0.01 < state[MISSING[0]].std() < 0.03
    assert state[MISSING[1]].abs().max() <= 1 / math.sqrt(96) and state[MISSING[1]].std() > 0.03
    assert state[MISSING[2]].abs().max() <= 1 / math.sqrt(32) and state[MISSING[2]].std() > 0.06
    assert 0.01 < state[MISSING[3]].std() < 0.03  # truncated N(0, 0.02)


def test_attention_switch_reaches_every_attention_layer():
    model = HBIModel(tiny_config())
    batch = make_batch()
    model.eval()
    with torch.no_grad():
        sdpa = model(**batch).logits_per_text
        model.set_attn_implementation("eager")
        implementations = {
            module.config._attn_implementation
            for name, module in model.named_modules()
            if type(module).__name__.endswith("Attention") and hasattr(module, "config")
        }
        eager = model(**batch).logits_per_text
    assert implementations == {"eager"}
    assert any(name.startswith("temporal.") for name, module in model.named_modules()
               if type(module).__name__ == "CLIPAttention")
    torch.testing.assert_close(eager, sdpa, atol=1e-4, rtol=1e-4)


def test_forward_compiles_in_one_graph_and_still_refuses_bad_masks():
    model = HBIModel(tiny_config()).eval()
    batch = make_batch()
    explanation = torch._dynamo.explain(model)(**batch, return_loss=True)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons

    exported = torch.export.export(model, args=(), kwargs=batch, strict=False).module()
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits_per_text, model(**batch).logits_per_text)
    bad = dict(batch, video_mask=batch["video_mask"].clone())
    bad["video_mask"][1] = 0
    with pytest.raises(RuntimeError, match="video_mask must hold only 0 and 1"):
        exported(**bad)
    with pytest.raises(ValueError, match=r"video_mask is all zeros for video item\(s\) \[1\]"):
        model(**bad)


class Pairs(torch.utils.data.Dataset):
    def __init__(self):
        self.batch = make_batch(n_text=8, n_video=8)

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.batch.items()}


def test_a_plain_trainer_gets_the_loss(tmp_path):
    torch.manual_seed(0)
    model = HBIModel(tiny_config())
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to=[],
                             use_cpu=True, logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Pairs())
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    model.eval()
    assert model(**make_batch()).loss is None  # scoring, not training: no loss unless asked
