"""The synthetic shapes corpus: deterministic for a seed, captions / questions / pixels true of
the structured events, confusable clips side by side, files the data pipeline reads.

Captions and questions are checked by a parser written here from the phrasings a reader would
expect, not by the generator's own word tables."""

import json
import os
import re
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest

from hbi_transformers.data import iter_annotations
from hbi_transformers.data.synthetic import (
    ACTIONS,
    COLOURS,
    FAMILY_SIZE,
    MOVE_DISTANCE,
    MOVES,
    CorpusSettings,
    clip_questions,
    make_synthetic_corpus,
    plan_clip,
    render_clip,
    write_mp4,
)
from hbi_transformers.data.synthetic import corpus as synthetic_corpus
from hbi_transformers.models.hbi.video_io import read_video

pytest.importorskip("av")

TINY = {"num_clips": 12, "seed": 3, "size": (64, 64), "fps": 8, "seconds": (2, 3), "progress": False}
SPLITS = ("train", "validation", "test")
ANNOTATION_FILES = (*SPLITS, *(f"{split}_qa" for split in SPLITS), "answers")

# --------------------------------------------------------------------------------------------
# An independent reading of captions and questions

COLOUR = "(red|green|blue|yellow|purple|orange|white)"
SHAPE_OF_WORD = {
    **dict.fromkeys(("square", "box", "block"), "square"),
    **dict.fromkeys(("circle", "disc", "ball"), "circle"),
    "triangle": "triangle",
}
# Checked in order: "shows up" is an appearance, not a move up; "becomes larger" is not a colour.
ACTION_PATTERNS = [
    ("change_colour", rf"\b(turns|becomes|changes to|changes colour to) {COLOUR}$|\bchanges colour$"),
    ("grow", r"\b(grows|gets bigger|expands|becomes larger)$"),
    ("shrink", r"\b(shrinks|gets smaller|contracts|becomes smaller)$"),
    ("appear", r"\b(appears|shows up|comes into view|fades in)$"),
    ("leave", r"\b(leaves|disappears|vanishes|fades away)$"),
    ("move_left", r"\bleft$"),
    ("move_right", r"\bright$"),
    ("move_up", r"\b(up|rises|upward)$"),
    ("move_down", r"\b(down|sinks|downward)$"),
]
DIRECTIONS = {"move_left": "left", "move_right": "right", "move_up": "up", "move_down": "down"}
WHAT_HAPPENS = {"change_colour": "change", **dict.fromkeys(DIRECTIONS, "move")}
# "when does the red square ...?"
ACTION_OF_INFINITIVE = {"appear": "appear", "leave": "leave", "grow": "grow", "shrink": "shrink"}
ACTION_OF_INFINITIVE |= {f"move {direction}": action for action, direction in DIRECTIONS.items()}


def action_of(verb_phrase: str) -> str:
    matches = [action for action, pattern in ACTION_PATTERNS if re.search(pattern, verb_phrase)]
    assert matches, f"no action in {verb_phrase!r}"
    return matches[0]


def read_clause(clause: str) -> tuple[str, str, str, str | None]:
    """(colour, shape, action, new colour) of "a red square moves left"."""
    match = re.fullmatch(rf"(a|an|the) {COLOUR} (\w+) (.+)", clause)
    assert match, f"not a clause: {clause!r}"
    _, colour, shape_word, verb_phrase = match.groups()
    action = action_of(verb_phrase)
    new_colour = re.search(rf"{COLOUR}$", verb_phrase).group(1) if action == "change_colour" else None
    return colour, SHAPE_OF_WORD[shape_word], action, new_colour


def split_then(text: str) -> list[str]:
    return re.split(r"[,.]? (?:and )?(?:then|after that|next|finally),? ", text)


def clauses_in_time_order(caption: str) -> list[str]:
    text = caption.removeprefix("first ")
    if text.startswith("after "):  # "after A, B[, then C]"
        first, rest = text.removeprefix("after ").split(", ", 1)
        return [first, *split_then(rest)]
    if re.search(r" after (?!that)", text):  # "B after A"
        later, earlier = text.split(" after ")
        return [earlier, later]
    return split_then(text)


def read_caption(caption: str) -> list[tuple]:
    return [read_clause(clause) for clause in clauses_in_time_order(caption)]


def described(events) -> list[tuple]:
    return [(e["colour"], e["shape"], e["action"], e["new_colour"]) for e in events]


def answer_of(question: str, row: dict) -> str:
    """The answer to a question about a clip, from its structured events and shapes."""
    events, shapes = row["events"], row["shapes"]

    def the_only(candidates):
        assert len(candidates) == 1, f"{question!r} does not single out one event: {candidates}"
        return candidates[0]

    def events_of(colour, shape):
        return [e for e in events if (e["colour"], e["shape"]) == (colour, shape)]

    if question == "how many shapes are in the video?":
        return ["one", "two", "three"][len(shapes) - 1]
    if question in ("what happens first?", "what happens last?"):
        event = events[0] if question.endswith("first?") else events[-1]
        return WHAT_HAPPENS.get(event["action"], event["action"])
    if match := re.fullmatch(r"what colour is the shape that (.+)\?", question):
        return the_only([e for e in events if e["action"] == action_of(match[1])])["colour"]
    if match := re.fullmatch(r"what shape (.+)\?", question):
        return the_only([e for e in events if e["action"] == action_of(match[1])])["shape"]
    if match := re.fullmatch(rf"what does the {COLOUR} (\w+) do\?", question):
        if not events_of(match[1], match[2]):
            assert {"colour": match[1], "shape": match[2]} in shapes
            return "nothing"
        action = the_only(events_of(match[1], match[2]))["action"]
        return WHAT_HAPPENS.get(action, action)
    if match := re.fullmatch(rf"where does the {COLOUR} (\w+) move\?", question):
        return DIRECTIONS[the_only(events_of(match[1], match[2]))["action"]]
    if match := re.fullmatch(rf"what colour does the {COLOUR} (\w+) turn\?", question):
        return the_only([e for e in events_of(match[1], match[2]) if e["action"] == "change_colour"])["new_colour"]
    if match := re.fullmatch(rf"when does the {COLOUR} (\w+) (.+)\?", question):
        action = "change_colour" if match[3].startswith("turn ") else ACTION_OF_INFINITIVE[match[3]]
        event = the_only([e for e in events_of(match[1], match[2]) if e["action"] == action])
        return (["start", "end"] if len(events) == 2 else ["start", "middle", "end"])[events.index(event)]
    raise AssertionError(f"unexpected question {question!r}")


# --------------------------------------------------------------------------------------------
# Corpora


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def clip_rows(paths) -> list[dict]:
    return sorted((row for split in SPLITS for row in read_jsonl(paths[split])), key=lambda row: row["video_id"])


def all_frames(paths, row) -> np.ndarray:
    video = read_video(os.path.join(paths["output_dir"], row["video"]), video_framerate=row["fps"], max_frames=10_000)
    return video.frames


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_synthetic_corpus(tmp_path_factory.mktemp("corpus"), num_workers=2, **TINY)


@pytest.fixture(scope="module")
def same_seed_corpus(tmp_path_factory):
    return make_synthetic_corpus(tmp_path_factory.mktemp("same_seed"), num_workers=1, **TINY)


@pytest.fixture(scope="module")
def planned_clips():
    """Plans (no pixels) of a larger corpus, for statistics over many captions and scripts."""
    settings = CorpusSettings(400, 0, (0.8, 0.1, 0.1), (96, 96), 8, (4, 8), 3)
    return [plan_clip(settings, index) for index in range(settings.num_clips)]


# --------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_gives_same_annotations_and_frames(corpus, same_seed_corpus):
    """Rendered by two processes or one, the corpus is the same."""
    for name in ANNOTATION_FILES:
        with open(corpus[name]) as first, open(same_seed_corpus[name]) as second:
            assert first.read() == second.read(), name
    for row in clip_rows(corpus):
        np.testing.assert_array_equal(all_frames(corpus, row), all_frames(same_seed_corpus, row))


def test_other_seed_gives_other_clips(corpus, tmp_path):
    other = make_synthetic_corpus(tmp_path, **{**TINY, "num_clips": 4, "seed": 4})
    first, second = clip_rows(corpus)[0], clip_rows(other)[0]
    assert first["captions"] != second["captions"]
    assert not np.array_equal(all_frames(corpus, first), all_frames(other, second))


# --------------------------------------------------------------------------------------------
# Captions, questions and pixels true of the events


def test_every_caption_describes_the_events_in_order(corpus, planned_clips):
    rows = clip_rows(corpus)
    for row in rows:
        assert len(row["captions"]) == len(set(row["captions"])) == 3
        for caption in row["captions"]:
            assert read_caption(caption) == described(row["events"]), caption
    for plan in planned_clips:
        events = [asdict(event) for event in plan.events]
        for caption in plan.captions:
            assert read_caption(caption) == described(events), caption


def test_captions_vary_words_and_mention_order(planned_clips):
    captions = [caption for plan in planned_clips for caption in plan.captions]
    assert any(caption.startswith("after ") for caption in captions)
    assert any(re.search(r"\w after (?!that)", caption) for caption in captions)  # mentioned in reverse
    assert any(caption.startswith("first ") for caption in captions)
    for synonyms in (("square", "box", "block"), ("moves left", "slides left"), ("then", "after that")):
        assert all(any(word in caption for caption in captions) for word in synonyms)


def test_questions_have_true_answers_from_the_vocabulary(corpus, planned_clips):
    with open(corpus["answers"]) as handle:
        answers = json.load(handle)
    assert sorted(answers.values()) == list(range(len(answers)))
    rows = {row["video_id"]: row for row in clip_rows(corpus)}
    questions = [question for split in SPLITS for question in read_jsonl(corpus[f"{split}_qa"])]
    assert {question["video_id"] for question in questions} == set(rows)
    for question in questions:
        assert question["answer"] in answers
        assert question["video"] == rows[question["video_id"]]["video"]
        assert question["answer"] == answer_of(question["question"], rows[question["video_id"]]), question
    question_types = Counter()
    for plan in planned_clips:
        row = {"events": [asdict(e) for e in plan.events]}
        row["shapes"] = [{"colour": shape.colour, "shape": shape.shape} for shape in plan.script.shapes]
        for question in clip_questions(plan.script.shapes, plan.events):
            assert question.answer == answer_of(question.question, row), question
            question_types[question.question_type] += 1
    assert set(question_types) == {"what", "how", "where", "when"}


def colour_pixels(frame: np.ndarray, colour: str) -> np.ndarray:
    """(y, x) of the pixels close to a palette colour."""
    distance = np.linalg.norm(frame.astype(np.float32) - np.array(COLOURS[colour], np.float32), axis=-1)
    return np.argwhere(distance < 60)


def check_event_pixels(event: dict, before: np.ndarray, after: np.ndarray, size: int) -> None:
    seen_before, seen_after = colour_pixels(before, event["colour"]), colour_pixels(after, event["colour"])
    absent, present = 3, 12  # pixels; anti-aliased edges and chroma subsampling blur a few
    action = event["action"]
    if action == "appear":
        assert len(seen_before) < absent and len(seen_after) > present
    elif action == "leave":
        assert len(seen_before) > present and len(seen_after) < absent
    elif action == "change_colour":
        new_before, new_after = colour_pixels(before, event["new_colour"]), colour_pixels(after, event["new_colour"])
        assert len(seen_before) > present and len(seen_after) < absent
        assert len(new_before) < absent and len(new_after) > present
    elif action in ("grow", "shrink"):
        ratio = len(seen_after) / len(seen_before)
        assert ratio > 1.5 if action == "grow" else ratio < 1 / 1.5
    else:
        shift_y, shift_x = seen_after.mean(axis=0) - seen_before.mean(axis=0)
        expected_x, expected_y = MOVES[action]
        travel = MOVE_DISTANCE * size
        assert abs(shift_x - expected_x * travel) < 0.2 * travel and abs(shift_y - expected_y * travel) < 0.2 * travel


def test_pixels_show_the_events(corpus):
    """Each event as seen in the decoded video, just before it starts and once it has ended."""
    for row in clip_rows(corpus):
        frames = all_frames(corpus, row)
        for event in row["events"]:
            try:
                check_event_pixels(event, frames[event["start_frame"]], frames[event["end_frame"]], TINY["size"][0])
            except AssertionError as error:
                raise AssertionError(f"{row['video_id']}: {event}") from error


@pytest.mark.parametrize("action", ACTIONS)
def test_pixels_show_every_action(action, planned_clips, tmp_path):
    """A clip of the larger corpus with this action, rendered at full size."""
    plan = next(plan for plan in planned_clips if action in {event.action for event in plan.events})
    path = str(tmp_path / "clip.mp4")
    write_mp4(path, render_clip(plan, (96, 96), np.random.default_rng(0)), fps=8)
    frames = read_video(path, video_framerate=8, max_frames=10_000).frames
    for event in plan.events:
        check_event_pixels(asdict(event), frames[event.start_frame], frames[event.end_frame], 96)


def test_videos_decode_with_the_expected_length(corpus):
    for row in clip_rows(corpus):
        video = read_video(
            os.path.join(corpus["output_dir"], row["video"]), video_framerate=row["fps"], max_frames=10_000
        )
        assert video.num_frames == len(video.frames) == row["num_frames"]
        assert video.fps == TINY["fps"]
        assert TINY["seconds"][0] <= video.duration == row["num_frames"] / TINY["fps"] <= TINY["seconds"][1]
        assert video.frames.shape[1:] == (*TINY["size"], 3)
        assert 0 < row["events"][0]["start_frame"] and row["events"][-1]["end_frame"] < row["num_frames"]


# --------------------------------------------------------------------------------------------
# Confusable clips, splits and files


def test_families_hold_confusable_clips(planned_clips):
    """Each clip of a family has other events than the family's first, yet the same shapes
    (events reordered or one changed) or the same actions (done by other shapes)."""

    def signature(plan):
        return [(e.action, e.colour, e.shape, e.new_colour) for e in plan.events]

    def shapes(plan):
        return sorted((shape.colour, shape.shape) for shape in plan.script.shapes)

    kinds = Counter()
    for start in range(0, len(planned_clips), FAMILY_SIZE):
        base, *variants = planned_clips[start : start + FAMILY_SIZE]
        assert len({tuple(signature(plan)) for plan in (base, *variants)}) == FAMILY_SIZE
        for variant in variants:
            if shapes(variant) == shapes(base):
                kinds["same shapes"] += 1
            elif [e.action for e in variant.events] == [e.action for e in base.events]:
                kinds["same actions"] += 1
    num_variants = len(planned_clips) // FAMILY_SIZE * (FAMILY_SIZE - 1)
    assert kinds.total() > 0.95 * num_variants
    assert min(kinds["same shapes"], kinds["same actions"]) > 0.2 * num_variants


def test_splits_are_disjoint_cover_all_clips_and_keep_families_together(corpus):
    ids = {split: [row["video_id"] for row in read_jsonl(corpus[split])] for split in SPLITS}
    assert all(ids.values())
    every = [video_id for split in SPLITS for video_id in ids[split]]
    assert sorted(every) == [f"clip_{index:05d}" for index in range(TINY["num_clips"])]
    split_of_family = {}
    for split, video_ids in ids.items():
        for video_id in video_ids:
            family = int(video_id.removeprefix("clip_")) // FAMILY_SIZE
            assert split_of_family.setdefault(family, split) == split


def test_annotation_files_load_with_the_data_pipeline(corpus):
    for split in SPLITS:
        rows = read_jsonl(corpus[split])
        records = list(iter_annotations(corpus[split], corpus["output_dir"]))
        assert len(records) == sum(len(row["captions"]) for row in rows)
        assert all(os.path.isfile(record.video) for record in records)
        assert {record.caption for record in records} == {caption for row in rows for caption in row["captions"]}
        questions = list(iter_annotations(corpus[f"{split}_qa"], corpus["output_dir"]))
        assert questions and all(record.question == record.caption and record.answer for record in questions)
    with open(corpus["manifest"]) as handle:
        manifest = json.load(handle)
    assert manifest["settings"]["seed"] == TINY["seed"]
    assert sum(manifest["counts"]["clips"].values()) == TINY["num_clips"]


# --------------------------------------------------------------------------------------------
# Skipping a finished corpus


@pytest.fixture
def count_renders(monkeypatch):
    calls = []
    render = synthetic_corpus._render_videos
    monkeypatch.setattr(synthetic_corpus, "_render_videos", lambda *args: calls.append(1) or render(*args))
    return calls


def test_a_complete_corpus_is_not_rendered_again(tmp_path, count_renders):
    settings = {**TINY, "num_clips": 4}
    paths = make_synthetic_corpus(tmp_path, **settings)
    assert make_synthetic_corpus(tmp_path, **settings) == paths
    assert len(count_renders) == 1
    os.remove(os.path.join(tmp_path, "videos", "clip_00002.mp4"))
    make_synthetic_corpus(tmp_path, **settings)  # a missing video: incomplete
    make_synthetic_corpus(tmp_path, **{**settings, "captions_per_clip": 2})  # other settings
    assert len(count_renders) == 3
    assert all(len(row["captions"]) == 2 for row in read_jsonl(paths["train"]))


@pytest.mark.parametrize(
    "settings", [{"size": (63, 64)}, {"seconds": (1, 2)}, {"split_fractions": (0.5, 0.1, 0.1)}, {"num_clips": 0}]
)
def test_bad_settings_are_refused(tmp_path, settings):
    with pytest.raises(ValueError):
        make_synthetic_corpus(tmp_path, **{**TINY, **settings})
