"""Model cards for HBI checkpoints: the hub README (YAML metadata + text) filled from an evaluation.

    write_model_card("hbi-msrvtt", "hbi-msrvtt/eval_results.json", model_name="hbi-msrvtt",
                     datasets=["friedrichor/MSR-VTT"], dataset_name="MSR-VTT 1k-A")

The text comes from `templates/hbi_template.md` beside this module (`string.Template` placeholders). The metadata
is written with `huggingface_hub.ModelCardData`, the hub's own serialiser, so the model-index
follows the hub's schema:

- `library_name: transformers`, `base_model` (the CLIP checkpoint HBI starts from), `datasets`,
  `tags`, `license`.
- `pipeline_tag: feature-extraction`. The hub has no text-video retrieval task: `text-to-video` is
  video generation and `video-classification` predicts labels, and a model under either would be
  listed among models that do something else. HBI embeds captions and videos and scores pairs,
  which is what `feature-extraction` covers (the tag transformers gives CLIP-like `AutoModel`s
  such as X-CLIP).
- `model-index`: text-to-video and video-to-text R@1 / R@5 / R@10 / MdR / MnR of the evaluation
  given (`metrics`, the JSON `evaluate_retrieval` or `hbi-evaluate` writes, keys with or without
  the Trainer's `eval_` prefix; self-reported, so without a source). The hub keeps one set of
  figures per task and dataset, so figures reported elsewhere (`reported_metrics`, e.g. the
  paper's) go there, with their source, only while nothing is measured; the card's text always
  shows both.

`render_official_model_card` / `write_official_model_cards` make the cards of the conversions of
the official MSR-VTT and ActivityNet checkpoints (`model_cards/hbi-*.md`), citing the paper and
leaving the measured figures to fill once a conversion is evaluated.
"""

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from huggingface_hub import EvalResult, ModelCardData

from ..training.metrics.retrieval import format_metrics_table

# Package data, so that an installed wheel renders cards too.
TEMPLATE_PATH = Path(__file__).with_name("templates") / "hbi_template.md"
PAPER_URL = "https://arxiv.org/abs/2303.14369"
PAPER_SOURCE = "HBI paper (Jin et al., CVPR 2023)"
PIPELINE_TAG = "feature-extraction"
DEFAULT_TAGS = ("hbi", "clip", "video", "text-video-retrieval", "video-text-retrieval")
# model-index entries: metric key suffix -> (metric type, display name).
CARD_METRICS = {
    "R@1": ("recall_at_1", "R@1"),
    "R@5": ("recall_at_5", "R@5"),
    "R@10": ("recall_at_10", "R@10"),
    "MdR": ("median_rank", "MdR"),
    "MnR": ("mean_rank", "MnR"),
}
TASKS = {
    "t2v": ("text-to-video-retrieval", "Text-to-video retrieval"),
    "v2t": ("video-to-text-retrieval", "Video-to-text retrieval"),
}


def card_metrics(metrics: Mapping | str | os.PathLike | None) -> dict[str, float]:
    """The retrieval figures of an evaluation (a dict, or the path of its JSON), without the
    Trainer's `eval_` prefix: `{t2v,v2t}_{R@1,R@5,R@10,MdR,MnR}`, those present."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        metrics = json.loads(Path(metrics).read_text())
    unprefixed = {key.removeprefix("eval_"): value for key, value in metrics.items()}
    return {
        f"{direction}_{name}": float(unprefixed[f"{direction}_{name}"])
        for direction in TASKS
        for name in CARD_METRICS
        if f"{direction}_{name}" in unprefixed
    }


def _eval_results(metrics: dict[str, float], dataset_id, dataset_name, dataset_split, source, url) -> list[EvalResult]:
    return [
        EvalResult(
            task_type=TASKS[direction][0],
            task_name=TASKS[direction][1],
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_split=dataset_split,
            metric_type=CARD_METRICS[name][0],
            metric_name=CARD_METRICS[name][1],
            metric_value=round(metrics[f"{direction}_{name}"], 2),
            source_name=source,
            source_url=url,
        )
        for direction in TASKS
        for name in CARD_METRICS
        if f"{direction}_{name}" in metrics
    ]


def _results_section(measured: dict[str, float], reported: dict[str, float], reported_source, reported_url) -> str:
    if not measured and not reported:
        return "Not measured here yet."
    rows = {"reported": reported} if reported else {}
    rows["measured"] = measured
    notes = ["R@K in percent; MdR / MnR: median / mean rank of the right item (lower is better)."]
    if reported:
        notes.append(f"reported: {reported_source}" + (f", {reported_url}" if reported_url else ""))
    notes.append("measured: " + ("this checkpoint, evaluated with hbi-transformers" if measured else "not measured here yet"))
    notes.append("`-`: not measured here (measured row) or not cited (reported row)")
    return f"```\n{format_metrics_table(rows)}\n```\n\n" + "\n".join(f"- {note}" for note in notes)


def render_model_card(
    model_name: str,
    metrics: Mapping | str | os.PathLike | None = None,
    *,
    base_model: str = "openai/clip-vit-base-patch32",
    datasets: Sequence[str] = (),
    dataset_name: str | None = None,
    dataset_split: str = "test",
    reported_metrics: Mapping | None = None,
    reported_source: str = PAPER_SOURCE,
    reported_url: str | None = PAPER_URL,
    license: str = "mit",
    tags: Sequence[str] = (),
    repo_id: str | None = None,
    description: str = "",
    max_frames: int = 12,
    video_framerate: float = 1,
    image_size: int = 224,
    max_words: int = 24,
    template_path: str | os.PathLike = TEMPLATE_PATH,
) -> str:
    """The README.md of an HBI checkpoint.

    Args:
        model_name: the card's title and the model-index name.
        metrics: this model's evaluation (dict or JSON path, as `evaluate_retrieval` returns it).
        base_model: the CLIP checkpoint the model was trained from.
        datasets: hub ids of the training / evaluation datasets; the first names the evaluation
            set in the model-index.
        dataset_name: a readable name of the evaluation set (e.g. "MSR-VTT 1k-A").
        dataset_split: the evaluated split.
        reported_metrics: figures reported elsewhere for comparison (same keys as `metrics`).
        reported_source, reported_url: where they come from (default: the HBI paper).
        license: the weights' license id.
        tags: tags added to the default ones.
        repo_id: the hub repository in the usage example (default: `model_name`).
        description: the paragraph under the title (how the weights were made).
        max_frames, video_framerate, image_size, max_words: what the processor does, for the text.
        template_path: the card template.
    """
    measured, reported = card_metrics(metrics), card_metrics(reported_metrics)
    dataset_id = datasets[0] if datasets else "custom"
    if measured:
        eval_results = _eval_results(measured, dataset_id, dataset_name or dataset_id, dataset_split, None, None)
    else:
        eval_results = _eval_results(reported, dataset_id, dataset_name or dataset_id, dataset_split,
                                     reported_source, reported_url)
    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        base_model=base_model,
        datasets=list(datasets) or None,
        license=license,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *tags])),
        model_name=model_name,
        eval_results=eval_results or None,
    )
    template_path = Path(template_path)
    if not template_path.exists():
        raise FileNotFoundError(f"no model card template at {template_path}")
    return Template(template_path.read_text()).substitute(
        metadata=metadata.to_yaml(),
        model_name=model_name,
        description=description or f"An HBI text-video retrieval model trained from `{base_model}`.",
        results=_results_section(measured, reported, reported_source, reported_url),
        repo_id=repo_id or model_name,
        max_frames=max_frames,
        framerate=f"{video_framerate:g}",
        image_size=image_size,
        max_words=max_words,
    )


def write_model_card(
    output_dir: str | os.PathLike, metrics: Mapping | str | os.PathLike | None = None, **card_options
) -> Path:
    """Writes `output_dir/README.md` (see `render_model_card` for the options; `model_name`
    defaults to the folder's name). A training script calls it after its final evaluation, e.g.
    `write_model_card(args.output_dir, trainer.evaluate(), datasets=[...])`."""
    output_dir = Path(output_dir)
    card_options.setdefault("model_name", output_dir.resolve().name)
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
    return render_model_card(
        name,
        measured_metrics,
        datasets=[checkpoint.dataset],
        dataset_name=checkpoint.dataset_name,
        dataset_split=checkpoint.dataset_split,
        reported_metrics=checkpoint.reported_metrics,
        license="apache-2.0",
        description=checkpoint.description,
        max_frames=checkpoint.max_frames,
        max_words=checkpoint.max_words,
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
