"""Video question answering accuracy (MSRVTT-QA), overall and per question type, in percent.

Two protocols, from the same predictions:
- `accuracy`: the official one. The official test loader drops the questions whose answer is not
  in the answer vocabulary (no classifier output can be right for them), and the accuracy is the
  share of the remaining questions answered right.
- `accuracy_all`: every question counts; those whose answer is out of the vocabulary are wrong.

Labels are answer labels, `OUT_OF_VOCABULARY_LABEL` (-1) for an answer outside the vocabulary. A
prediction of -1 means "not answered" (e.g. the video could not be decoded) and is always wrong.

Question types are MSRVTT-QA's five (what, who, how, when, where): the annotation's when it gives
one, else the question's first word; any other first word makes an "other" question.
"""

import re
from collections.abc import Mapping, Sequence

import torch

from ...models.hbi.configuration_hbi import OUT_OF_VOCABULARY_LABEL

QUESTION_TYPES = ("what", "who", "how", "when", "where")
OTHER_QUESTION_TYPE = "other"


def question_type(question: str) -> str:
    """The MSRVTT-QA type of a question from its first word ("other" when it is none of them);
    "what's" is a what question."""
    first_word = re.match(r"\W*([a-z]*)", question.lower())[1]
    return first_word if first_word in QUESTION_TYPES else OTHER_QUESTION_TYPE


def video_qa_accuracy(
    predictions: Sequence[int] | torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    question_types: Sequence[str] | None = None,
) -> dict[str, float | int | None]:
    """Accuracy under both protocols, overall and per question type.

    Returns `accuracy`, `accuracy_all` (percent; None without questions to count),
    `num_questions`, `num_out_of_vocabulary`, and the same four prefixed by each type present
    (`what_accuracy`, ...), types in the order what, who, how, when, where, other.
    """
    predictions, labels = torch.as_tensor(predictions).flatten(), torch.as_tensor(labels).flatten()
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.numel()} predictions for {labels.numel()} labels")
    if question_types is not None and len(question_types) != labels.numel():
        raise ValueError(f"{len(question_types)} question types for {labels.numel()} questions")
    in_vocabulary = labels != OUT_OF_VOCABULARY_LABEL
    correct = (predictions == labels) & in_vocabulary
    metrics = _accuracies(correct, in_vocabulary)
    if question_types is not None:
        for kind in (*QUESTION_TYPES, OTHER_QUESTION_TYPE):
            of_kind = torch.tensor([t == kind for t in question_types], dtype=torch.bool)
            if of_kind.any():
                metrics.update(
                    {f"{kind}_{name}": value for name, value in _accuracies(correct[of_kind], in_vocabulary[of_kind]).items()}
                )
    return metrics


def _accuracies(correct: torch.Tensor, in_vocabulary: torch.Tensor) -> dict[str, float | int | None]:
    num_correct, num_in_vocabulary, num_questions = int(correct.sum()), int(in_vocabulary.sum()), correct.numel()
    return {
        "accuracy": 100.0 * num_correct / num_in_vocabulary if num_in_vocabulary else None,
        "accuracy_all": 100.0 * num_correct / num_questions if num_questions else None,
        "num_questions": num_questions,
        "num_out_of_vocabulary": num_questions - num_in_vocabulary,
    }


def format_qa_table(metrics: Mapping[str, float | int | None]) -> str:
    """A text table of `video_qa_accuracy` results: one row for all questions, one per type."""
    header = ("questions", "accuracy (official)", "accuracy (all)", "count", "out of vocabulary")
    kinds = [("all", "")] + [
        (kind, f"{kind}_") for kind in (*QUESTION_TYPES, OTHER_QUESTION_TYPE) if f"{kind}_num_questions" in metrics
    ]
    rows = [
        (
            name,
            _percent(metrics.get(f"{prefix}accuracy")),
            _percent(metrics.get(f"{prefix}accuracy_all")),
            str(metrics[f"{prefix}num_questions"]),
            str(metrics[f"{prefix}num_out_of_vocabulary"]),
        )
        for name, prefix in kinds
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) if column == 0 else cell.rjust(width) for column, (cell, width) in enumerate(zip(row, widths)))
        for row in (header, *rows)
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
