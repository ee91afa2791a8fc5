"""The metrics files our commands write, read into what a model card shows.

| command | file | content |
|---|---|---|
| `hbi-train` | `OUTPUT_DIR/eval_results.json` | retrieval, keys prefixed `eval_` (`eval_t2v_R@1`, ...) |
| `hbi-evaluate` | `--output_json` | retrieval, unprefixed (`t2v_R@1`, ...; `dsl_*` with `--dual_softmax`) |
| `hbi-train-qa` | `OUTPUT_DIR/eval_results.json` | video QA accuracy (`accuracy`, `accuracy_all`, `what_accuracy`, ...) |
| `hbi-demo` | `OUTPUT_DIR/metrics.json` | `trained` / `untrained` retrieval, `estimator` held-out error, `minutes`, ... |
| `hbi-train-estimator` | `OUTPUT_DIR/history.json` | one record per epoch: `train_mse`, `heldout_mse`, `mean_baseline_mse` |

A file in none of these shapes is refused with its name and what it holds, never ignored.
"""

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# What a model folder made by our commands holds, in the order they are looked for.
METRICS_FILE_NAMES = ("eval_results.json", "metrics.json", "history.json")
RETRIEVAL_NAMES = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")
DIRECTIONS = ("t2v", "v2t")
DUAL_SOFTMAX_PREFIX = "dsl_"
ESTIMATOR_KEYS = ("heldout_mse", "mean_baseline_mse")


@dataclass
class CardMetrics:
    """What a card shows, gathered from one or more metrics files.

    retrieval: `{t2v,v2t}_{R@1,...,MnR}` (and their `dsl_` dual-softmax versions) of the model.
    untrained: the same for the model before training (the demo measures it), for comparison.
    video_qa: `accuracy`, `accuracy_all`, `num_questions`, per question type `what_accuracy`, ...
    estimator: the Banzhaf estimator's `heldout_mse` and `mean_baseline_mse` (and `epoch`).
    sources: the files read.
    """

    retrieval: dict = field(default_factory=dict)
    untrained: dict = field(default_factory=dict)
    video_qa: dict = field(default_factory=dict)
    estimator: dict = field(default_factory=dict)
    sources: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.retrieval or self.video_qa or self.estimator)

    def merge(self, other: "CardMetrics") -> "CardMetrics":
        """These metrics completed by `other`'s (a later file wins for a part both hold)."""
        return CardMetrics(
            retrieval=other.retrieval or self.retrieval,
            untrained=other.untrained or self.untrained,
            video_qa=other.video_qa or self.video_qa,
            estimator=other.estimator or self.estimator,
            sources=[*self.sources, *other.sources],
        )


def retrieval_figures(metrics: Mapping) -> dict[str, float]:
    """The retrieval figures of one evaluation, without the Trainer's `eval_` prefix:
    `{dsl_,}{t2v,v2t}_{R@1,R@5,R@10,R@50,MdR,MnR}`, those present."""
    unprefixed = {str(key).removeprefix("eval_"): value for key, value in metrics.items()}
    return {
        name: float(unprefixed[name])
        for prefix in ("", DUAL_SOFTMAX_PREFIX)
        for direction in DIRECTIONS
        for metric in RETRIEVAL_NAMES
        if (name := f"{prefix}{direction}_{metric}") in unprefixed and unprefixed[name] is not None
    }


def video_qa_figures(metrics: Mapping) -> dict:
    """The video QA figures of one evaluation (accuracies in percent, counts), unprefixed."""
    unprefixed = {str(key).removeprefix("eval_"): value for key, value in metrics.items()}
    return {
        key: value
        for key, value in unprefixed.items()
        if key.endswith(("accuracy", "accuracy_all", "num_questions", "num_out_of_vocabulary"))
    }


def card_metrics_from(metrics: Mapping | list, source: str | None = None) -> CardMetrics:
    """Recognises one metrics file's content (see the module docstring); raises `ValueError`
    naming `source` (the file, None for a dict given directly) when it is none of them."""
    sources = [source] if source else []
    source = source or "the metrics given"
    if isinstance(metrics, list):  # hbi-train-estimator's history: the last epoch counts
        if metrics and all(isinstance(record, Mapping) and "heldout_mse" in record for record in metrics):
            last = metrics[-1]
            return CardMetrics(estimator={key: last[key] for key in ("epoch", *ESTIMATOR_KEYS) if key in last},
                               sources=sources)
        raise ValueError(f"{source}: a list, but not hbi-train-estimator's history (records with 'heldout_mse')")
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{source}: expected a JSON object or list of metrics, got {type(metrics).__name__}")
    if isinstance(metrics.get("trained"), Mapping):  # hbi-demo's summary
        estimator = metrics.get("estimator") or {}
        return CardMetrics(
            retrieval=retrieval_figures(metrics["trained"]),
            untrained=retrieval_figures(metrics.get("untrained") or {}),
            estimator={key: estimator[key] for key in ESTIMATOR_KEYS if key in estimator},
            sources=sources,
        )
    found = CardMetrics(retrieval=retrieval_figures(metrics), video_qa=video_qa_figures(metrics), sources=sources)
    if not found:
        keys = ", ".join(sorted(map(str, metrics))[:12]) or "nothing"
        raise ValueError(
            f"{source}: no retrieval (t2v_R@1, ...), video QA (accuracy) or estimator figures in it "
            f"(it holds: {keys}); give a metrics file written by hbi-train, hbi-evaluate, hbi-train-qa, "
            "hbi-demo or hbi-train-estimator"
        )
    return found


def read_metrics_file(path: str | os.PathLike) -> CardMetrics:
    """One metrics file written by one of our commands."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON (line {error.lineno}: {error.msg})") from error
    return card_metrics_from(content, str(path))


def read_metrics(files: Iterable[str | os.PathLike | Mapping] | str | os.PathLike | Mapping | None) -> CardMetrics:
    """Several metrics files (or already loaded dicts) merged, in order."""
    if files is None:
        return CardMetrics()
    if isinstance(files, (str, os.PathLike, Mapping)):
        files = [files]
    merged = CardMetrics()
    for item in files:
        merged = merged.merge(card_metrics_from(item) if isinstance(item, Mapping) else read_metrics_file(item))
    return merged


def metrics_files_in(folder: str | os.PathLike) -> list[Path]:
    """The metrics files our commands left in a model folder."""
    return [Path(folder) / name for name in METRICS_FILE_NAMES if (Path(folder) / name).is_file()]
