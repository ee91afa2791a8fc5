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

Modules, each importing only ones listed before it: `vocabulary` (words), `randomness` (the seed's
streams), `scripts` (scripts, events and their simulation), `planning` (random scripts and their
confusable variants), `captions` (timing, captions and questions), `rendering` (frames and the
mp4 writer), `corpus` (settings, splits, files and the manifest).
"""

from .captions import Question, clip_questions, describe_events
from .corpus import (
    GENERATOR_VERSION,
    SPLITS,
    CorpusSettings,
    corpus_paths,
    make_synthetic_corpus,
    plan_clip,
    split_families,
)
from .planning import FAMILY_SIZE, family_scripts
from .rendering import render_clip, write_mp4, yuv420p_planes
from .scripts import MOVE_DISTANCE, ClipPlan, ClipScript, Event, ShapeActor, ShapeState, Step, simulate
from .vocabulary import ACTIONS, ANSWERS, COLOURS, MOVES, SHAPES

__all__ = [
    "ACTIONS",
    "ANSWERS",
    "COLOURS",
    "FAMILY_SIZE",
    "GENERATOR_VERSION",
    "MOVES",
    "MOVE_DISTANCE",
    "SHAPES",
    "SPLITS",
    "ClipPlan",
    "ClipScript",
    "CorpusSettings",
    "Event",
    "Question",
    "ShapeActor",
    "ShapeState",
    "Step",
    "clip_questions",
    "corpus_paths",
    "describe_events",
    "family_scripts",
    "make_synthetic_corpus",
    "plan_clip",
    "render_clip",
    "simulate",
    "split_families",
    "write_mp4",
    "yuv420p_planes",
]
