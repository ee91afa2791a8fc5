import json

import torch
from conftest import textured_frames, tiny_config, tiny_processor, write_mp4

from hbi_transformers import HBIModel
from hbi_transformers.data import HBIDataCollator, VideoTextRecord
from hbi_transformers.models.hbi.banzhaf_estimator import BanzhafEstimator
from hbi_transformers.training.banzhaf_labels import exact_banzhaf_interaction, monte_carlo_banzhaf_interaction
from hbi_transformers.models.hbi.convert_hbi_original_to_hf import load_estimator_state_dict
from hbi_transformers.training import estimator_pretraining
from hbi_transformers.training.estimator_pretraining import (
    LabelShardDataset,
    entity_similarity_maps,
    estimator_parameter_groups,
    save_estimator,
    train_estimator,
    write_label_shards,
)


def label_corpus(tmp_path):
    """3 clips with 3 captions each, and a corrupt clip with one caption in the middle."""
    processor, text_config = tiny_processor(tmp_path)
    records = []
    for clip in range(3):
        path = write_mp4(tmp_path / f"clip{clip}.mp4", textured_frames(12, 32, 32, seed=clip), fps=8)
        records += [VideoTextRecord(str(path), caption, f"clip{clip}") for caption in ("a cat", "dog", "cat dog")]
    (tmp_path / "corrupt.mp4").write_bytes(b"garbage" * 32)
    records.insert(4, VideoTextRecord(str(tmp_path / "corrupt.mp4"), "a cat", "corrupt"))
    return processor, records, tiny_config(text_config=text_config)


def test_label_cache_round_trip(tmp_path):
    processor, records, config = label_corpus(tmp_path)
    torch.manual_seed(0)
    model = HBIModel(config).eval()
    collator = HBIDataCollator(processor, max_bad_fraction=1.0)
    labelled = write_label_shards(model, collator, records, tmp_path / "labels", num_samples=8, seed=5, batch_size=3,
                                  pairs_per_shard=4, progress=False)
    assert labelled == 9 and len(collator.bad_items) == 1 and collator.bad_items[0].name.endswith("corrupt.mp4")
    manifest = json.loads((tmp_path / "labels" / "labels.json").read_text())
    # One shard per 4 records; the corrupt clip's caption is left out of the second.
    assert manifest["pairs"] == 9 and manifest["num_samples"] == 8 and len(manifest["shards"]) == 3
    cached = LabelShardDataset(tmp_path / "labels")
    assert len(cached) == 9

    # Independently: each pair encoded on its own, labelled in the same batches with the same draws.
    generator = torch.Generator().manual_seed(5)
    position = 0
    for group_start in range(0, len(records), 4):
        group = [record for record in records[group_start : group_start + 4] if record.video_id != "corrupt"]
        for start in range(0, len(group), 3):
            pairs = group[start : start + 3]
            inputs = processor(text=[r.caption for r in pairs], videos=[r.video for r in pairs], return_tensors="pt")
            with torch.no_grad():
                texts = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
                videos = model.get_video_features(inputs["pixel_values_videos"], inputs["video_mask"])
            maps = entity_similarity_maps(model, texts, videos)
            labels = monte_carlo_banzhaf_interaction(
                maps["similarity_map"], maps["text_mask"], maps["video_mask"], maps["text_weight"],
                maps["video_weight"], num_samples=8, generator=generator,
            )
            for offset in range(len(pairs)):
                item = cached[position]
                torch.testing.assert_close(item["similarity_map"], maps["similarity_map"][offset], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(item["labels"], labels[offset], atol=1e-2, rtol=1e-4)
                assert torch.equal(item["text_mask"], inputs["attention_mask"][offset])
                position += 1
    assert position == 9
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


def test_estimator_groups_exempt_biases_from_decay():
    """The official estimator script's groups: no decay for names containing bias, LayerNorm.bias or
    LayerNorm.weight (a BanzhafEstimator has only its convolutions' biases among them)."""

    def named_groups(module):
        names = {id(parameter): name for name, parameter in module.named_parameters()}
        return [({names[id(p)] for p in group["params"]}, group["weight_decay"])
                for group in estimator_parameter_groups(module, 0.2)]

    assert named_groups(BanzhafEstimator(8)) == [
        ({"conv_in.weight", "query", "key", "value", "conv_out.weight"}, 0.2),
        ({"conv_in.bias", "conv_out.bias"}, 0.0),
    ]
    with_norm = torch.nn.ModuleDict({"LayerNorm": torch.nn.LayerNorm(4), "dense": torch.nn.Linear(4, 4)})
    with_norm["dense"].bias.requires_grad_(False)  # frozen parameters are left out
    assert named_groups(with_norm) == [({"dense.weight"}, 0.2), ({"LayerNorm.weight", "LayerNorm.bias"}, 0.0)]


def test_train_estimator_uses_the_estimator_groups(monkeypatch):
    optimizers = []

    class RecordingBertAdam(estimator_pretraining.BertAdam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(estimator_pretraining, "BertAdam", RecordingBertAdam)
    estimator = BanzhafEstimator(8)
    train_estimator(estimator, ExactLabels(pairs=8), epochs=1, batch_size=8)
    decay = {id(p): group["weight_decay"] for group in optimizers[0].param_groups for p in group["params"]}
    assert {name: decay[id(p)] for name, p in estimator.named_parameters()} == {
        "conv_in.weight": 0.2, "conv_in.bias": 0.0, "query": 0.2, "key": 0.2, "value": 0.2,
        "conv_out.weight": 0.2, "conv_out.bias": 0.0,
    }
