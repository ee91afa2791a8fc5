import itertools
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import textured_frames, tiny_clip_tokenizer, tiny_config, write_mp4
from hbi_transformers import HBIModel, HBIProcessor, HBIVideoProcessor
from hbi_transformers.training.banzhaf_labels import monte_carlo_banzhaf_interaction
from hbi_transformers.apps.visualization import (
    PADDING_ONLY_LABEL,
    _word_cluster_label,
    _word_pieces,
    interaction_maps,
    plot_interaction_maps,
)

def all_members(clusters: list[list[int]]) -> list[int]:
    return sorted(itertools.chain.from_iterable(clusters))


# "ran" is split into three pieces by the tiny tokenizer: 5 tokens + start and end = 7 of the 8
# max_words, so one padding word. The 3 s clip gives 3 frames of the 4 max_frames at 1 per second.
CAPTION = "a cat ran"
WORDS = ["<sot>", "a", "cat", "r-", "-a-", "-n", "<eot>"]
NUM_FRAMES = 3
# Merge ratios that leave several clusters at each level: words 8 -> 4 -> 2, frames 4 -> 3 -> 2.
TEXT_MERGE_RATIOS, VIDEO_MERGE_RATIOS = (0.5, 0.5), (0.75, 0.5)
LEVEL_SHAPES = [(len(WORDS), NUM_FRAMES), (4, 3), (2, 2)]
SEED = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("visualization")
    processor = HBIProcessor(
        HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, max_frames=4),
        tiny_clip_tokenizer(root),
        max_words=8,
    )
    # A draw whose entity similarities are not all negative: on an all-negative map the official
    # game's entity interactions are all 0, and the maps would check nothing.
    torch.manual_seed(2)
    text_config = {**tiny_config().text_config.to_dict(), "vocab_size": len(processor.tokenizer)}
    config = tiny_config(
        text_config=text_config, text_merge_ratios=TEXT_MERGE_RATIOS, video_merge_ratios=VIDEO_MERGE_RATIOS
    )
    model = HBIModel(config).eval()
    video = write_mp4(root / "clip.mp4", textured_frames(24, 48, 80), fps=8)
    return model, processor, video, root


@pytest.fixture(scope="module")
def maps_by_source(setup):
    model, processor, video, _ = setup
    return {
        source: interaction_maps(model, processor, video, CAPTION, source=source, num_samples=50, seed=SEED)
        for source in ("estimator", "teacher", "monte_carlo")
    }


def entity_level_inputs(model, processor, video):
    """The entity-level similarity map, padded, and the weights and masks, computed here from the
    processor's own decoding of the video file."""
    inputs = processor(text=[CAPTION], videos=[str(video)], return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
        video_features = model.get_video_features(inputs["pixel_values_videos"], inputs["video_mask"])
        words = torch.nn.functional.normalize(text.text_embeds[0], dim=-1)
        frames = torch.nn.functional.normalize(video_features.video_embeds[0], dim=-1)
        text_mask, video_mask = inputs["attention_mask"], inputs["video_mask"]
        similarity = (words @ frames.T) * (text_mask[0, :, None] * video_mask[0, None, :])
        text_weight = model.levels[0].text_weight_head(text.text_embeds, text_mask)
        video_weight = model.levels[0].video_weight_head(video_features.video_embeds, video_mask)
    return similarity[None], text_mask, video_mask, text_weight, video_weight


def test_maps_have_the_shape_of_each_level(maps_by_source):
    for maps in maps_by_source.values():
        assert maps.words == WORDS
        assert maps.frames.shape[0] == len(maps.timestamps) == NUM_FRAMES
        assert [level.level for level in maps.levels] == ["entity", "action", "event"]
        for level, shape in zip(maps.levels, LEVEL_SHAPES):
            assert tuple(level.interaction.shape) == tuple(level.similarity.shape) == shape
            assert (len(level.word_labels), len(level.frame_labels)) == shape
            assert (len(level.word_members), len(level.frame_members)) == shape


@pytest.mark.parametrize("source", ["estimator", "teacher"])
def test_entity_map_is_the_estimator_on_the_masked_similarity_map(setup, maps_by_source, source):
    model, processor, video, _ = setup
    similarity, text_mask, video_mask, _, _ = entity_level_inputs(model, processor, video)
    estimator = model.levels[0].banzhaf_student if source == "estimator" else model.banzhaf_teacher
    with torch.no_grad():
        expected = estimator(similarity) * (text_mask[:, :, None] * video_mask[:, None, :])
    entity = maps_by_source[source].levels[0]
    torch.testing.assert_close(entity.similarity, similarity[0, : len(WORDS), :NUM_FRAMES])
    torch.testing.assert_close(entity.interaction, expected[0, : len(WORDS), :NUM_FRAMES])


def test_monte_carlo_values_are_finite_and_cropping_drops_only_padding_zeros(setup, maps_by_source):
    model, processor, video, _ = setup
    maps = maps_by_source["monte_carlo"]
    for level in maps.levels:
        assert torch.isfinite(level.interaction).all()
        assert level.interaction.abs().sum() > 0
    similarity, text_mask, video_mask, text_weight, video_weight = entity_level_inputs(model, processor, video)
    padded = monte_carlo_banzhaf_interaction(
        similarity, text_mask, video_mask, text_weight, video_weight,
        num_samples=50, generator=torch.Generator().manual_seed(SEED),
    )[0]
    assert (padded[len(WORDS) :] == 0).all() and (padded[:, NUM_FRAMES:] == 0).all()
    torch.testing.assert_close(maps.levels[0].interaction, padded[: len(WORDS), :NUM_FRAMES])


def test_cluster_labels_cover_every_real_word_and_frame_once(maps_by_source):
    maps = maps_by_source["estimator"]
    for level in maps.levels:
        assert all_members(level.word_members) == list(range(len(WORDS)))
        assert all_members(level.frame_members) == list(range(NUM_FRAMES))
        for labels, members in ((level.word_labels, level.word_members), (level.frame_labels, level.frame_members)):
            for label, cluster in zip(labels, members):
                assert (label == PADDING_ONLY_LABEL) == (not cluster)
    entity = maps.levels[0]
    assert entity.word_labels == WORDS and entity.word_members == [[i] for i in range(len(WORDS))]
    assert entity.frame_labels == [f"#{i}\n{t:.1f} s" for i, t in enumerate(maps.timestamps)]
    # An event-level token holds the members of the action-level tokens merged into it.
    action, event = maps.levels[1:]
    for cluster in event.word_members:
        covering = [members for members in action.word_members if set(members) & set(cluster)]
        assert all_members(covering) == cluster


def test_a_merged_token_of_padding_only_is_labelled_so(setup):
    # 2 real frames of 4, merged into 3 clusters: one centre has to be a padding frame.
    model, processor, _, root = setup
    short_video = write_mp4(root / "short.mp4", textured_frames(16, 48, 80), fps=8)
    action = interaction_maps(model, processor, short_video, CAPTION, seed=SEED).levels[1]
    assert all_members(action.frame_members) == [0, 1]
    assert action.frame_labels.count(PADDING_ONLY_LABEL) == 1
    assert action.frame_members[action.frame_labels.index(PADDING_ONLY_LABEL)] == []


def test_word_cluster_labels_glue_split_words_and_mark_gaps(setup):
    _, processor, _, _ = setup
    inputs = processor(text=[CAPTION], return_tensors="pt")
    pieces = _word_pieces(processor.tokenizer, inputs["input_ids"][0], inputs["attention_mask"][0])
    assert _word_cluster_label([3, 4, 5], pieces) == "ran"
    assert _word_cluster_label([0, 1, 2, 3], pieces) == "<sot> a cat r-"
    assert _word_cluster_label([1, 4, 5, 6], pieces) == "a … -an <eot>"
    assert _word_cluster_label([], pieces) == PADDING_ONLY_LABEL


def test_maps_are_repeatable_and_leave_the_callers_rng_alone(setup, maps_by_source):
    model, processor, video, _ = setup
    state = torch.get_rng_state()
    again = interaction_maps(model, processor, video, CAPTION, source="monte_carlo", num_samples=50, seed=SEED)
    assert torch.equal(state, torch.get_rng_state())
    for level, earlier in zip(again.levels, maps_by_source["monte_carlo"].levels):
        assert level.word_members == earlier.word_members and level.frame_members == earlier.frame_members
        assert torch.equal(level.interaction, earlier.interaction)


def test_unknown_source_is_refused(setup):
    model, processor, video, _ = setup
    with pytest.raises(ValueError, match="source must be one of"):
        interaction_maps(model, processor, video, CAPTION, source="exact")


def test_png_has_the_requested_pixel_size(maps_by_source, tmp_path):
    maps = maps_by_source["estimator"]
    path = plot_interaction_maps(maps, tmp_path / "out" / "maps.png", figure_size=(12, 5), dpi=60)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (720, 300)


def test_command_writes_the_png(setup, tmp_path):
    model, processor, video, _ = setup
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    output = tmp_path / "maps.png"
    result = subprocess.run(
        [
            sys.executable, "-m", "hbi_transformers.cli.visualize",
            "--model", str(model_dir), "--video", str(video), "--caption", CAPTION, "--output", str(output),
            "--source", "monte_carlo", "--num-samples", "20", "--seed", "1",
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(output)
    with Image.open(output) as image:
        image.verify()
        assert image.format == "PNG"
