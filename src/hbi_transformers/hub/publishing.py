"""The folder a model's hub repository holds: the model's and processor's `save_pretrained`
output (config with `auto_map`, safetensors weights, processor and tokenizer files, the
remote-code modules), the example clip its card's snippet runs on, and the model card: the
folder's own card brought up to date when it has one, a new one otherwise. Checked complete
before anything is uploaded.

`write_push_card` is what `model.push_to_hub` runs on the folder transformers is about to upload
(see docs/publishing.md): it puts an HBI card where the repository has none.
"""

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import ModelCard

from .example_clip import EXAMPLE_INFO, EXAMPLE_VIDEO, ensure_example, read_example, write_example
from .metrics_files import CardMetrics, metrics_files_in, read_metrics
from .model_card import (
    RETRIEVAL,
    VIDEO_QA,
    describe_tokenizer,
    render_model_card,
    update_model_card,
    use_section,
)

CARD_FILE = "README.md"
_RELATIVE_IMPORT = re.compile(r"^\s*from \.(\w+) import", re.MULTILINE)
# The text transformers' push_to_hub puts in a card it makes for a repository that has none.
_TRANSFORMERS_DEFAULT_CARD = "This is the model card of a 🤗 transformers model that has been pushed on the Hub"


def model_task(model) -> str:
    """`"video-question-answering"` for an HBI video QA model, else `"retrieval"`."""
    return VIDEO_QA if "QuestionAnswering" in type(model).__name__ else RETRIEVAL


def model_use_section(model, processor, model_id: str, *, local: bool, example) -> str:
    """The card's Use section for `model` and `processor` saved under `model_id`."""
    video_processor = processor.video_processor
    task = model_task(model)
    return use_section(
        model_id, local=local, example=example, task=task, max_frames=video_processor.max_frames,
        video_framerate=video_processor.video_framerate, image_size=video_processor.crop_size["height"],
        max_words=processor.max_words,
        tokenizer_description=describe_tokenizer(processor.tokenizer) if processor.tokenizer is not None
        else "the tokenizer pushed with the processor",
        num_answers=len(model.config.id2label) if task == VIDEO_QA else None,
    )


def _copy_example(model_dir: Path, output_dir: Path, task: str):
    example = read_example(model_dir)
    if example is None:
        return ensure_example(output_dir, task)
    return write_example(output_dir, model_dir / EXAMPLE_VIDEO, example.caption, example.source)


def hub_model_card(
    model,
    processor,
    example,
    metrics: CardMetrics | None = None,
    *,
    existing_card: str | None = None,
    repo_id: str | None = None,
    local_path: str | None = None,
    model_name: str | None = None,
    base_model: str | None = None,
    from_scratch: bool = False,
    datasets: Sequence[str] = (),
    dataset_name: str | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
) -> str:
    """The card of a model published as `repo_id` (or kept in the folder `local_path`).

    An `existing_card` is kept and updated: its Use section names the new place, `metrics` (when
    given) replace its figures, the other options given are set; the rest of it (its description,
    origin, its own sections) stays; `from_scratch` removes a base model from its metadata. Without
    one, a new card, which states an origin only when `base_model` or `from_scratch` says one.
    """
    if repo_id is None and local_path is None:
        raise ValueError("give the repo_id the card is published under, or the local_path of its folder")
    use = model_use_section(model, processor, repo_id or local_path, local=repo_id is None, example=example)
    task = model_task(model)
    if existing_card is not None:
        return update_model_card(existing_card, metrics, use=use, model_name=model_name, base_model=base_model,
                                 from_scratch=from_scratch, task=task, datasets=datasets, dataset_name=dataset_name, license=license, tags=tags)
    return render_model_card(
        model_name or (repo_id or local_path).rstrip("/").split("/")[-1], metrics,
        base_model=base_model, from_scratch=from_scratch, task=task, datasets=datasets, dataset_name=dataset_name,
        license=license or "mit", tags=tags, use=use,
    )


def _folder_card(model_dir: Path, metrics: CardMetrics | None) -> tuple[str | None, CardMetrics | None]:
    """A folder's card, and the metrics a card of it shows: those given; for a folder without a
    card, those of the metrics files our commands left in it."""
    card_path = model_dir / CARD_FILE
    if card_path.is_file():
        return card_path.read_text(), metrics
    return None, metrics if metrics is not None else read_metrics(metrics_files_in(model_dir))


def prepare_hub_folder(
    model,
    processor,
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    card_metrics=None,
    card: str | os.PathLike | None = None,
    **card_options,
) -> Path:
    """Writes into `output_dir` (new or empty) everything a hub repository of the model needs, and
    returns it.

    Args:
        model: the HBI model loaded from `model_dir`.
        processor: its `HBIProcessor` (for a conversion, which has none, one with the official
            video settings).
        model_dir: the trained or converted HBI folder the model comes from.
        output_dir: the folder to upload.
        card_metrics: metrics files (or one path, or a dict) for the card; they replace the
            figures of the folder's card. By default a folder with a card keeps its figures, and
            one without takes those of the metrics files our commands left in it.
        card: a card file to start from instead of the folder's own (e.g. `model_cards/<name>.md`
            for a conversion of an official checkpoint); kept and updated the same way.
        card_options: `hub_model_card`'s (`repo_id`, `base_model`, `from_scratch`, `datasets`,
            `dataset_name`, `license`, `tags`, `model_name`).

    Raises:
        ValueError: `output_dir` is not empty, a metrics file is none of our commands', or the
            written folder misses a file (see `missing_hub_files`).
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"{output_dir} is not empty: give a new folder for the upload")
    metrics = None if card_metrics is None else read_metrics(card_metrics)  # bad files fail before any writing
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    example = _copy_example(model_dir, output_dir, model_task(model))
    if card is not None and not Path(card).is_file():
        raise FileNotFoundError(f"no model card at {card}")
    existing_card, metrics = (Path(card).read_text(), metrics) if card is not None else _folder_card(model_dir, metrics)
    if card_options.get("repo_id") is None:
        card_options.setdefault("local_path", str(output_dir))
        card_options.setdefault("model_name", model_dir.resolve().name)
    (output_dir / CARD_FILE).write_text(
        hub_model_card(model, processor, example, metrics, existing_card=existing_card, **card_options)
    )

    missing = missing_hub_files(output_dir)
    if missing:
        raise ValueError(f"the hub folder {output_dir} is incomplete, missing: {', '.join(missing)}")
    return output_dir


def write_push_card(model, working_dir: str | os.PathLike, repo_id: str) -> None:
    """Run by `model.push_to_hub` on the folder about to be uploaded. transformers has written
    there the repository's card, or its default card when the repository has none; an existing
    card is kept as it is. In place of the default one goes the card of the folder the model was
    loaded from (updated for `repo_id`), or a new HBI card, with the example clip its snippet runs
    on. The processor comes from `processor.push_to_hub`, as in transformers; the card's snippet
    needs both."""
    working_dir = Path(working_dir)
    card_path = working_dir / CARD_FILE
    default_card = ModelCard(card_path.read_text()) if card_path.is_file() else None
    if default_card is not None and _TRANSFORMERS_DEFAULT_CARD not in default_card.text:
        return
    from ..models.hbi import HBIProcessor, HBIVideoProcessor

    loaded_from = Path(model.name_or_path) if model.name_or_path else None
    source = loaded_from if loaded_from is not None and loaded_from.is_dir() else None
    if source is not None and (source / "processor_config.json").is_file():
        processor = HBIProcessor.from_pretrained(source)
    else:
        size = model.config.vision_config.image_size
        processor = _ProcessorSettings(HBIVideoProcessor(size={"shortest_edge": size},
                                                         crop_size={"height": size, "width": size}))
    task = model_task(model)
    example = _copy_example(source, working_dir, task) if source is not None else ensure_example(working_dir, task)
    existing_card, metrics = _folder_card(source, None) if source is not None else (None, None)
    tags = (default_card.data.tags or []) if default_card is not None else []
    card_path.write_text(hub_model_card(model, processor, example, metrics, existing_card=existing_card,
                                        repo_id=repo_id, tags=tags))


class _ProcessorSettings:
    """What a card says of a processor when the model folder has none: the video settings and a
    tokenizer that is not known."""

    max_words = 24

    def __init__(self, video_processor):
        self.video_processor = video_processor
        self.tokenizer = None


def missing_hub_files(folder: str | os.PathLike) -> list[str]:
    """What a hub folder of an HBI model lacks: config.json with an `auto_map`, the weights,
    processor_config.json with an `auto_map`, the tokenizer, README.md, the example clip its card
    names, and every module the `auto_map`s name together with the modules they import
    (relatively), recursively."""
    folder = Path(folder)
    missing = [
        name
        for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json", CARD_FILE)
        if not (folder / name).exists()
    ]
    if (folder / CARD_FILE).exists() and EXAMPLE_VIDEO in (folder / CARD_FILE).read_text():
        missing += [name for name in (EXAMPLE_VIDEO, EXAMPLE_INFO) if not (folder / name).exists()]
    auto_maps = []
    for name in ("config.json", "processor_config.json"):
        if (folder / name).exists():
            saved = json.loads((folder / name).read_text())
            if "auto_map" not in saved:
                missing.append(f"auto_map in {name}")
            auto_maps += [saved.get("auto_map", {}), saved.get("video_processor", {}).get("auto_map", {})]
    references = [
        reference
        for auto_map in auto_maps
        for value in auto_map.values()
        for reference in (value if isinstance(value, list) else [value])  # tokenizers map to [slow, fast]
        if reference
    ]
    pending = {reference.split(".")[0] for reference in references}
    seen = set()
    while pending:
        module = pending.pop()
        seen.add(module)
        path = folder / f"{module}.py"
        if not path.exists():
            missing.append(path.name)
            continue
        pending |= set(_RELATIVE_IMPORT.findall(path.read_text())) - seen
    return missing
