"""Video question answering evaluation: each clip encoded once (`encode_clips`), all of its
questions answered from its embeddings, accuracy under the official protocol and over all
questions. Correct under torch.distributed: each process answers the questions of its share of
the clips and every process gets every answer."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ...data import HBIDataCollator, VideoTextRecord, as_record, text_to_video_index, unique_videos
from ...models.hbi.configuration_hbi import OUT_OF_VOCABULARY_LABEL
from ...models.hbi.modeling_hbi import HBIVideoOutput
from ..metrics.video_qa import format_qa_table, video_qa_accuracy
from .encoding import encode_clips, encode_texts
from .sharding import merge_from_all_processes, process_share


@torch.no_grad()
def predict_answers(
    model,
    collator: HBIDataCollator,
    records: Sequence[VideoTextRecord],
    batch_size: int = 64,
    progress: bool = True,
) -> list[int]:
    """The predicted answer label of each record's question, `OUT_OF_VOCABULARY_LABEL` where its
    video failed to decode (the collator counts those)."""
    clips = unique_videos(records)
    questions_of_clip = [[] for _ in clips]
    for question, clip in enumerate(text_to_video_index(records)):
        questions_of_clip[clip].append(question)
    local_clips = process_share(list(range(len(clips))))
    predictions = {}
    was_training = model.training
    model.eval()
    try:
        for encoded in encode_clips(
            model, collator, [clips[i] for i in local_clips], batch_size, progress=progress,
            description="answering questions",
        ):
            questions, rows = [], []
            for row, position in enumerate(encoded.positions):
                for question in questions_of_clip[local_clips[position]]:
                    questions.append(question)
                    rows.append(row)
            texts = [records[question].caption for question in questions]
            for start, text in encode_texts(model, collator.processor, texts, batch_size, progress=False):
                batch_rows = torch.tensor(rows[start : start + batch_size], device=encoded.videos.video_embeds.device)
                output = model.compute_answer_logits(
                    text,
                    HBIVideoOutput(
                        video_embeds=encoded.videos.video_embeds[batch_rows],
                        video_mask=encoded.videos.video_mask[batch_rows],
                    ),
                )
                labels = output.logits.argmax(dim=-1).tolist()
                predictions.update(zip(questions[start : start + batch_size], labels))
    finally:
        model.train(was_training)
    predictions = merge_from_all_processes(predictions)
    return [predictions.get(question, OUT_OF_VOCABULARY_LABEL) for question in range(len(records))]


def evaluate_video_qa(
    model,
    collator: HBIDataCollator,
    records: Iterable[VideoTextRecord | Mapping],
    question_types: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, float | int | None]:
    """`video_qa_accuracy` of the model's answers (see `predict_answers`), plus `num_unanswered`:
    questions whose video failed to decode, counted wrong under both protocols."""
    records = [as_record(record) for record in records]
    predictions = predict_answers(model, collator, records, batch_size, progress)
    labels = [model.config.label2id.get(record.answer, OUT_OF_VOCABULARY_LABEL) for record in records]
    metrics = video_qa_accuracy(predictions, labels, question_types)
    metrics["num_unanswered"] = predictions.count(OUT_OF_VOCABULARY_LABEL)
    return metrics


@dataclass
class VideoQAEvaluator:
    """What `HBITrainer.evaluate` runs for a question answering model: `evaluate_video_qa` on a
    dataset of question records, with their `question_types` (aligned with the dataset) for the
    per-type accuracies."""

    collator: HBIDataCollator
    batch_size: int = 64
    question_types: Sequence[str] | None = None

    def __call__(self, model, dataset, progress: bool = True) -> dict[str, float | int | None]:
        return evaluate_video_qa(model, self.collator, dataset, self.question_types, self.batch_size, progress)

    @staticmethod
    def format(metrics: Mapping) -> str:
        return format_qa_table(metrics)
