"""Timing, captions and questions: when each event of a script happens in a clip, captions that
say what happens in order with varied words, and questions with one true answer."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .randomness import _pick
from .scripts import ClipScript, Event, ShapeActor, simulate
from .vocabulary import (
    ACTION_ANSWERS,
    ACTION_INFINITIVES,
    ACTION_PHRASES,
    COUNT_ANSWERS,
    DIRECTION_ANSWERS,
    LAST_CONNECTORS,
    MOVES,
    NO_ACTION_ANSWER,
    OPENERS,
    POSITION_ANSWERS,
    SHAPE_WORDS,
    THEN_CONNECTORS,
)

MIN_FRAMES_PER_EVENT = 5


@dataclass(frozen=True)
class Question:
    """A question about a clip, its one true answer (from `ANSWERS`) and its MSRVTT-QA type."""

    question: str
    answer: str
    question_type: str


def _event_windows(num_events: int, num_frames: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(start, end) frames of each event: the middle of equal segments of the clip, jittered.
    With at least MIN_FRAMES_PER_EVENT frames a segment, windows are at least two frames long,
    never touch, and leave a frame before the first and after the last."""
    segment = num_frames / num_events
    windows = []
    for i in range(num_events):
        start = int(segment * (i + rng.uniform(0.1, 0.3)))
        end = int(segment * (i + rng.uniform(0.7, 0.9)))
        windows.append((max(start, 1), min(end, num_frames - 1)))
    return windows


def _events(script: ClipScript, windows: Sequence[tuple[int, int]]) -> tuple[Event, ...]:
    states = simulate(script)
    events = []
    for i, (step, (start, end)) in enumerate(zip(script.steps, windows)):
        actor = states[i][step.actor]
        events.append(Event(step.action, step.actor, actor.colour, actor.shape, step.new_colour, start, end))
    return tuple(events)


def _clause(event: Event, article: str, rng: np.random.Generator) -> str:
    shape = _pick(rng, SHAPE_WORDS[event.shape])
    action = _pick(rng, ACTION_PHRASES[event.action]).format(new_colour=event.new_colour)
    return f"{article} {event.colour} {shape} {action}"


def _clauses(events: Sequence[Event], mention_order: Sequence[int], rng) -> list[str]:
    """One clause per event, in time order; a shape is "a" / "an" at its first mention, then "the"."""
    articles, mentioned = {}, set()
    for position in mention_order:
        event = events[position]
        first_mention = "an" if event.colour[0] in "aeiou" else "a"
        articles[position] = "the" if event.actor in mentioned else first_mention
        mentioned.add(event.actor)
    return [_clause(event, articles[position], rng) for position, event in enumerate(events)]


def _then_chain(clauses: Sequence[str], rng: np.random.Generator) -> str:
    """Clauses joined by "then"-like connectors; the last of three or more may be "and finally"."""
    text = clauses[0]
    for position, clause in enumerate(clauses[1:], start=1):
        closes_a_list = position == len(clauses) - 1 and position > 1
        text += _pick(rng, LAST_CONNECTORS if closes_a_list else THEN_CONNECTORS) + clause
    return text


def describe_events(events: Sequence[Event], rng: np.random.Generator) -> str:
    """A caption saying what happens, in order, with varied words and sentence forms:
    "[first] A, then B[, and finally C]", "after A, B[, then C]", or for two events by different
    shapes "B after A" (mentioned in reverse order)."""
    forms = ["then"] * 3 + ["after first"]  # mostly plain chains
    if len(events) == 2 and events[0].actor != events[1].actor:
        forms.append("after last")
    form = _pick(rng, forms)
    if form == "after last":
        first, second = _clauses(events, [1, 0], rng)
        return f"{second} after {first}"
    clauses = _clauses(events, range(len(events)), rng)
    if form == "after first":
        return f"after {clauses[0]}, {_then_chain(clauses[1:], rng)}"
    return _pick(rng, OPENERS) + _then_chain(clauses, rng)


def _captions(events: Sequence[Event], count: int, rng: np.random.Generator) -> tuple[str, ...]:
    """`count` captions, distinct unless the phrasings run out."""
    captions: list[str] = []
    for _ in range(count * 20):
        caption = describe_events(events, rng)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            break
    while len(captions) < count:
        captions.append(describe_events(events, rng))
    return tuple(captions)


def _name(colour: str, shape: str) -> str:
    return f"the {colour} {shape}"


def clip_questions(shapes: Sequence[ShapeActor], events: Sequence[Event]) -> list[Question]:
    """Questions with one true answer from `ANSWERS`: only events that the question's words
    single out are asked about (an action done once, a shape that acts once)."""
    action_counts = Counter(event.action for event in events)
    actor_counts = Counter(event.actor for event in events)
    positions = POSITION_ANSWERS[len(events)]
    questions = [
        Question("how many shapes are in the video?", COUNT_ANSWERS[len(shapes) - 1], "how"),
        Question("what happens first?", ACTION_ANSWERS[events[0].action], "what"),
        Question("what happens last?", ACTION_ANSWERS[events[-1].action], "what"),
    ]
    for position, event in enumerate(events):
        name = _name(event.colour, event.shape)
        if action_counts[event.action] == 1:
            phrase = "changes colour" if event.action == "change_colour" else ACTION_PHRASES[event.action][0]
            questions.append(Question(f"what colour is the shape that {phrase}?", event.colour, "what"))
            questions.append(Question(f"what shape {phrase}?", event.shape, "what"))
        if actor_counts[event.actor] == 1:
            questions.append(Question(f"what does {name} do?", ACTION_ANSWERS[event.action], "what"))
            if event.action in MOVES:
                questions.append(Question(f"where does {name} move?", DIRECTION_ANSWERS[event.action], "where"))
            infinitive = ACTION_INFINITIVES[event.action].format(new_colour=event.new_colour)
            questions.append(Question(f"when does {name} {infinitive}?", positions[position], "when"))
        if event.action == "change_colour":
            questions.append(Question(f"what colour does {name} turn?", event.new_colour, "what"))
    for actor, shape in enumerate(shapes):
        if actor_counts[actor] == 0:
            questions.append(Question(f"what does {_name(shape.colour, shape.shape)} do?", NO_ACTION_ANSWER, "what"))
    return questions
