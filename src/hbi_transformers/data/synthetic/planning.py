"""Planning scripts: random shapes and steps that make a possible script, and the families of
confusable variants (the same events in another order, one event changed, the same events done
by other shapes) that captions must tell apart."""

import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .randomness import FAMILY_STREAM, VARIANT_STREAM, _pick, _rng
from .scripts import (
    EDGE_MARGIN,
    ClipScript,
    ShapeActor,
    Step,
    _box,
    _box_is_free,
    _extent,
    _initial_states,
    _signature,
    _state_after,
    _step_is_possible,
    simulate,
)
from .vocabulary import ACTIONS, COLOURS, SHAPES

INITIAL_SIZES = (0.09, 0.13)  # half-extents, as a fraction of the frame's shorter side
FAMILY_SIZE = 4  # a base script and one variant of each kind in `_VARIANTS`
EVENT_COUNTS = (2, 3)
SHAPE_COUNT_PROBABILITIES = {1: 0.1, 2: 0.4, 3: 0.5}
STARTS_VISIBLE_PROBABILITY = 0.7


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
