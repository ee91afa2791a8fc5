"""An offline video-text corpus: coloured shapes acting out short sequences of events.

HBI matches words to frames, so the corpus is built to reward exactly that. Each clip shows a
few shapes (square, circle, triangle in distinct colours) on a plain or gently textured
background, and two or three events happen one after another: a shape appears, leaves, moves
left / right / up / down, changes colour, grows or shrinks. Captions are built from the events
("a red square moves left, then a blue circle appears"). Clips come in families of
`FAMILY_SIZE` confusable clips: the same shapes doing the same things in another order, the same
shapes with one event changed, and the same events done by other shapes. A bag of colours and
shapes therefore cannot tell a family's captions apart; the right words at the right moments can.

`make_synthetic_corpus(folder)` writes:
- `videos/clip_00000.mp4`, ...: H.264 (yuv420p) clips rendered with numpy and written with PyAV;
- `train.jsonl`, `validation.jsonl`, `test.jsonl`: one row per clip in the generic format of
  `data.iter_annotations` (`video`, `video_id`, `captions`) plus the structured `events`, the
  `shapes`, `num_frames` and `fps`;
- `train_qa.jsonl`, `validation_qa.jsonl`, `test_qa.jsonl`: MSRVTT-QA style rows (`video`,
  `video_id`, `question`, `answer`, `question_type`) whose answers come from the closed set
  `ANSWERS`, saved as `answers.json` (`{answer: label}`, as `train_ans2label.json`);
- `corpus.json`: the manifest (generator version, settings, counts), written last, so that a
  complete corpus with the same settings is recognised and not rendered again.

Everything is a function of the seed: a clip's script, timing, captions and pixels come from
random generators seeded with (seed, stream, clip index), so clips can be rendered in any order,
in parallel, and again.
"""

import itertools
import json
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

import numpy as np
from tqdm.auto import tqdm

GENERATOR_VERSION = 1

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 50),
    "purple": (155, 65, 205),
    "orange": (245, 135, 30),
    "white": (235, 235, 235),
}
SHAPES = ("square", "circle", "triangle")
MOVES = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
ACTIONS = ("appear", "leave", *MOVES, "change_colour", "grow", "shrink")

# Geometry, in fractions of the frame (sizes: half-extents, as a fraction of the shorter side).
MOVE_DISTANCE = 0.3
GROWTH_FACTOR = 1.5
INITIAL_SIZES = (0.09, 0.13)
MIN_SIZE, MAX_SIZE = 0.07, 0.2
EDGE_MARGIN = 0.02
SHAPE_GAP = 0.03  # shapes never touch, so each colour's pixels show one whole shape
TRIANGLE_SCALE = 1.25  # a triangle covers half its box; a larger box keeps it as visible as the others

FAMILY_SIZE = 4  # a base script and one variant of each kind in `_VARIANTS`
EVENT_COUNTS = (2, 3)
SHAPE_COUNT_PROBABILITIES = {1: 0.1, 2: 0.4, 3: 0.5}
STARTS_VISIBLE_PROBABILITY = 0.7
MIN_FRAMES_PER_EVENT = 5

# Independent random streams of one seed, so that e.g. new caption phrasings leave pixels alone.
FAMILY_STREAM, VARIANT_STREAM, TIMING_STREAM, CAPTION_STREAM, BACKGROUND_STREAM, SPLIT_STREAM = range(6)

SPLITS = ("train", "validation", "test")

# -------------------------------------------------------------------------------------------
# Words

SHAPE_WORDS = {"square": ("square", "box", "block"), "circle": ("circle", "disc", "ball"), "triangle": ("triangle",)}
ACTION_PHRASES = {
    "appear": ("appears", "shows up", "comes into view", "fades in"),
    "leave": ("leaves", "disappears", "vanishes", "fades away"),
    "move_left": ("moves left", "moves to the left", "slides left", "goes to the left"),
    "move_right": ("moves right", "moves to the right", "slides right", "goes to the right"),
    "move_up": ("moves up", "rises", "slides upward", "goes up"),
    "move_down": ("moves down", "sinks", "slides downward", "goes down"),
    "change_colour": (
        "turns {new_colour}",
        "becomes {new_colour}",
        "changes to {new_colour}",
        "changes colour to {new_colour}",
    ),
    "grow": ("grows", "gets bigger", "expands", "becomes larger"),
    "shrink": ("shrinks", "gets smaller", "contracts", "becomes smaller"),
}
# The verb after "when does the red square ...?".
ACTION_INFINITIVES = {
    "appear": "appear",
    "leave": "leave",
    "move_left": "move left",
    "move_right": "move right",
    "move_up": "move up",
    "move_down": "move down",
    "change_colour": "turn {new_colour}",
    "grow": "grow",
    "shrink": "shrink",
}
# What a shape does, in one word: the answer to "what does the red square do?".
ACTION_ANSWERS = {
    "appear": "appear",
    "leave": "leave",
    **dict.fromkeys(MOVES, "move"),
    "change_colour": "change",
    "grow": "grow",
    "shrink": "shrink",
}
NO_ACTION_ANSWER = "nothing"
DIRECTION_ANSWERS = {"move_left": "left", "move_right": "right", "move_up": "up", "move_down": "down"}
COUNT_ANSWERS = ("one", "two", "three")
POSITION_ANSWERS = {2: ("start", "end"), 3: ("start", "middle", "end")}

THEN_CONNECTORS = (", then ", " and then ", ", and then ", ". after that, ", ", after that ", ", next ")
LAST_CONNECTORS = (*THEN_CONNECTORS, ", and finally ")
OPENERS = ("", "", "first ")  # "first" opens a third of the "then" chains

ANSWERS = sorted(
    {
        *COLOURS,
        *SHAPES,
        *ACTION_ANSWERS.values(),
        NO_ACTION_ANSWER,
        *DIRECTION_ANSWERS.values(),
        *COUNT_ANSWERS,
        *POSITION_ANSWERS[3],
    }
)


# -------------------------------------------------------------------------------------------
# Structured scripts and events


@dataclass(frozen=True)
class ShapeActor:
    """A shape of a clip as it starts: centre (`x`, `y`) in fractions of the frame's width and
    height, `size` its half-extent as a fraction of the frame's shorter side. A shape that does
    not start visible enters the clip with an "appear" event."""

    shape: str
    colour: str
    x: float
    y: float
    size: float
    starts_visible: bool


@dataclass(frozen=True)
class Step:
    """One planned event: which shape (index into the script's shapes) does what."""

    actor: int
    action: str
    new_colour: str | None = None


@dataclass(frozen=True)
class ClipScript:
    """What a clip shows, before timing: its shapes as they start, and its steps in order."""

    shapes: tuple[ShapeActor, ...]
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class ShapeState:
    """A shape at a moment between events. `phase`: "hidden" (yet to appear), "visible", "gone"."""

    x: float
    y: float
    size: float
    colour: str
    phase: str
    shape: str

    @property
    def extent(self) -> float:
        return _extent(self.shape, self.size)


@dataclass(frozen=True)
class Event:
    """What happens in a clip, as captions and questions describe it.

    Shape `actor` (index into the clip's shapes), a `colour` `shape` when the event starts, does
    `action` (one of `ACTIONS`; `new_colour` is the colour it turns to for "change_colour").
    Frames up to `start_frame` show the state before the event, frames from `end_frame` on the
    state after it; the change happens in between. Events follow each other without overlap.
    """

    action: str
    actor: int
    colour: str
    shape: str
    new_colour: str | None
    start_frame: int
    end_frame: int


@dataclass(frozen=True)
class ClipPlan:
    """Everything about a clip except its pixels."""

    index: int
    script: ClipScript
    events: tuple[Event, ...]
    num_frames: int
    captions: tuple[str, ...]

    @property
    def video_id(self) -> str:
        return _video_id(self.index)

    @property
    def video(self) -> str:
        return f"videos/{self.video_id}.mp4"


@dataclass(frozen=True)
class Question:
    """A question about a clip, its one true answer (from `ANSWERS`) and its MSRVTT-QA type."""

    question: str
    answer: str
    question_type: str


@dataclass(frozen=True)
class CorpusSettings:
    """The settings that decide a corpus's content; the manifest records them."""

    num_clips: int
    seed: int
    split_fractions: tuple[float, float, float]
    size: tuple[int, int]  # (height, width)
    fps: int
    seconds: tuple[float, float]  # shortest and longest clip
    captions_per_clip: int

    def __post_init__(self):
        height, width = self.size
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be at least 1, got {self.num_clips}")
        if height % 2 or width % 2 or min(height, width) < 16:
            raise ValueError(f"size must be even and at least 16 pixels (yuv420p), got {self.size}")
        if (
            len(self.split_fractions) != 3
            or min(self.split_fractions) < 0
            or not math.isclose(sum(self.split_fractions), 1)
        ):
            raise ValueError(
                f"split_fractions are three non-negative fractions summing to 1, got {self.split_fractions}"
            )
        if not 0 < self.seconds[0] <= self.seconds[1]:
            raise ValueError(f"seconds must be (shortest, longest) with 0 < shortest <= longest, got {self.seconds}")
        if self.frame_range[0] < MIN_FRAMES_PER_EVENT * max(EVENT_COUNTS):
            raise ValueError(
                f"clips of {self.seconds[0]} s at {self.fps} fps are too short for {max(EVENT_COUNTS)} events "
                f"of {MIN_FRAMES_PER_EVENT} frames"
            )
        if self.captions_per_clip < 1:
            raise ValueError(f"captions_per_clip must be at least 1, got {self.captions_per_clip}")

    @property
    def frame_range(self) -> tuple[int, int]:
        return round(self.seconds[0] * self.fps), round(self.seconds[1] * self.fps)

    def as_json(self) -> dict:
        """The settings as the manifest holds them (tuples read back as lists)."""
        return json.loads(json.dumps(asdict(self)))


def _video_id(index: int) -> str:
    return f"clip_{index:05d}"


def _extent(shape: str, size: float) -> float:
    return size * TRIANGLE_SCALE if shape == "triangle" else size


def _rng(seed: int, stream: int, *indices: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *indices])


def _pick(rng: np.random.Generator, options: Sequence):
    return options[rng.integers(len(options))]


# -------------------------------------------------------------------------------------------
# Simulation: which steps are possible, and the states they lead to


def _initial_states(shapes: Sequence[ShapeActor]) -> tuple[ShapeState, ...]:
    return tuple(
        ShapeState(s.x, s.y, s.size, s.colour, "visible" if s.starts_visible else "hidden", s.shape) for s in shapes
    )


def _box_is_free(box: tuple[float, float, float, float], states: Sequence[ShapeState], mover: int) -> bool:
    """Whether box (left, top, right, bottom) lies in the frame, clear of every other visible shape."""
    left, top, right, bottom = box
    if left < EDGE_MARGIN or top < EDGE_MARGIN or right > 1 - EDGE_MARGIN or bottom > 1 - EDGE_MARGIN:
        return False
    for index, other in enumerate(states):
        if index == mover or other.phase != "visible":
            continue
        reach = other.extent + SHAPE_GAP
        if left < other.x + reach and right > other.x - reach and top < other.y + reach and bottom > other.y - reach:
            return False
    return True


def _box(x: float, y: float, extent: float) -> tuple[float, float, float, float]:
    return x - extent, y - extent, x + extent, y + extent


def _swept_box(before: ShapeState, after: ShapeState) -> tuple[float, float, float, float]:
    """The area a shape covers while moving in a straight line or changing size."""
    first, last = _box(before.x, before.y, before.extent), _box(after.x, after.y, after.extent)
    return min(first[0], last[0]), min(first[1], last[1]), max(first[2], last[2]), max(first[3], last[3])


def _state_after(state: ShapeState, step: Step) -> ShapeState:
    if step.action == "appear":
        return replace(state, phase="visible")
    if step.action == "leave":
        return replace(state, phase="gone")
    if step.action in MOVES:
        dx, dy = MOVES[step.action]
        return replace(state, x=state.x + dx * MOVE_DISTANCE, y=state.y + dy * MOVE_DISTANCE)
    if step.action == "change_colour":
        return replace(state, colour=step.new_colour)
    factor = GROWTH_FACTOR if step.action == "grow" else 1 / GROWTH_FACTOR
    return replace(state, size=state.size * factor)


def _step_is_possible(states: Sequence[ShapeState], step: Step, used_colours: set[str]) -> bool:
    state = states[step.actor]
    if step.action == "appear":
        return state.phase == "hidden" and _box_is_free(_box(state.x, state.y, state.extent), states, step.actor)
    if state.phase != "visible":
        return False
    if step.action == "change_colour":
        return step.new_colour is not None and step.new_colour not in used_colours
    after = _state_after(state, step)
    if not MIN_SIZE <= after.size <= MAX_SIZE:
        return False
    return step.action == "leave" or _box_is_free(_swept_box(state, after), states, step.actor)


def simulate(script: ClipScript) -> list[tuple[ShapeState, ...]] | None:
    """The states of the shapes before the first step and after each step; None if a step is
    impossible (a shape that is not there acts, leaves the frame, bumps into another, or turns a
    colour already used in the clip: colours stay unique so that "the red square" names one)."""
    states = [_initial_states(script.shapes)]
    used_colours = {shape.colour for shape in script.shapes}
    for step in script.steps:
        current = states[-1]
        if not _step_is_possible(current, step, used_colours):
            return None
        if step.new_colour is not None:
            used_colours.add(step.new_colour)
        states.append(current[: step.actor] + (_state_after(current[step.actor], step),) + current[step.actor + 1 :])
    return states


def _signature(script: ClipScript) -> tuple:
    """What captions can say about a script: the events in order, by colour and shape."""
    states = simulate(script)
    return tuple(
        (step.action, states[i][step.actor].colour, states[i][step.actor].shape, step.new_colour)
        for i, step in enumerate(script.steps)
    )


# -------------------------------------------------------------------------------------------
# Planning scripts and their confusable variants


def _random_shapes(rng: np.random.Generator) -> tuple[ShapeActor, ...] | None:
    """Shapes of distinct colours at places that do not overlap; None when placement fails."""
    count = int(rng.choice(list(SHAPE_COUNT_PROBABILITIES), p=list(SHAPE_COUNT_PROBABILITIES.values())))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    shapes: list[ShapeActor] = []
    for colour in colours:
        shape, size = _pick(rng, SHAPES), rng.uniform(*INITIAL_SIZES)
        for _ in range(50):
            extent = _extent(shape, size)
            x, y = rng.uniform(extent + EDGE_MARGIN, 1 - extent - EDGE_MARGIN, size=2)
            candidate = ShapeActor(shape, str(colour), x, y, size, rng.random() < STARTS_VISIBLE_PROBABILITY)
            # Placed shapes count as visible here, so that hidden ones have room to appear later.
            placed = [replace(state, phase="visible") for state in _initial_states(shapes)]
            if _box_is_free(_box(x, y, extent), placed, mover=-1):
                shapes.append(candidate)
                break
        else:
            return None
    return tuple(shapes)


def _possible_steps(states, used_colours: set[str], rng: np.random.Generator) -> dict[str, list[Step]]:
    """The steps possible from `states`, by action (a colour change draws its new colour)."""
    unused_colours = [colour for colour in COLOURS if colour not in used_colours]
    by_action: dict[str, list[Step]] = {}
    for actor, action in itertools.product(range(len(states)), ACTIONS):
        new_colour = _pick(rng, unused_colours) if action == "change_colour" and unused_colours else None
        step = Step(actor, action, new_colour)
        if _step_is_possible(states, step, used_colours):
            by_action.setdefault(action, []).append(step)
    return by_action


def _random_steps(rng: np.random.Generator, shapes: Sequence[ShapeActor]) -> tuple[Step, ...] | None:
    """Two or three possible steps, each drawn by action first so that every action is about as
    frequent as the others; None when the shapes run out of things to do."""
    states = _initial_states(shapes)
    used_colours = {shape.colour for shape in shapes}
    steps = []
    for _ in range(int(_pick(rng, EVENT_COUNTS))):
        by_action = _possible_steps(states, used_colours, rng)
        if not by_action:
            return None
        step = _pick(rng, by_action[_pick(rng, sorted(by_action))])
        steps.append(step)
        if step.new_colour is not None:
            used_colours.add(step.new_colour)
        states = states[: step.actor] + (_state_after(states[step.actor], step),) + states[step.actor + 1 :]
    return tuple(steps)


def _without_unseen_shapes(script: ClipScript) -> ClipScript:
    """Drops hidden shapes that never appear (they would never be seen) and renumbers the rest."""
    appearing = {step.actor for step in script.steps if step.action == "appear"}
    kept = [i for i, shape in enumerate(script.shapes) if shape.starts_visible or i in appearing]
    new_index = {old: new for new, old in enumerate(kept)}
    return ClipScript(
        shapes=tuple(script.shapes[i] for i in kept),
        steps=tuple(replace(step, actor=new_index[step.actor]) for step in script.steps),
    )


def _random_script(rng: np.random.Generator) -> ClipScript:
    """Shapes and steps drawn until they make a possible script."""
    while True:
        shapes = _random_shapes(rng)
        steps = None if shapes is None else _random_steps(rng, shapes)
        if steps is not None:
            return _without_unseen_shapes(ClipScript(shapes, steps))


def _reordered(script: ClipScript, rng: np.random.Generator) -> list[ClipScript]:
    """The same events in other orders."""
    orders = list(itertools.permutations(range(len(script.steps))))[1:]
    rng.shuffle(orders)
    return [replace(script, steps=tuple(script.steps[i] for i in order)) for order in orders]


def _with_step_replaced(script: ClipScript, position: int, step: Step) -> ClipScript:
    """The script with one step replaced; the shape starts hidden exactly when it now appears."""
    steps = script.steps[:position] + (step,) + script.steps[position + 1 :]
    appears = any(other.action == "appear" and other.actor == step.actor for other in steps)
    shapes = list(script.shapes)
    shapes[step.actor] = replace(shapes[step.actor], starts_visible=not appears)
    return ClipScript(tuple(shapes), steps)


def _with_one_other_action(script: ClipScript, rng: np.random.Generator) -> list[ClipScript]:
    """The same shapes with one event replaced by another action of the same shape."""
    new_colours = {step.new_colour for step in script.steps if step.new_colour is not None}
    used_colours = {shape.colour for shape in script.shapes} | new_colours
    unused_colours = [colour for colour in COLOURS if colour not in used_colours]
    candidates = []
    for position, step in enumerate(script.steps):
        for action in ACTIONS:
            if action == step.action or (action == "change_colour" and not unused_colours):
                continue
            new_colour = _pick(rng, unused_colours) if action == "change_colour" else None
            candidates.append(_with_step_replaced(script, position, Step(step.actor, action, new_colour)))
    rng.shuffle(candidates)
    return candidates


def _done_by_other_shapes(script: ClipScript, rng: np.random.Generator) -> list[ClipScript]:
    """The same actions done by other shapes: two shapes swap colours, or one changes form."""
    shapes = script.shapes
    candidates = []
    for a, b in itertools.combinations(range(len(shapes)), 2):
        swapped = list(shapes)
        swapped[a], swapped[b] = (
            replace(shapes[a], colour=shapes[b].colour),
            replace(shapes[b], colour=shapes[a].colour),
        )
        candidates.append(replace(script, shapes=tuple(swapped)))
    for index, shape in enumerate(shapes):
        for form in SHAPES:
            if form != shape.shape:
                changed = list(shapes)
                changed[index] = replace(shape, shape=form)
                candidates.append(replace(script, shapes=tuple(changed)))
    rng.shuffle(candidates)
    return candidates


_VARIANTS = (_reordered, _with_one_other_action, _done_by_other_shapes)


def family_scripts(seed: int, family: int) -> list[ClipScript]:
    """A base script and one confusable variant of each kind, every one with events that
    captions can tell apart from the others'. Where a kind has no possible variant (events that
    only work in one order) another event is changed instead, and failing that, a fresh script
    stands in."""
    base = _random_script(_rng(seed, FAMILY_STREAM, family))
    scripts, signatures = [base], {_signature(base)}
    for member, variants_of in enumerate(_VARIANTS, start=1):
        rng = _rng(seed, VARIANT_STREAM, family, member)
        candidates = itertools.chain(variants_of(base, rng), _with_one_other_action(base, rng))
        possible = (v for v in candidates if simulate(v) is not None and _signature(v) not in signatures)
        variant = next(possible, None)
        while variant is None or _signature(variant) in signatures:
            variant = _random_script(rng)
        scripts.append(variant)
        signatures.add(_signature(variant))
    return scripts


# -------------------------------------------------------------------------------------------
# Timing, captions and questions


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


def plan_clip(settings: CorpusSettings, index: int) -> ClipPlan:
    """Script, timing and captions of clip `index` (a pure function of the seed and index)."""
    script = family_scripts(settings.seed, index // FAMILY_SIZE)[index % FAMILY_SIZE]
    timing = _rng(settings.seed, TIMING_STREAM, index)
    num_frames = int(timing.integers(settings.frame_range[0], settings.frame_range[1] + 1))
    events = _events(script, _event_windows(len(script.steps), num_frames, timing))
    captions = _captions(events, settings.captions_per_clip, _rng(settings.seed, CAPTION_STREAM, index))
    return ClipPlan(index, script, events, num_frames, captions)


# -------------------------------------------------------------------------------------------
# Rendering


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A dark, low-saturation backdrop (far from every shape colour): a gentle gradient, and for
    half the clips soft ripples."""
    y = (np.arange(height)[:, None] + 0.5) / height - 0.5
    x = (np.arange(width)[None, :] + 0.5) / width - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    shade = rng.uniform(30, 70) + rng.uniform(0, 20) * (x * np.cos(angle) + y * np.sin(angle))
    if rng.random() < 0.5:
        frequency = rng.uniform(2, 5, size=2)
        shade = shade + rng.uniform(3, 8) * np.sin(2 * np.pi * (frequency[0] * x + frequency[1] * y))
    tint = rng.uniform(-8, 8, size=3)
    return (shade[..., None] + tint).astype(np.float32)


def _state_vector(state: ShapeState) -> np.ndarray:
    """x, y, size, opacity, r, g, b: the quantities interpolated during an event."""
    return np.array([state.x, state.y, state.size, float(state.phase == "visible"), *COLOURS[state.colour]])


def _tracks(states, events: Sequence[Event], num_frames: int) -> np.ndarray:
    """(shapes, frames, 7) state vectors of every shape at every frame: constant between events,
    eased from the state before to the state after during each event."""
    frames = np.arange(num_frames)
    tracks = np.stack([np.tile(_state_vector(state), (num_frames, 1)) for state in states[0]])
    for i, event in enumerate(events):
        start, end = event.start_frame, event.end_frame
        progress = np.clip((frames[start:] - start) / (end - start), 0, 1)
        eased = progress * progress * (3 - 2 * progress)
        before, after = _state_vector(states[i][event.actor]), _state_vector(states[i + 1][event.actor])
        tracks[event.actor, start:] = before + (after - before) * eased[:, None]
    return tracks


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Distance in pixels outside the shape's outline (negative inside), for anti-aliasing."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - size
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - size
    # An upward triangle with its apex at the top of its box and its base at the bottom.
    size = size * TRIANGLE_SCALE
    return np.maximum(dy - size, (2 * np.abs(dx) - dy - size) / np.sqrt(5))


def _covered_window(x, y, reach, height: int, width: int) -> tuple[slice, slice]:
    """The rows and columns within `reach` pixels of any of the centres (x, y)."""
    rows = slice(max(int(np.floor((y - reach).min())), 0), min(int(np.ceil((y + reach).max())), height))
    columns = slice(max(int(np.floor((x - reach).min())), 0), min(int(np.ceil((x + reach).max())), width))
    return rows, columns


def render_clip(plan: ClipPlan, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The clip's RGB frames, (frames, height, width, 3) uint8. Each shape is drawn for all
    frames at once as an anti-aliased coverage mask, over the frames where it is seen and the
    pixels it can reach there."""
    height, width = size
    states = simulate(plan.script)
    tracks = _tracks(states, plan.events, plan.num_frames).astype(np.float32)
    canvas = np.broadcast_to(_background(rng, height, width), (plan.num_frames, height, width, 3)).copy()
    pixel_y = np.arange(height, dtype=np.float32)[:, None] + 0.5
    pixel_x = np.arange(width, dtype=np.float32)[None, :] + 0.5
    for actor, track in zip(plan.script.shapes, tracks):
        # A shape is seen over one run of frames: from its start or appearance to its leaving.
        seen_frames = np.flatnonzero(track[:, 3] > 0)
        seen = slice(seen_frames[0], seen_frames[-1] + 1)
        x, y = track[seen, 0] * width, track[seen, 1] * height
        size_px, opacity = track[seen, 2] * min(height, width), track[seen, 3]
        rows, columns = _covered_window(x, y, _extent(actor.shape, size_px) + 1, height, width)
        dx, dy = pixel_x[:, columns] - x[:, None, None], pixel_y[rows] - y[:, None, None]
        coverage = np.clip(0.5 - _signed_distance(actor.shape, dx, dy, size_px[:, None, None]), 0, 1)
        region = canvas[seen, rows, columns]
        region += (coverage * opacity[:, None, None])[..., None] * (track[seen, None, None, 4:] - region)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


# BT.601 limited range, the colour space decoders assume for an untagged H.264 stream: the rows
# give Y, U and V from R, G and B.
_RGB_TO_YUV = (
    np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], np.float32) / 255
)
_YUV_OFFSET = np.array([16, 128, 128], np.float32)


def _weighted_sum(channels: Sequence[np.ndarray], weights: np.ndarray, offset: np.float32) -> np.ndarray:
    # Element-wise rather than a matrix product, whose BLAS summation order may vary.
    return channels[0] * weights[0] + channels[1] * weights[1] + channels[2] * weights[2] + offset


def _half_resolution(plane: np.ndarray) -> np.ndarray:
    """(frames, height / 2, width / 2) averages of 2x2 pixel blocks."""
    return (plane[:, ::2, ::2] + plane[:, 1::2, ::2] + plane[:, ::2, 1::2] + plane[:, 1::2, 1::2]) * 0.25


def yuv420p_planes(frames: np.ndarray) -> np.ndarray:
    """(frames, height * 3 / 2, width) uint8: each frame's Y plane, then its U and V planes at
    half resolution (of 2x2 averages), as PyAV's "yuv420p" arrays. Converted here because
    FFmpeg's converter chooses its code by CPU (and is not bit-exact without asking), while these
    float32 operations give the same bytes on every machine."""
    count, _, width, _ = frames.shape
    rgb = frames.astype(np.float32)
    channels = [rgb[..., k] for k in range(3)]
    half_channels = [_half_resolution(channel) for channel in channels]
    planes = [
        _weighted_sum(channels, _RGB_TO_YUV[0], _YUV_OFFSET[0]),
        _weighted_sum(half_channels, _RGB_TO_YUV[1], _YUV_OFFSET[1]),
        _weighted_sum(half_channels, _RGB_TO_YUV[2], _YUV_OFFSET[2]),
    ]
    stacked = np.concatenate([plane.reshape(count, -1) for plane in planes], axis=1)
    return np.clip(np.rint(stacked), 0, 255).astype(np.uint8).reshape(count, -1, width)


def write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
    """H.264 yuv420p, one encoder thread (clips are rendered in parallel instead); written to a
    temporary name first, so a file under the final name is always complete.

    x264 runs without its assembly (`asm=0`): on an AVX-512 machine its assembly gave different
    files for the same frames from run to run (about 6% of clips); its C code is repeatable, and
    costs about 12 ms more per 96x96 clip of 6 s."""
    import av

    partial = path + ".partial"
    with av.open(partial, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "x264-params": "asm=0"}
        stream.codec_context.thread_count = 1
        for planes in yuv420p_planes(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")))
        container.mux(stream.encode())
    os.replace(partial, path)


def _render_and_write(job: tuple[str, ClipPlan, CorpusSettings]) -> None:
    output_dir, plan, settings = job
    frames = render_clip(plan, settings.size, _rng(settings.seed, BACKGROUND_STREAM, plan.index))
    write_mp4(os.path.join(output_dir, plan.video), frames, settings.fps)


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _render_videos(
    output_dir: str, plans: Sequence[ClipPlan], settings: CorpusSettings, num_workers: int | None, progress: bool
) -> None:
    jobs = [(output_dir, plan, settings) for plan in plans]
    workers = min(num_workers or _default_workers(), len(jobs))
    with (
        tqdm(total=len(jobs), desc="rendering clips", unit="clip", disable=not progress) as bar,
        multiprocessing.Pool(workers) if workers > 1 else nullcontext() as pool,
    ):
        rendered = map(_render_and_write, jobs) if pool is None else pool.imap_unordered(_render_and_write, jobs, 4)
        for _ in rendered:
            bar.update()


# -------------------------------------------------------------------------------------------
# Splits, annotation files and the manifest


def split_families(num_clips: int, seed: int, fractions: Sequence[float]) -> dict[str, list[int]]:
    """Clip indices of each split. Whole families go to one split, so that every split holds
    confusable clips side by side (what makes retrieval within it hard) and no split sees a
    variant of another's clip. Each split with a non-zero fraction gets at least one family
    when there are enough."""
    num_families = math.ceil(num_clips / FAMILY_SIZE)
    order = _rng(seed, SPLIT_STREAM).permutation(num_families)
    counts = [round(fraction * num_families) for fraction in fractions[1:]]
    if num_families >= len(SPLITS):
        counts = [max(count, 1) if fraction > 0 else count for count, fraction in zip(counts, fractions[1:])]
    boundaries = np.cumsum([num_families - sum(counts), *counts])[:-1]
    return {
        name: sorted(index for family in families for index in _family_members(int(family), num_clips))
        for name, families in zip(SPLITS, np.split(order, boundaries))
    }


def _family_members(family: int, num_clips: int) -> range:
    return range(family * FAMILY_SIZE, min((family + 1) * FAMILY_SIZE, num_clips))


def corpus_paths(output_dir: str | os.PathLike) -> dict[str, str]:
    """Where a corpus in `output_dir` keeps its parts."""
    root = os.fspath(output_dir)
    paths = {"output_dir": root, "videos": os.path.join(root, "videos")}
    for split in SPLITS:
        paths[split] = os.path.join(root, f"{split}.jsonl")
        paths[f"{split}_qa"] = os.path.join(root, f"{split}_qa.jsonl")
    paths["answers"] = os.path.join(root, "answers.json")
    paths["manifest"] = os.path.join(root, "corpus.json")
    return paths


def _caption_row(plan: ClipPlan, fps: int) -> dict:
    return {
        "video": plan.video,
        "video_id": plan.video_id,
        "captions": list(plan.captions),
        "events": [asdict(event) for event in plan.events],
        "shapes": [{"shape": shape.shape, "colour": shape.colour} for shape in plan.script.shapes],
        "num_frames": plan.num_frames,
        "fps": fps,
    }


def _question_rows(plan: ClipPlan) -> list[dict]:
    return [
        {"video": plan.video, "video_id": plan.video_id, **asdict(question)}
        for question in clip_questions(plan.script.shapes, plan.events)
    ]


def _write_jsonl(path: str, rows: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2)
        handle.write("\n")


def _write_annotations(paths: dict[str, str], plans: Sequence[ClipPlan], settings: CorpusSettings) -> dict:
    """Writes the caption and question files of each split and the answer vocabulary; returns the counts."""
    counts = {"clips": {}, "captions": {}, "questions": {}}
    for split, indices in split_families(settings.num_clips, settings.seed, settings.split_fractions).items():
        caption_rows = [_caption_row(plans[index], settings.fps) for index in indices]
        question_rows = [row for index in indices for row in _question_rows(plans[index])]
        _write_jsonl(paths[split], caption_rows)
        _write_jsonl(paths[f"{split}_qa"], question_rows)
        counts["clips"][split] = len(caption_rows)
        counts["captions"][split] = sum(len(row["captions"]) for row in caption_rows)
        counts["questions"][split] = len(question_rows)
    _write_json(paths["answers"], {answer: label for label, answer in enumerate(ANSWERS)})
    counts["answers"] = len(ANSWERS)
    return counts


def _is_complete(paths: dict[str, str], settings: CorpusSettings) -> bool:
    """Whether the folder holds a finished corpus of this generator version and these settings."""
    try:
        with open(paths["manifest"], encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return False
    if manifest.get("generator_version") != GENERATOR_VERSION or manifest.get("settings") != settings.as_json():
        return False
    files = [path for key, path in paths.items() if key not in ("output_dir", "videos")]
    videos = (os.path.join(paths["videos"], f"{_video_id(index)}.mp4") for index in range(settings.num_clips))
    return all(os.path.isfile(path) for path in itertools.chain(files, videos))


def make_synthetic_corpus(
    output_dir: str | os.PathLike,
    num_clips: int = 2000,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    size: tuple[int, int] = (96, 96),
    fps: int = 8,
    seconds: tuple[float, float] = (4, 8),
    captions_per_clip: int = 3,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Renders the corpus into `output_dir` (see the module docstring for its files), or does
    nothing when the folder already holds a complete corpus with the same settings.

    Args:
        num_clips: clips in all splits together.
        split_fractions: train / validation / test shares (whole families of clips are split).
        size: (height, width) of the frames, even numbers.
        fps: frames per second.
        seconds: (shortest, longest) clip duration; each clip draws its own.
        captions_per_clip: captions of each clip (distinct phrasings of its events).
        num_workers: processes rendering clips (default: the CPUs this process may use).
        progress: show a progress bar.

    Returns:
        The paths of the parts, as `corpus_paths`: `output_dir`, `videos`, `train`,
        `validation`, `test`, `train_qa`, `validation_qa`, `test_qa`, `answers`, `manifest`.
    """
    settings = CorpusSettings(
        num_clips, seed, tuple(split_fractions), tuple(size), fps, tuple(seconds), captions_per_clip
    )
    paths = corpus_paths(output_dir)
    if _is_complete(paths, settings):
        return paths
    os.makedirs(paths["videos"], exist_ok=True)
    if os.path.exists(paths["manifest"]):  # a corpus of other settings is being replaced
        os.remove(paths["manifest"])
    started = time.perf_counter()
    plans = [plan_clip(settings, index) for index in range(num_clips)]
    _render_videos(paths["output_dir"], plans, settings, num_workers, progress)
    counts = _write_annotations(paths, plans, settings)
    manifest = {
        "generator": "hbi_transformers.synthetic_corpus",
        "generator_version": GENERATOR_VERSION,
        "settings": settings.as_json(),
        "family_size": FAMILY_SIZE,
        "counts": counts,
        "seconds_taken": round(time.perf_counter() - started, 1),
    }
    _write_json(paths["manifest"], manifest)
    return paths
