"""The clip a model card's usage snippet runs on, kept beside the model as `example.mp4` with its
caption in `example.json`, so that the snippet runs as written against the folder (or the hub
repository made from it).

The demo keeps a test clip of the corpus it trained on. A folder without one gets a clip of the
synthetic shapes corpus, rendered here (a few kilobytes): a clip the model was not trained on,
which the card says.
"""

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

EXAMPLE_VIDEO = "example.mp4"
EXAMPLE_INFO = "example.json"
SYNTHETIC_SOURCE = (
    "a clip of hbi-transformers' synthetic shapes corpus (not from this model's training data), shipped with "
    "the model so that this snippet runs as written"
)


@dataclass(frozen=True)
class ExampleClip:
    caption: str  # what the snippet asks about the clip: a caption, or a question for video QA
    source: str  # where the clip comes from, as the card says it


def read_example(folder: str | os.PathLike) -> ExampleClip | None:
    """The example a folder holds, or None."""
    folder = Path(folder)
    if not (folder / EXAMPLE_VIDEO).is_file() or not (folder / EXAMPLE_INFO).is_file():
        return None
    info = json.loads((folder / EXAMPLE_INFO).read_text())
    try:
        return ExampleClip(caption=info["caption"], source=info["source"])
    except KeyError as missing:
        raise ValueError(f"{folder / EXAMPLE_INFO} has no {missing} entry") from None


def write_example(folder: str | os.PathLike, video: str | os.PathLike, caption: str, source: str) -> ExampleClip:
    """Copies `video` into `folder` as the example, with its caption and source."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if Path(video).resolve() != (folder / EXAMPLE_VIDEO).resolve():
        shutil.copyfile(video, folder / EXAMPLE_VIDEO)
    example = ExampleClip(caption=caption, source=source)
    (folder / EXAMPLE_INFO).write_text(json.dumps(asdict(example), indent=2) + "\n")
    return example


# The one-clip corpus the synthetic example comes from.
SYNTHETIC_SETTINGS = dict(num_clips=1, seed=0, split_fractions=(1.0, 0.0, 0.0), size=(96, 96), fps=8,
                          seconds=(4, 8), captions_per_clip=3)


def synthetic_example(task: str = "retrieval") -> ExampleClip:
    """The caption (or, for video QA, the question) of the synthetic example clip, from its plan
    alone (nothing rendered)."""
    from ..data.synthetic import clip_questions
    from ..data.synthetic.corpus import CorpusSettings, plan_clip

    plan = plan_clip(CorpusSettings(**SYNTHETIC_SETTINGS), 0)
    if task == "video-question-answering":
        return ExampleClip(clip_questions(plan.script.shapes, plan.events)[0].question, SYNTHETIC_SOURCE)
    return ExampleClip(plan.captions[0], SYNTHETIC_SOURCE)


def ensure_example(folder: str | os.PathLike, task: str = "retrieval") -> ExampleClip:
    """The folder's example; the synthetic clip is rendered into it when it has none."""
    existing = read_example(folder)
    if existing is not None:
        return existing
    # Imported here: rendering needs PyAV, which reading a card does not.
    from ..data import make_synthetic_corpus

    with tempfile.TemporaryDirectory() as scratch:
        corpus = make_synthetic_corpus(scratch, **SYNTHETIC_SETTINGS, num_workers=1, progress=False)
        row = json.loads(Path(corpus["train"]).read_text().splitlines()[0])
        example = synthetic_example(task)
        return write_example(folder, Path(corpus["output_dir"]) / row["video"], example.caption, example.source)
