"""The folder a model's hub repository holds: the model's and processor's `save_pretrained`
output (config with `auto_map`, safetensors weights, processor and tokenizer files, the
remote-code modules) plus the model card, checked complete before anything is uploaded."""

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from .model_card import write_model_card

EVALUATION_FILE = "eval_results.json"  # what hbi-train writes beside the model
_RELATIVE_IMPORT = re.compile(r"^\s*from \.(\w+) import", re.MULTILINE)


def prepare_hub_folder(
    model,
    processor,
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    card_metrics: Mapping | str | os.PathLike | None = None,
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
        card_metrics: the evaluation shown in the card (dict or JSON path); by default
            `model_dir/eval_results.json` when it exists.
        card_options: passed to `render_model_card` (`model_name` defaults to the last part of
            `repo_id`, or the folder's name).

    Raises:
        ValueError: `output_dir` is not empty, or the written folder misses a file (see
            `missing_hub_files`).
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"{output_dir} is not empty: give a new folder for the upload")
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)

    if card_metrics is None and (model_dir / EVALUATION_FILE).exists():
        card_metrics = model_dir / EVALUATION_FILE
    repo_id = card_options.get("repo_id")
    card_options.setdefault("model_name", repo_id.split("/")[-1] if repo_id else model_dir.resolve().name)
    video_processor = processor.video_processor
    card_options.setdefault("max_frames", video_processor.max_frames)
    card_options.setdefault("video_framerate", video_processor.video_framerate)
    card_options.setdefault("image_size", video_processor.crop_size["height"])
    card_options.setdefault("max_words", processor.max_words)
    write_model_card(output_dir, card_metrics, **card_options)

    missing = missing_hub_files(output_dir)
    if missing:
        raise ValueError(f"the hub folder {output_dir} is incomplete, missing: {', '.join(missing)}")
    return output_dir


def missing_hub_files(folder: str | os.PathLike) -> list[str]:
    """What a hub folder of an HBI model lacks: config.json with an `auto_map`, the weights,
    processor_config.json with an `auto_map`, the tokenizer, README.md, and every module the
    `auto_map`s name together with the modules they import (relatively), recursively."""
    folder = Path(folder)
    missing = [
        name
        for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json", "README.md")
        if not (folder / name).exists()
    ]
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
