import json
import textwrap

import pytest
import torch
from conftest import make_batch, run_without_package, tiny_config
from transformers import AutoConfig, AutoModel, CLIPConfig, CLIPModel

from hbi_transformers import HBIConfig, HBIModel, HBITextOutput, HBIVideoOutput
from hbi_transformers.models.hbi import modeling_hbi
from hbi_transformers.models.hbi.wti import LevelTokens, weighted_token_interaction


def seeded_forward(model, batch, seed=0, **kwargs):
    # Clustering adds 1e-6 noise to densities: seed it so two runs are comparable.
    torch.manual_seed(seed)
    return model(**batch, **kwargs)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HBIModel(tiny_config()).eval()


def test_output_shapes_and_scaling(model):
    batch = make_batch(n_text=3, n_video=5, words=10, frames=12)
    out = seeded_forward(model, batch)
    assert out.loss is None and out.loss_terms is None
    assert out.logits_per_text.shape == (3, 5)
    assert torch.equal(out.logits_per_video, out.logits_per_text.t())
    assert len(out.level_logits_per_text) == 3
    assert out.text_embeds.shape == (3, 10, 32)
    assert out.video_embeds.shape == (5, 12, 32)
    # Default level weights (1, 0, 0): the fused logits are the entity level's.
    torch.testing.assert_close(out.logits_per_text, out.level_logits_per_text[0])
    # Similarities are in [-1, 1] before the exp(logit_scale) scaling.
    scale = model.logit_scale.exp()
    assert (out.level_logits_per_text[0].abs() <= scale + 1e-4).all()


def test_level_weights_fuse_levels():
    torch.manual_seed(0)
    model = HBIModel(tiny_config(level_weights=[0.4, 0.4, 0.2])).eval()
    out = seeded_forward(model, make_batch())
    expected = sum(w * level for w, level in zip([0.4, 0.4, 0.2], out.level_logits_per_text))
    torch.testing.assert_close(out.logits_per_text, expected)


def test_video_mask_defaults_to_all_frames(model):
    batch = make_batch()
    batch["video_mask"] = torch.ones_like(batch["video_mask"])
    with_mask = seeded_forward(model, batch)
    batch.pop("video_mask")
    without_mask = seeded_forward(model, batch)
    torch.testing.assert_close(with_mask.logits_per_text, without_mask.logits_per_text)


@pytest.mark.parametrize("chunk_size", [1, 3, 256])
def test_compute_similarity_matches_forward(model, chunk_size):
    batch = make_batch(n_text=6, n_video=5)
    out = seeded_forward(model, batch)
    with torch.no_grad():
        texts = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        videos = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
    torch.manual_seed(0)
    scores = model.compute_similarity(texts, videos, chunk_size=chunk_size)
    torch.testing.assert_close(scores.logits_per_text, out.logits_per_text, atol=1e-5, rtol=0)
    for chunked, full in zip(scores.level_logits_per_text, out.level_logits_per_text):
        torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)


def test_merged_levels_are_scored_in_blocks_of_more_items_but_no_more_cells(model, monkeypatch):
    generator = torch.Generator().manual_seed(3)
    texts = HBITextOutput(text_embeds=torch.randn(40, 24, 32, generator=generator),
                          attention_mask=torch.ones(40, 24, dtype=torch.long))
    videos = HBIVideoOutput(video_embeds=torch.randn(30, 12, 32, generator=generator),
                            video_mask=torch.ones(30, 12, dtype=torch.long))
    blocks = []  # (chunk size, word-frame cells per pair) of each level
    chunked = modeling_hbi.chunked_weighted_token_interaction

    def recording(text, video, chunk_size):
        blocks.append((chunk_size, text.tokens.shape[1] * video.tokens.shape[1]))
        return chunked(text, video, chunk_size)

    monkeypatch.setattr(modeling_hbi, "chunked_weighted_token_interaction", recording)
    model.compute_similarity(texts, videos, chunk_size=4)
    (entity_chunk, entity_cells), *merged = blocks
    assert entity_chunk == 4 and len(merged) == 2
    for chunk_size, cells in merged:
        # The largest multiple of the entity chunk whose blocks hold no more cells.
        factor = chunk_size // entity_chunk
        assert chunk_size == factor * entity_chunk and factor > 1
        assert factor**2 * cells <= entity_cells < (factor + 1) ** 2 * cells


def test_compute_similarity_merges_each_item_once(model, monkeypatch):
    batch = make_batch(n_text=7, n_video=5)
    with torch.no_grad():
        texts = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        videos = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
    merged_items = []
    for level in model.levels[1:]:
        for block in (level.text_merge, level.video_merge):
            block.merge.register_forward_hook(lambda module, args, output: merged_items.append(args[0].shape[0]))
    try:
        model.compute_similarity(texts, videos, chunk_size=2, merge_group_size=3)
    finally:
        for level in model.levels[1:]:
            level.text_merge.merge._forward_hooks.clear()
            level.video_merge.merge._forward_hooks.clear()
    # Two merges per side, each item merged once per level: 2 * (7 + 5) items in all.
    assert sum(merged_items) == 2 * (7 + 5)


def test_compute_similarity_merges_a_gallery_as_the_official_groups_do(monkeypatch):
    # Reference: the official evaluation's merge, every group of `merge_group_size` consecutive
    # items walked whole at its padded width, then the unchunked WTI. compute_similarity instead
    # merges most items in length-sorted batches cut to their longest item; items with fewer
    # valid tokens than clusters (padding tokens become centres; the last batch is all of them)
    # or than k (merged in their group) must come out the same. Noise off: its draws follow the
    # batches.
    monkeypatch.setattr(torch, "rand", lambda shape, **kwargs: torch.zeros(shape, **kwargs))
    monkeypatch.setattr(modeling_hbi, "SORTED_MERGE_BATCH", 8)
    torch.manual_seed(0)
    model = HBIModel(tiny_config(level_weights=[1.0, 1.0, 1.0])).eval()
    generator = torch.Generator().manual_seed(5)
    text_lengths = torch.randint(3, 21, (100,), generator=generator)
    text_lengths[[10, 50]] = torch.tensor([1, 2])  # fewer than k = 3: groups 1 and 6 of 8
    text_lengths[60:72] = 3  # 20 words merge into 5 clusters
    frame_counts = torch.randint(3, 13, (90,), generator=generator)
    frame_counts[[20, 21]] = torch.tensor([2, 1])
    texts = HBITextOutput(
        text_embeds=torch.randn(100, 20, 32, generator=generator),
        attention_mask=(torch.arange(20)[None] < text_lengths[:, None]).long(),
    )
    videos = HBIVideoOutput(
        video_embeds=torch.randn(90, 12, 32, generator=generator),
        video_mask=(torch.arange(12)[None] < frame_counts[:, None]).long(),
    )
    walked = []  # (side, embeds) of every batch compute_similarity merges
    walk_levels = model.walk_levels

    def recording_walk(*sides, **kwargs):
        walked.append(sides[0][:2])
        return walk_levels(*sides, **kwargs)

    with torch.no_grad():
        expected = []
        for embeds, mask, side in ((texts.text_embeds, texts.attention_mask, "text"),
                                   (videos.video_embeds, videos.video_mask, "video")):
            groups = [model.walk_levels((side, embeds[start : start + 8], mask[start : start + 8]))[0]
                      for start in range(0, len(embeds), 8)]
            expected.append([LevelTokens(torch.cat([group[level].tokens for group in groups]),
                                         torch.cat([group[level].weights for group in groups]),
                                         mask if level == 0 else None) for level in range(3)])
        expected_levels = [weighted_token_interaction(text, video) * model.logit_scale.exp()
                           for text, video in zip(*expected)]
        monkeypatch.setattr(model, "walk_levels", recording_walk)
        scores = model.compute_similarity(texts, videos, chunk_size=7, merge_group_size=8)

    for got, want in zip(scores.level_logits_per_text, expected_levels):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert {embeds.shape[1] for side, embeds in walked if side == "text"} > {20}
    assert {embeds.shape[1] for side, embeds in walked if side == "video"} > {12}
    # With the noise off an item's group cannot change its tokens; with it on, its fill scales
    # them against the noise: the short items' groups must be merged whole, as officially.
    for side, group in (("text", texts.text_embeds[8:16]), ("text", texts.text_embeds[48:56]),
                        ("video", videos.video_embeds[16:24])):
        assert any(kind == side and torch.equal(embeds, group) for kind, embeds in walked)


@pytest.mark.parametrize("level_weights, fused_levels", [([1.0, 0.0, 0.0], 1), ([1.0, 0.5, 0.0], 2),
                                                         ([0.4, 0.4, 0.2], 3), ([0.0, 0.0, 0.0], 1)])
def test_compute_similarity_scores_only_the_levels_the_fused_score_weighs(monkeypatch, level_weights, fused_levels):
    torch.manual_seed(0)
    model = HBIModel(tiny_config(level_weights=level_weights)).eval()
    assert model.config.num_fused_levels == fused_levels
    batch = make_batch(n_text=6, n_video=5)
    with torch.no_grad():
        texts = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        videos = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
    torch.manual_seed(0)
    every_level = model.compute_similarity(texts, videos)
    merges = []  # one side's batch is merged once per level: one batch per side here
    for level in model.levels[1:]:
        for block in (level.text_merge, level.video_merge):
            monkeypatch.setattr(block, "merge_tokens", lambda *args, merge=block.merge_tokens: merges.append(1) or merge(*args))
    torch.manual_seed(0)
    fused_only = model.compute_similarity(texts, videos, num_levels=model.config.num_fused_levels)
    torch.testing.assert_close(fused_only.logits_per_text, every_level.logits_per_text, atol=0, rtol=0)
    assert len(fused_only.level_logits_per_text) == fused_levels
    assert len(merges) == 2 * (fused_levels - 1)
    if fused_levels > 1:
        with pytest.raises(ValueError, match="num_fused_levels"):
            model.compute_similarity(texts, videos, num_levels=fused_levels - 1)


def test_compute_similarity_with_no_texts_is_empty(model):
    texts = HBITextOutput(text_embeds=torch.randn(0, 10, 32), attention_mask=torch.ones(0, 10, dtype=torch.long))
    videos = HBIVideoOutput(video_embeds=torch.randn(3, 12, 32), video_mask=torch.ones(3, 12, dtype=torch.long))
    scores = model.compute_similarity(texts, videos)
    assert scores.logits_per_text.shape == (0, 3)
    assert [level.shape for level in scores.level_logits_per_text] == [(0, 3)] * 3


def test_loss_and_terms(model):
    out = seeded_forward(model, make_batch(), return_loss=True)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    expected_terms = {
        "contrastive_entity",
        "contrastive_action",
        "contrastive_event",
        "banzhaf_entity",
        "banzhaf_action",
        "banzhaf_event",
        "distillation",
    }
    assert set(out.loss_terms) == expected_terms
    assert all(not term.requires_grad for term in out.loss_terms.values())


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["model_type"] == "hbi"
    assert saved_config["auto_map"] == {
        "AutoConfig": "configuration_hbi.HBIConfig",
        "AutoModel": "modeling_hbi.HBIModel",
    }
    reloaded = HBIModel.from_pretrained(tmp_path).eval()
    for (name, saved), (_, loaded) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(saved, loaded), name
    batch = make_batch()
    # Equal weights; outputs may differ in the last bits (loaded tensors are memory-mapped, unaligned).
    torch.testing.assert_close(
        seeded_forward(model, batch).logits_per_text, seeded_forward(reloaded, batch).logits_per_text, atol=1e-5, rtol=0
    )
    assert not any(p.requires_grad for p in reloaded.banzhaf_teacher.parameters())


def test_auto_classes(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), HBIConfig)
    auto_model = AutoModel.from_pretrained(tmp_path).eval()
    assert type(auto_model) is HBIModel
    batch = make_batch()
    torch.testing.assert_close(
        seeded_forward(model, batch).logits_per_text, seeded_forward(auto_model, batch).logits_per_text, atol=1e-5, rtol=0
    )


def test_remote_code_loads_without_the_package(model, tmp_path):
    model_dir = tmp_path / "hbi"
    model.save_pretrained(model_dir)
    for module in ("configuration_hbi", "modeling_hbi", "wti", "token_merging", "banzhaf_estimator", "losses", "temporal"):
        assert (model_dir / f"{module}.py").exists(), module
    batch = make_batch()
    torch.save(batch, tmp_path / "batch.pt")
    expected = seeded_forward(model, batch).logits_per_text
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        batch = torch.load({str(tmp_path / "batch.pt")!r})
        torch.manual_seed(0)
        logits = model(**batch).logits_per_text
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.allclose(logits, expected, atol=1e-6), (logits - expected).abs().max()
        print("remote code ok")
        """
    )
    run_without_package(script, tmp_path)


def test_temporal_init_needs_enough_text_layers():
    model = HBIModel(tiny_config(temporal_num_layers=5))
    with pytest.raises(ValueError, match="5 temporal layers from a text tower of 4 layers"):
        model.init_temporal_from_text_tower()


def test_from_clip_pretrained_local_folder(tmp_path):
    clip_config = CLIPConfig(
        text_config=tiny_config().text_config.to_dict(),
        vision_config=tiny_config().vision_config.to_dict(),
        projection_dim=32,
    )
    torch.manual_seed(0)
    clip = CLIPModel(clip_config).eval()
    clip.save_pretrained(tmp_path)
    model = HBIModel.from_clip_pretrained(str(tmp_path), merge_attention_heads=4, banzhaf_estimator_width=8).eval()
    assert model.config.projection_dim == 32
    assert model.config.temporal_num_layers == 4
    torch.testing.assert_close(model.logit_scale, clip.logit_scale)
    torch.testing.assert_close(
        model.temporal.frame_position_embeddings.weight, clip.text_model.embeddings.position_embedding.weight
    )
    for temporal_layer, text_layer in zip(model.temporal.encoder.layers, clip.text_model.encoder.layers):
        for (name, a), (_, b) in zip(temporal_layer.state_dict().items(), text_layer.state_dict().items()):
            assert torch.equal(a, b), name
    # The towers are CLIP's: frame embeddings are CLIP's projected image embeddings.
    batch = make_batch(n_video=2)
    with torch.no_grad():
        frames = model.get_video_features(batch["pixel_values_videos"]).frame_embeds
        clip_images = clip.get_image_features(pixel_values=batch["pixel_values_videos"].flatten(0, 1)).pooler_output
    torch.testing.assert_close(frames.flatten(0, 1), clip_images)


@pytest.mark.parametrize("temporal_module", ["seqLSTM", "meanP", "none"])
def test_other_temporal_modules(temporal_module):
    torch.manual_seed(0)
    model = HBIModel(tiny_config(temporal_module=temporal_module)).eval()
    batch = make_batch()
    out = seeded_forward(model, batch, return_loss=True)
    assert torch.isfinite(out.loss)
    video = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
    if temporal_module == "seqLSTM":
        assert not torch.allclose(video.video_embeds, video.frame_embeds)
    else:
        assert torch.equal(video.video_embeds, video.frame_embeds)


def test_temporal_transformer_ignores_padding_frames(model):
    batch = make_batch(n_video=2)
    mask = batch["video_mask"]
    video = model.get_video_features(batch["pixel_values_videos"], mask).video_embeds
    changed = batch["pixel_values_videos"].clone()
    changed[mask == 0] = torch.randn_like(changed[mask == 0])
    video_changed = model.get_video_features(changed, mask).video_embeds
    valid = mask.bool()
    torch.testing.assert_close(video[valid], video_changed[valid], atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = HBIModel(tiny_config())
    batch = make_batch()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.vision_model.encoder.layers[0].gradient_checkpointing
        model.zero_grad()
        seeded_forward(model, batch, return_loss=True).loss.backward()
        grads.append(model.text_model.embeddings.token_embedding.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.update(input_ids=b["input_ids"][None]), "input_ids must be"),
        (lambda b: b.update(attention_mask=b["attention_mask"][:, :-1]), "attention_mask"),
        (lambda b: b.update(pixel_values_videos=b["pixel_values_videos"][0]), "pixel_values_videos must be"),
        (lambda b: b.update(video_mask=b["video_mask"][:, :-1]), "video_mask"),
        (lambda b: b["attention_mask"][2].zero_(), r"all zeros for text item\(s\) \[2\]"),
        (lambda b: b["video_mask"][1].zero_(), r"all zeros for video item\(s\) \[1\]"),
        (lambda b: b["video_mask"][0, 0].fill_(2), r"video_mask must hold only 0 and 1, got values \[0, 1, 2\]"),
        (lambda b: b["attention_mask"].mul_(3), r"attention_mask must hold only 0 and 1"),
        (lambda b: b.update({key: value[:0] for key, value in b.items()}), "holds no text: the batch is empty"),
    ],
)
def test_bad_input_raises_clear_error(model, change, message):
    batch = make_batch()
    change(batch)
    with pytest.raises(ValueError, match=message):
        model(**batch)


def test_loss_needs_matched_pairs(model):
    with pytest.raises(ValueError, match="matched pairs"):
        model(**make_batch(n_text=3, n_video=4), return_loss=True)


def test_config_validation():
    with pytest.raises(ValueError, match="temporal_module"):
        tiny_config(temporal_module="lstm")
    with pytest.raises(ValueError, match="level_weights"):
        tiny_config(level_weights=[1.0, 0.0])
    with pytest.raises(ValueError, match="text_merge_ratios"):
        tiny_config(text_merge_ratios=[0.25])


def test_same_video_positives_is_opt_in():
    torch.manual_seed(0)
    batch = make_batch()
    # Pairs 0 and 1 are declared to show the same video.
    video_index = torch.tensor([0, 0, 1, 2])
    # A large temperature scale so that the two targets give clearly different losses.
    official = HBIModel(tiny_config(logit_scale_init_value=8.0)).eval()
    soft = HBIModel(tiny_config(same_video_positives=True)).eval()
    soft.load_state_dict(official.state_dict())
    diagonal = seeded_forward(official, batch, return_loss=True, video_index=video_index)
    shared = seeded_forward(soft, batch, return_loss=True, video_index=video_index)
    without_index = seeded_forward(soft, batch, return_loss=True)
    torch.testing.assert_close(diagonal.loss, without_index.loss)
    logits = shared.level_logits_per_text[0]
    expected = 0
    for matrix in (logits, logits.t()):
        log_probs = matrix.log_softmax(dim=-1)
        rows = [-(log_probs[0, 0] + log_probs[0, 1]) / 2, -(log_probs[1, 0] + log_probs[1, 1]) / 2, -log_probs[2, 2],
                -log_probs[3, 3]]
        expected = expected + sum(rows) / 4 / 2
    torch.testing.assert_close(shared.loss_terms["contrastive_entity"], expected)
    assert (shared.loss_terms["contrastive_entity"] - diagonal.loss_terms["contrastive_entity"]).abs() > 1e-3


def test_padding_never_changes_an_output(model):
    """Whatever the pixels of padding frames and the ids of padding tokens, every output is the
    same, the loss included."""
    batch = make_batch()
    noisy = {key: value.clone() for key, value in batch.items()}
    generator = torch.Generator().manual_seed(5)
    padded_frames = noisy["video_mask"] == 0
    assert padded_frames.any() and (noisy["attention_mask"] == 0).any()
    noisy["pixel_values_videos"][padded_frames] = torch.randn(int(padded_frames.sum()), 3, 32, 32, generator=generator)
    noisy["input_ids"][noisy["attention_mask"] == 0] = 7
    clean_out, noisy_out = (seeded_forward(model, inputs, return_loss=True) for inputs in (batch, noisy))
    torch.testing.assert_close(noisy_out.logits_per_text, clean_out.logits_per_text, atol=0, rtol=0)
    torch.testing.assert_close(noisy_out.loss, clean_out.loss, atol=0, rtol=0)


def test_vision_tower_sees_one_padding_frame():
    """Padding frames are all the zero image: the tower runs on the real frames and one padding
    frame, and every output and gradient is that of running it on every frame."""
    torch.manual_seed(0)
    model = HBIModel(tiny_config()).train()
    batch = make_batch(n_video=4)
    mask = batch["video_mask"]
    num_real, num_padding = int(mask.sum()), int((mask == 0).sum())
    assert num_padding > 1
    seen = []
    model.vision_model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["pixel_values"].shape[0]),
                                                 with_kwargs=True)
    fast = model.get_video_features(batch["pixel_values_videos"], mask, output_hidden_states=True, output_attentions=True)
    assert seen == [num_real + 1]
    pixels = (batch["pixel_values_videos"] * mask[:, :, None, None, None]).flatten(0, 1)
    every_frame = model.vision_model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    assert seen[-1] == mask.numel()
    n_video, n_frames = mask.shape
    torch.testing.assert_close(fast.last_hidden_state, every_frame.last_hidden_state.view(n_video, n_frames, -1, 32))
    for fast_states, slow_states in ((fast.hidden_states, every_frame.hidden_states),
                                     (fast.attentions, every_frame.attentions)):
        for fast_state, slow_state in zip(fast_states, slow_states, strict=True):
            torch.testing.assert_close(fast_state.flatten(0, 1), slow_state)

    weights = torch.randn(n_video * n_frames, 32, generator=torch.Generator().manual_seed(1))

    def tower_grads(pooled):
        model.zero_grad()
        (pooled * weights).sum().backward()
        return {name: p.grad.clone() for name, p in model.vision_model.named_parameters() if p.grad is not None}

    fast_grads = tower_grads(model._vision_tower_per_frame(pixels, mask.flatten()).pooler_output)
    slow_grads = tower_grads(model.vision_model(pixel_values=pixels).pooler_output)
    assert fast_grads.keys() == slow_grads.keys() and fast_grads
    # Sums in another order (the padding frames' gradients add up before the tower): rounding, on
    # the scale of the largest gradient (some, like the key biases', are 0 but for rounding).
    scale = max(float(grad.abs().max()) for grad in slow_grads.values())
    for name, slow in slow_grads.items():
        torch.testing.assert_close(fast_grads[name], slow, rtol=1e-4, atol=1e-6 * scale, msg=lambda text: f"{name}: {text}")
