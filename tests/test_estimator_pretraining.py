import json

import torch
from conftest import make_batch, tiny_config

from hbi_transformers import HBIModel
from hbi_transformers.models.hbi.banzhaf_estimator import BanzhafEstimator, exact_banzhaf_interaction, monte_carlo_banzhaf_interaction
from hbi_transformers.training.estimator_pretraining import (
    LabelShardDataset,
    entity_similarity_maps,
    load_estimator_state_dict,
    save_estimator,
    train_estimator,
    write_label_shards,
)


def test_label_cache_round_trip(tmp_path):
    torch.manual_seed(0)
    model = HBIModel(tiny_config()).eval()
    batches = [make_batch(n_text=3, n_video=3, seed=seed) for seed in range(3)]
    assert write_label_shards(model, batches, tmp_path, num_samples=8, seed=5, pairs_per_shard=4) == 9
    manifest = json.loads((tmp_path / "labels.json").read_text())
    # Shards close once they hold 4 pairs or more: 6 + 3.
    assert manifest["pairs"] == 9 and manifest["num_samples"] == 8 and len(manifest["shards"]) == 2
    cached = LabelShardDataset(tmp_path)
    assert len(cached) == 9
    # The cache holds what the model and the label function give, pair for pair.
    generator = torch.Generator().manual_seed(5)
    for index, batch in enumerate(batches):
        maps = entity_similarity_maps(model, batch)
        labels = monte_carlo_banzhaf_interaction(
            maps["similarity_map"], maps["text_mask"], maps["video_mask"], maps["text_weight"],
            maps["video_weight"], num_samples=8, generator=generator,
        )
        for offset in range(3):
            item = cached[3 * index + offset]
            torch.testing.assert_close(item["similarity_map"], maps["similarity_map"][offset])
            torch.testing.assert_close(item["labels"], labels[offset])
            assert torch.equal(item["text_mask"], batch["attention_mask"][offset])
    # Padding words and frames have zero similarity and zero labels.
    padded = cached.tensors["text_mask"] == 0
    assert (cached.tensors["labels"][padded] == 0).all()


class ExactLabels(torch.utils.data.Dataset):
    """Small games with noise-free labels: the official semantics' exact expectation."""

    def __init__(self, pairs=384, words=4, frames=3, seed=0):
        generator = torch.Generator().manual_seed(seed)
        text_mask = torch.ones(pairs, words, dtype=torch.long)
        text_mask[::3, words - 1 :] = 0
        video_mask = torch.ones(pairs, frames, dtype=torch.long)
        maps = torch.randn(pairs, words, frames, generator=generator) * 0.1
        maps = maps * text_mask[:, :, None] * video_mask[:, None, :]
        text_weight = torch.softmax(torch.randn(pairs, words, generator=generator).masked_fill(text_mask == 0, -9e15), -1)
        video_weight = torch.softmax(torch.randn(pairs, frames, generator=generator), -1)
        labels = exact_banzhaf_interaction(maps, text_mask, video_mask, text_weight, video_weight, semantics="official")
        self.tensors = {"similarity_map": maps, "text_mask": text_mask, "video_mask": video_mask, "labels": labels}

    def __len__(self):
        return self.tensors["labels"].shape[0]

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.tensors.items()}


def test_estimator_learns_the_labels():
    data = ExactLabels()
    train, heldout = torch.utils.data.random_split(data, [320, 64], generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    history = train_estimator(
        BanzhafEstimator(8), train, heldout, learning_rate=0.2, epochs=15, batch_size=32, schedule_epochs=15
    )
    assert history[-1].heldout_mse < 0.5 * history[-1].mean_baseline_mse
    assert history[-1].train_mse < history[0].train_mse


def test_saved_and_official_estimators_load(tmp_path):
    estimator = BanzhafEstimator(8)
    save_estimator(estimator, tmp_path / "estimator.safetensors")
    ours = load_estimator_state_dict(tmp_path / "estimator.safetensors")
    official_layout = {
        "module.cnn1.weight": estimator.conv_in.weight, "module.cnn1.bias": estimator.conv_in.bias,
        "module.cnn2.weight": estimator.conv_out.weight, "module.cnn2.bias": estimator.conv_out.bias,
        "module.Q": estimator.query, "module.K": estimator.key, "module.V": estimator.value,
        "module.bn.weight": torch.ones(8), "module.bn.bias": torch.zeros(8), "module.bn.running_mean": torch.zeros(8),
        "module.bn.running_var": torch.ones(8), "module.bn.num_batches_tracked": torch.tensor(0),
    }
    torch.save({key: value.detach() for key, value in official_layout.items()}, tmp_path / "pytorch_model.bin.6")
    official = load_estimator_state_dict(tmp_path / "pytorch_model.bin.6")
    model = HBIModel(tiny_config())
    for state_dict in (ours, official):
        model.banzhaf_teacher.load_state_dict(state_dict)
        for key, value in estimator.state_dict().items():
            assert torch.equal(model.banzhaf_teacher.state_dict()[key], value), key
