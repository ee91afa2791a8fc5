"""Structured scripts and events: the shapes of a clip as they start, the steps they take, the
timed events captions and questions describe, and the simulation that says which steps are
possible and the states they lead to."""

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .vocabulary import MOVES

# Geometry, in fractions of the frame (sizes: half-extents, as a fraction of the shorter side).
MOVE_DISTANCE = 0.3
GROWTH_FACTOR = 1.5
MIN_SIZE, MAX_SIZE = 0.07, 0.2
EDGE_MARGIN = 0.02
SHAPE_GAP = 0.03  # shapes never touch, so each colour's pixels show one whole shape
TRIANGLE_SCALE = 1.25  # a triangle covers half its box; a larger box keeps it as visible as the others


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


def _video_id(index: int) -> str:
    return f"clip_{index:05d}"


def _extent(shape: str, size: float) -> float:
    return size * TRIANGLE_SCALE if shape == "triangle" else size


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
