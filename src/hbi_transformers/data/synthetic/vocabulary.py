"""The words of the synthetic corpus: its colours, shapes and actions, the phrasings captions and
questions draw from, and the closed set of answers."""

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
