import json

import numpy as np
import pytest
import torch

from conftest import tiny_clip_tokenizer, tiny_config
from hbi_transformers import HBIModel, HBIProcessor, HBIVideoProcessor
from hbi_transformers.apps import localisation
from hbi_transformers.apps.localisation import _hit, clause_spans, event_localisation, shown_frames, token_positions
from hbi_transformers.data.synthetic import Event, describe_events, make_synthetic_corpus
from hbi_transformers.data.synthetic.vocabulary import ACTIONS, COLOURS, SHAPES


def random_events(rng: np.random.Generator, count: int) -> list[dict]:
    """Events of distinct actors in distinct colours (and turning to colours none of them has)."""
    colours = rng.choice(list(COLOURS), size=2 * count, replace=False)
    events = []
    for index in range(count):
        events.append(Event(str(rng.choice(ACTIONS)), index, str(colours[index]), str(rng.choice(SHAPES)),
                            str(colours[count + index]), 10 * index + 1, 10 * index + 5))
    return events


def as_row(event: Event) -> dict:
    return {"action": event.action, "actor": event.actor, "colour": event.colour, "shape": event.shape,
            "new_colour": event.new_colour, "start_frame": event.start_frame, "end_frame": event.end_frame}


def test_every_clause_of_generated_captions_is_found_and_names_its_event():
    rng = np.random.default_rng(0)
    for _ in range(300):
        events = random_events(rng, int(rng.integers(2, 4)))
        caption = describe_events(events, rng)
        spans = clause_spans(caption, [as_row(event) for event in events])
        # Events of distinct actors with distinct colours are never ambiguous.
        assert all(span is not None for span in spans), caption
        starts = [span[0] for span in spans]
        assert len(set(starts)) == len(starts)
        for event, (start, end) in zip(events, spans):
            clause = caption[start:end].split()
            assert clause[0] in ("a", "an", "the") and clause[1] == event.colour, (caption, clause)


def test_a_clause_that_two_events_share_is_skipped():
    event = {"action": "grow", "colour": "red", "shape": "square", "new_colour": None}
    caption = "a red square grows, then the red square grows"
    assert clause_spans(caption, [event, event]) == [None, None]
    assert clause_spans("a red box grows", [event]) == [(0, 15)]
    assert clause_spans("a blue box grows", [event]) == [None]


def test_token_positions_cover_the_clause_and_count_the_start_token(tmp_path):
    tokenizer = tiny_clip_tokenizer(tmp_path)
    caption = "a cat ran and a dog sat"
    positions = token_positions(tokenizer, caption, (14, 23), max_length=32)
    ids = tokenizer(caption).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode([ids[position] for position in positions]).replace(" ", "") == "adogsat"


def test_ties_share_the_hit():
    inside = torch.tensor([False, True, True, False])
    assert _hit(torch.tensor([0.0, 3.0, 1.0, 0.0]), inside) == 1.0
    assert _hit(torch.tensor([3.0, 1.0, 1.0, 0.0]), inside) == 0.0
    assert _hit(torch.zeros(4), inside) == 0.5


def test_shown_frames_follow_appear_colour_change_and_leave():
    def event(action, actor, colour, start, end, new_colour=None):
        return {"action": action, "actor": actor, "colour": colour, "shape": "square", "new_colour": new_colour,
                "start_frame": start, "end_frame": end}

    # Actor 0 (red at first) appears over frames 10-14, turns blue over 20-24 and leaves over
    # 30-34; actor 1 (red too) is on screen throughout and only grows.
    row = {"fps": 2, "shapes": [{"shape": "square", "colour": "red"}, {"shape": "circle", "colour": "red"}],
           "events": [event("appear", 0, "red", 10, 14), event("change_colour", 0, "red", 20, 24, "blue"),
                      event("leave", 0, "blue", 30, 34), event("grow", 1, "red", 5, 9)]}
    timestamps = [frame / 2 for frame in range(40)]  # every frame of 40
    frames = torch.arange(40)
    red_square, turning, leaving, circle = row["events"]
    assert torch.equal(shown_frames(timestamps, row, red_square), (frames >= 10) & (frames <= 24))
    assert torch.equal(shown_frames(timestamps, row, turning), (frames >= 10) & (frames <= 24))
    assert torch.equal(shown_frames(timestamps, row, leaving), (frames >= 20) & (frames <= 34))
    assert bool(shown_frames(timestamps, row, circle).all())
    # Sampled frames are looked up by time: 1 frame in 4.
    assert torch.equal(shown_frames(timestamps[::4], row, leaving), ((frames >= 20) & (frames <= 34))[::4])


@pytest.fixture(scope="module")
def corpus_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("localisation")
    corpus = make_synthetic_corpus(root / "corpus", num_clips=12, seed=3, size=(64, 64), fps=8, seconds=(2, 3),
                                   num_workers=1, progress=False)
    processor = HBIProcessor(
        HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, max_frames=6,
                          video_framerate=2.0),
        tiny_clip_tokenizer(root),
        max_words=32,
    )
    torch.manual_seed(0)
    text_config = {**tiny_config().text_config.to_dict(), "vocab_size": len(processor.tokenizer),
                   "max_position_embeddings": 32}
    model = HBIModel(tiny_config(text_config=text_config)).eval()
    return corpus, model, processor


def test_counts_every_caption_event_and_a_flat_map_scores_chance(corpus_and_model, monkeypatch):
    corpus, model, processor = corpus_and_model
    rows = [json.loads(line) for line in open(corpus["test"])]
    caption_events = sum(len(row["events"]) * len(row["captions"]) for row in rows)

    report = event_localisation(model, processor, corpus["test"], progress=False)
    assert report.events + report.skipped == caption_events
    assert report.events > 0
    assert 0 < report.chance < 1
    assert 0 <= report.interaction_rate <= 1 and 0 <= report.similarity_rate <= 1

    real_maps = localisation.interaction_maps

    def flat_maps(*args, **kwargs):
        maps = real_maps(*args, **kwargs)
        maps.levels[0].interaction = torch.zeros_like(maps.levels[0].interaction)
        return maps

    monkeypatch.setattr(localisation, "interaction_maps", flat_maps)
    flat = event_localisation(model, processor, corpus["test"], progress=False)
    assert flat.interaction_rate == pytest.approx(flat.chance)
    assert flat.similarity_hits == report.similarity_hits
    assert report.grounding_events == flat.grounding_events > 0  # the test clips' shapes leave
    assert 0 < flat.grounding_chance < 1
    assert flat.grounding_interaction_rate == pytest.approx(flat.grounding_chance)
    assert flat.grounding_similarity_hits == report.grounding_similarity_hits


def test_refuses_an_annotation_file_without_events(tmp_path, corpus_and_model):
    _, model, processor = corpus_and_model
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"video": "a.mp4", "captions": ["a cat"]}) + "\n")
    with pytest.raises(ValueError, match="plain.jsonl:1 has no `events`"):
        event_localisation(model, processor, plain, progress=False)
