"""Model cards for HBI checkpoints: the hub README (YAML metadata + text), written for a new model
and updated, not replaced, for one that has a card.

    write_model_card("hbi-msrvtt", "hbi-msrvtt/eval_results.json", base_model="openai/clip-vit-base-patch32",
                     datasets=["friedrichor/MSR-VTT"], dataset_name="MSR-VTT 1k-A")

The text comes from `templates/` beside this module (`string.Template` placeholders). The metadata
is written with `huggingface_hub.ModelCardData`, the hub's own serialiser, so the model-index
follows the hub's schema:

- `library_name: transformers`, `base_model` only when there is one (a conversion of an official
  checkpoint or a model fine-tuned from CLIP weights; none for a model trained from scratch),
  `datasets`, `tags`, `license`.
- `pipeline_tag: feature-extraction` for retrieval. The hub has no text-video retrieval task:
  `text-to-video` is video generation and `video-classification` predicts labels, and a model under
  either would be listed among models that do something else. HBI embeds captions and videos and
  scores pairs, which is what `feature-extraction` covers (the tag transformers gives CLIP-like
  `AutoModel`s such as X-CLIP). `visual-question-answering` for video QA (the auto class
  transformers registers it under).
- `model-index`: text-to-video and video-to-text R@1 / R@5 / R@10 / R@50 / MdR / MnR, or the video
  QA accuracy, of the metrics files given (any our commands write: see `metrics_files`;
  self-reported, so without a source). The hub keeps one set of figures per task and dataset, so
  figures reported elsewhere (`reported_metrics`, e.g. the paper's) go there, with their source,
  only while nothing is measured; the card's text always shows both.

The parts of the text made from data sit between `<!-- hbi:results -->` / `<!-- hbi:use -->` and
their closing marks: `update_model_card` replaces those (and the metadata it is given) and keeps
everything else of a card as it is.

`render_official_model_card` / `write_official_model_cards` make the cards of the conversions of
the official MSR-VTT and ActivityNet checkpoints (`model_cards/hbi-*.md`), citing the paper and
leaving the measured figures to fill once a conversion is evaluated.
"""

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..training.metrics.retrieval import format_metrics_table
from ..training.metrics.video_qa import format_qa_table
from .example_clip import EXAMPLE_VIDEO, ExampleClip, ensure_example, synthetic_example
from .metrics_files import CardMetrics, card_metrics_from, read_metrics

TEMPLATES = Path(__file__).with_name("templates")  # package data, so that an installed wheel renders cards too
TEMPLATE_PATH = TEMPLATES / "hbi_template.md"
RETRIEVAL, VIDEO_QA = "retrieval", "video-question-answering"
USE_TEMPLATES = {RETRIEVAL: TEMPLATES / "use_retrieval.md", VIDEO_QA: TEMPLATES / "use_video_qa.md"}
PIPELINE_TAGS = {RETRIEVAL: "feature-extraction", VIDEO_QA: "visual-question-answering"}
PAPER_URL = "https://arxiv.org/abs/2303.14369"
PAPER_SOURCE = "HBI paper (Jin et al., CVPR 2023)"
DEFAULT_TAGS = ("hbi", "clip", "video", "text-video-retrieval", "video-text-retrieval")
RESULTS_MARK, USE_MARK = "hbi:results", "hbi:use"
# CLIP's tokenizer: its size and the ids it gives a known caption (openai/clip-vit-base-patch32).
CLIP_VOCABULARY_SIZE = 49408
CLIP_REFERENCE = ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407])
CLIP_TOKENIZER_DESCRIPTION = f"CLIP's BPE tokenizer ({CLIP_VOCABULARY_SIZE:,} tokens, that of `openai/clip-vit-base-patch32`)"
# The official checkpoints were fine-tuned from OpenAI's CLIP ViT-B/32.
OFFICIAL_BASE_MODEL = "openai/clip-vit-base-patch32"
# model-index entries: metric key suffix -> (metric type, display name).
CARD_METRICS = {
    "R@1": ("recall_at_1", "R@1"),
    "R@5": ("recall_at_5", "R@5"),
    "R@10": ("recall_at_10", "R@10"),
    "R@50": ("recall_at_50", "R@50"),
    "MdR": ("median_rank", "MdR"),
    "MnR": ("mean_rank", "MnR"),
}
TASKS = {
    "t2v": ("text-to-video-retrieval", "Text-to-video retrieval"),
    "v2t": ("video-to-text-retrieval", "Video-to-text retrieval"),
}
QA_TASK = ("visual-question-answering", "Video question answering")
QA_METRIC = ("accuracy", "Accuracy")  # the official protocol: questions answerable by the vocabulary


def as_card_metrics(metrics) -> CardMetrics:
    """Metrics in any form the card functions take: None, a `CardMetrics`, one evaluation (dict,
    or hbi-train-estimator's list of epochs), or a metrics file path or a list of them."""
    if metrics is None or isinstance(metrics, CardMetrics):
        return metrics or CardMetrics()
    if isinstance(metrics, Mapping) or (
        isinstance(metrics, list) and metrics and all(isinstance(item, Mapping) for item in metrics)
    ):
        return card_metrics_from(metrics)
    return read_metrics(metrics)


def card_metrics(metrics) -> dict[str, float]:
    """The retrieval figures of an evaluation (see `as_card_metrics` for its forms), without the
    Trainer's `eval_` prefix: `{t2v,v2t}_{R@1,R@5,R@10,R@50,MdR,MnR}`, those present."""
    return {key: value for key, value in as_card_metrics(metrics).retrieval.items() if not key.startswith("dsl_")}


def hub_model_id(name: str | None) -> str | None:
    """`name` when it can name a hub model (owner/name, not a local path), else None."""
    if not name or "/" not in name or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def describe_tokenizer(tokenizer, origin: str | None = None) -> str:
    """What the card says of the captions' tokenizer: CLIP's when it tokenizes as CLIP does,
    else its size and, when known, where it comes from."""
    size = len(tokenizer)
    if size == CLIP_VOCABULARY_SIZE and tokenizer(CLIP_REFERENCE[0])["input_ids"] == CLIP_REFERENCE[1]:
        return CLIP_TOKENIZER_DESCRIPTION
    return f"a {size:,}-token tokenizer " + (origin or f"of its own (not CLIP's {CLIP_VOCABULARY_SIZE:,}-token one)")


def describe_origin(base_model: str | None, from_scratch: bool, task: str = RETRIEVAL) -> str:
    """The card's first sentence: what the model is and, when known, where its weights come from."""
    kind = "video question answering" if task == VIDEO_QA else "text-video retrieval"
    if from_scratch:
        return f"An HBI {kind} model trained from scratch: its towers started from random weights, not from CLIP's."
    if base_model:
        shown = f"[`{base_model}`](https://huggingface.co/{base_model})" if hub_model_id(base_model) else f"`{base_model}`"
        return f"An HBI {kind} model fine-tuned from {shown}."
    return f"An HBI {kind} model."


def _eval_results(metrics: CardMetrics, reported: dict, dataset_id, dataset_name, dataset_split,
                  reported_source, reported_url) -> list[EvalResult]:
    dataset = dict(dataset_type=dataset_id, dataset_name=dataset_name, dataset_split=dataset_split)
    retrieval, source = metrics.retrieval, dict(source_name=None, source_url=None)
    if not metrics.retrieval and not metrics.video_qa:
        retrieval, source = reported, dict(source_name=reported_source, source_url=reported_url)
    results = [
        EvalResult(task_type=TASKS[direction][0], task_name=TASKS[direction][1], metric_type=CARD_METRICS[name][0],
                   metric_name=CARD_METRICS[name][1], metric_value=round(retrieval[f"{direction}_{name}"], 2),
                   **dataset, **source)
        for direction in TASKS
        for name in CARD_METRICS
        if f"{direction}_{name}" in retrieval
    ]
    if metrics.video_qa.get("accuracy") is not None:
        results.append(EvalResult(task_type=QA_TASK[0], task_name=QA_TASK[1], metric_type=QA_METRIC[0],
                                  metric_name=QA_METRIC[1], metric_value=round(metrics.video_qa["accuracy"], 2),
                                  **dataset))
    return results


def _marked(mark: str, text: str) -> str:
    return f"<!-- {mark} -->\n{text.strip()}\n<!-- /{mark} -->"


def results_section(metrics: CardMetrics, reported: dict | None = None, reported_source: str = PAPER_SOURCE,
                    reported_url: str | None = PAPER_URL) -> str:
    """The card's Results section (with its marks)."""
    reported = reported or {}
    parts = []
    if metrics.retrieval or reported:
        rows = {"reported": reported} if reported else {}
        if metrics.untrained:
            rows["untrained"] = metrics.untrained
        rows["measured" if not metrics.untrained else "trained"] = metrics.retrieval
        notes = ["R@K in percent; MdR / MnR: median / mean rank of the right item (lower is better)."]
        if reported:
            notes.append(f"reported: {reported_source}" + (f", {reported_url}" if reported_url else ""))
        if metrics.untrained:
            notes.append("untrained: the same model before training, on the same test set")
        notes.append(("trained" if metrics.untrained else "measured") + ": "
                     + ("this checkpoint, evaluated with hbi-transformers" if metrics.retrieval else "not measured here yet"))
        notes.append("`-`: not measured here (measured row) or not cited (reported row)")
        parts.append(f"```\n{format_metrics_table(rows)}\n```\n\n" + "\n".join(f"- {note}" for note in notes))
    if metrics.video_qa:
        parts.append(f"Video question answering, accuracy in percent:\n\n```\n{format_qa_table(metrics.video_qa)}\n```\n\n"
                     "- official: over the questions whose answer is in the answer vocabulary; all: over every "
                     "question, those out of the vocabulary counted wrong")
    if metrics.estimator:
        estimator = metrics.estimator
        epoch = f" after epoch {estimator['epoch']}" if "epoch" in estimator else ""
        parts.append(f"Banzhaf estimator{epoch}: held-out mean squared error {estimator['heldout_mse']:.4f} against "
                     f"{estimator.get('mean_baseline_mse', float('nan')):.4f} for predicting the mean label.")
    files = [f"`{Path(source).name}`" for source in metrics.sources if source]
    if files:
        parts.append("Figures from " + ", ".join(files) + " (written by hbi-transformers' commands).")
    return _marked(RESULTS_MARK, "## Results\n\n" + ("\n\n".join(parts) if parts else "Not measured here yet."))


def use_section(model_id: str, *, local: bool, example: ExampleClip, task: str = RETRIEVAL, max_frames: int = 12,
                video_framerate: float = 1, image_size: int = 224, max_words: int = 24,
                tokenizer_description: str = "CLIP's BPE tokenizer", num_answers: int | None = None) -> str:
    """The card's Use section (with its marks): a snippet that runs as written against `model_id`, a
    local folder (`local`) or a hub repository holding `example.mp4`."""
    if local:
        imports, video_line = "", f"video = {json.dumps(str(Path(model_id) / EXAMPLE_VIDEO))}"
    else:
        imports = "from huggingface_hub import hf_hub_download\n"
        video_line = f"video = hf_hub_download({json.dumps(model_id)}, {json.dumps(EXAMPLE_VIDEO)})"
    text = Template(USE_TEMPLATES[task].read_text()).substitute(
        imports=imports, model_id=json.dumps(model_id)[1:-1], video_line=video_line,
        caption=json.dumps(example.caption), example_source=example.source, max_frames=max_frames,
        framerate=f"{video_framerate:g}", image_size=image_size, max_words=max_words,
        tokenizer=tokenizer_description, num_answers=num_answers,
    )
    return _marked(USE_MARK, text)


def render_model_card(
    model_name: str,
    metrics=None,
    *,
    base_model: str | None = None,
    from_scratch: bool = False,
    task: str = RETRIEVAL,
    datasets: Sequence[str] = (),
    dataset_name: str | None = None,
    dataset_split: str = "test",
    reported_metrics: Mapping | None = None,
    reported_source: str = PAPER_SOURCE,
    reported_url: str | None = PAPER_URL,
    license: str = "mit",
    tags: Sequence[str] = (),
    use: str | None = None,
    description: str = "",
    template_path: str | os.PathLike = TEMPLATE_PATH,
) -> str:
    """The README.md of an HBI checkpoint.

    Args:
        model_name: the card's title and the model-index name.
        metrics: this model's figures (see `as_card_metrics`: a metrics file, several, or a dict).
        base_model: the checkpoint the weights were fine-tuned or converted from; in the metadata when it
            names a hub model. None when there is none (or it is unknown).
        from_scratch: the model was trained from random weights (says so; `base_model` must be None).
        task: `"retrieval"` or `"video-question-answering"`.
        datasets: hub ids of the training / evaluation datasets; the first names the evaluation
            set in the model-index.
        dataset_name: a readable name of the evaluation set (e.g. "MSR-VTT 1k-A").
        dataset_split: the evaluated split.
        reported_metrics: figures reported elsewhere for comparison (retrieval keys, as `metrics`).
        reported_source, reported_url: where they come from (default: the HBI paper).
        license: the weights' license id.
        tags: tags added to the default ones.
        use: the Use section (`use_section`); None leaves it out.
        description: the paragraph under the title (default: `describe_origin`).
        template_path: the card template.
    """
    if from_scratch and base_model:
        raise ValueError(f"a model trained from scratch has no base model, got base_model={base_model!r}")
    measured, reported = as_card_metrics(metrics), card_metrics(reported_metrics)
    dataset_id = datasets[0] if datasets else "custom"
    eval_results = _eval_results(measured, reported, dataset_id, dataset_name or dataset_id, dataset_split,
                                 reported_source, reported_url)
    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS[task],
        base_model=hub_model_id(base_model),
        datasets=list(datasets) or None,
        license=license,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *tags])),
        model_name=model_name,
        eval_results=eval_results or None,
    )
    template_path = Path(template_path)
    if not template_path.exists():
        raise FileNotFoundError(f"no model card template at {template_path}")
    card = Template(template_path.read_text()).substitute(
        metadata=metadata.to_yaml(),
        model_name=model_name,
        description=description or describe_origin(base_model, from_scratch, task),
        results=results_section(measured, reported, reported_source, reported_url),
        use=use or "",
    )
    return re.sub(r"\n{3,}", "\n\n", card)


def _replace_marked(text: str, mark: str, section: str) -> str:
    """`text` with its `mark` section replaced by `section`; in a card without the marks (a
    foreign or older one), the section under the same heading is replaced, else `section` is
    appended."""
    marked = re.compile(rf"<!-- {re.escape(mark)} -->.*?<!-- /{re.escape(mark)} -->", re.DOTALL)
    if marked.search(text):
        return marked.sub(lambda _: section, text, count=1)
    heading = section.split("\n")[1]  # the line after the opening mark
    same_heading = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^#{{1,2}} |\Z)", re.DOTALL | re.MULTILINE)
    if same_heading.search(text):
        return same_heading.sub(lambda _: section + "\n\n", text, count=1)
    return text.rstrip("\n") + "\n\n" + section + "\n"


def update_model_card(
    card_text: str,
    metrics=None,
    *,
    use: str | None = None,
    model_name: str | None = None,
    base_model: str | None = None,
    from_scratch: bool = False,
    task: str = RETRIEVAL,
    datasets: Sequence[str] = (),
    dataset_name: str | None = None,
    dataset_split: str = "test",
    license: str | None = None,
    tags: Sequence[str] = (),
) -> str:
    """An existing card brought up to date, everything else of it kept: with `metrics`, its
    model-index and Results section are replaced by theirs; `use` replaces its Use section; a
    `base_model`, `license`, `datasets` and `tags` given are set or added; `from_scratch` removes
    the card's base model. A section the card lacks is appended."""
    if from_scratch and base_model:
        raise ValueError(f"a model trained from scratch has no base model, got base_model={base_model!r}")
    card = ModelCard(card_text)
    data = card.data
    measured = as_card_metrics(metrics)
    if measured:
        previous = (data.eval_results or [None])[0]
        dataset_id = datasets[0] if datasets else (previous.dataset_type if previous else "custom")
        name = dataset_name or (previous.dataset_name if previous and not datasets else dataset_id)
        split = previous.dataset_split if previous and not datasets else dataset_split
        data.eval_results = _eval_results(measured, {}, dataset_id, name, split, None, None) or None
        data.model_name = data.model_name or model_name
        card.text = _replace_marked(card.text, RESULTS_MARK, results_section(measured))
    if base_model:
        data.base_model = hub_model_id(base_model) or data.base_model
    if from_scratch:
        data.base_model = None
    if license:
        data.license = license
    if datasets:
        data.datasets = list(dict.fromkeys([*(data.datasets or []), *datasets]))
    data.tags = list(dict.fromkeys([*(data.tags or []), *tags])) or None
    data.library_name = data.library_name or "transformers"
    data.pipeline_tag = data.pipeline_tag or PIPELINE_TAGS[task]
    if use:
        card.text = _replace_marked(card.text, USE_MARK, use)
    return str(card)


def write_model_card(output_dir: str | os.PathLike, metrics=None, *, tokenizer=None, tokenizer_origin: str | None = None,
                     max_frames: int = 12, video_framerate: float = 1, image_size: int = 224, max_words: int = 24,
                     num_answers: int | None = None, **card_options) -> Path:
    """Writes `output_dir/README.md`, a card whose snippet runs against the folder as its path is
    given (the example clip is added when the folder has none). `tokenizer` (default: the one saved
    in the folder) is described in it; the rest of the options are `render_model_card`'s
    (`model_name` defaults to the folder's name). A training script calls it after its final
    evaluation, e.g. `write_model_card(args.output_dir, trainer.evaluate(), base_model=...)`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    card_options.setdefault("model_name", output_dir.resolve().name)
    task = card_options.get("task", RETRIEVAL)
    if tokenizer is None and (output_dir / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(output_dir)
    if "use" not in card_options:
        card_options["use"] = use_section(
            str(output_dir), local=True, example=ensure_example(output_dir, task), task=task, max_frames=max_frames,
            video_framerate=video_framerate, image_size=image_size, max_words=max_words, num_answers=num_answers,
            tokenizer_description=describe_tokenizer(tokenizer, tokenizer_origin) if tokenizer is not None
            else "the tokenizer saved with the model",
        )
    path = output_dir / "README.md"
    path.write_text(render_model_card(metrics=metrics, **card_options))
    return path


@dataclass(frozen=True)
class OfficialCheckpoint:
    """A checkpoint released with the official code (jpthu17/HBI) and what the paper reports."""

    dataset: str  # the hub dataset id
    dataset_name: str
    dataset_split: str
    reported_metrics: dict
    description: str
    max_frames: int
    max_words: int


_CONVERSION = (
    "Converted from the {dataset} checkpoint (ViT-B/32) released with the official code, "
    "[jpthu17/HBI](https://github.com/jpthu17/HBI), by hbi-transformers' `hbi-convert --checkpoint <official file> "
    "--output <folder>`: the same weights as a transformers model. The official code and weights are released "
    "under the Apache-2.0 license."
)
OFFICIAL_CHECKPOINTS = {
    "hbi-msrvtt-vit-b-32": OfficialCheckpoint(
        dataset="friedrichor/MSR-VTT",
        dataset_name="MSR-VTT (1k-A test split)",
        dataset_split="test",
        # The paper's figures (ViT-B/32), see docs/inference.md.
        reported_metrics={"t2v_R@1": 48.6, "t2v_R@5": 74.6, "t2v_R@10": 83.4, "t2v_MdR": 2.0, "t2v_MnR": 12.0},
        description=_CONVERSION.format(dataset="MSR-VTT")
        + " The official repository reports text-to-video R@1 48.2 for a model trained with its released "
        "Banzhaf estimator (epoch 6); the paper's figures are below.",
        max_frames=12,
        max_words=24,
    ),
    "hbi-activitynet-vit-b-32": OfficialCheckpoint(
        dataset="friedrichor/ActivityNet_Captions",
        dataset_name="ActivityNet Captions (val1, paragraph retrieval)",
        dataset_split="val",
        reported_metrics={"t2v_R@1": 42.2},
        description=_CONVERSION.format(dataset="ActivityNet")
        + " Captions of a video are joined into one paragraph; frames are sampled one per whole second "
        "(`frame_sampling=\"per_second\"`).",
        max_frames=64,
        max_words=64,
    ),
}


def render_official_model_card(name: str, measured_metrics: Mapping | str | os.PathLike | None = None) -> str:
    """The card of a conversion of an official checkpoint (a key of `OFFICIAL_CHECKPOINTS`), with
    the paper's figures and, once it is evaluated, the measured ones."""
    checkpoint = OFFICIAL_CHECKPOINTS[name]
    # The snippet runs on the folder `hbi-convert --output <name>` writes, once `hbi-push` (or
    # `write_model_card`) has added the example clip; pushed, it names the repository instead.
    use = use_section(name, local=True, example=synthetic_example(), max_frames=checkpoint.max_frames,
                      video_framerate=1, image_size=224, max_words=checkpoint.max_words,
                      tokenizer_description=CLIP_TOKENIZER_DESCRIPTION)
    return render_model_card(
        name,
        measured_metrics,
        base_model=OFFICIAL_BASE_MODEL,
        datasets=[checkpoint.dataset],
        dataset_name=checkpoint.dataset_name,
        dataset_split=checkpoint.dataset_split,
        reported_metrics=checkpoint.reported_metrics,
        license="apache-2.0",
        description=checkpoint.description,
        use=use,
    )


def write_official_model_cards(
    directory: str | os.PathLike, measured: Mapping[str, Mapping | str | os.PathLike] | None = None
) -> list[Path]:
    """(Re)writes `directory/<name>.md` for every official checkpoint; `measured` maps a name to
    its evaluation once a conversion has been evaluated."""
    measured = measured or {}
    paths = []
    for name in OFFICIAL_CHECKPOINTS:
        path = Path(directory) / f"{name}.md"
        path.write_text(render_official_model_card(name, measured.get(name)))
        paths.append(path)
    return paths
