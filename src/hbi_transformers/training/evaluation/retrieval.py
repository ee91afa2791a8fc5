"""Text-video retrieval evaluation: each caption and each clip encoded once (`encode_corpus`),
every caption scored against every clip with the model's own `compute_similarity`, then ranked."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ...data import HBIDataCollator, VideoTextRecord, as_record
from ..metrics.retrieval import dual_softmax_retrieval_metrics, format_metrics_table, retrieval_metrics
from .encoding import encode_corpus


def evaluate_retrieval(
    model,
    collator: HBIDataCollator,
    records: Iterable[VideoTextRecord | Mapping],
    batch_size: int = 64,
    chunk_size: int = 64,
    dual_softmax: bool = False,
    progress: bool = True,
) -> dict[str, float | int]:
    """Text-to-video and video-to-text retrieval metrics of `model` on `records` (several captions
    per video allowed), plus `skipped_captions`: captions whose video failed to decode. Correct
    under torch.distributed (every process encodes its share and returns the same metrics)."""
    records = [as_record(record) for record in records]
    was_training = model.training
    model.eval()
    try:
        corpus = encode_corpus(model, collator, records, batch_size, progress=progress)
        # Levels the fused score gives no weight cannot change a rank: they are not scored.
        similarity = model.compute_similarity(
            corpus.texts, corpus.videos, chunk_size=chunk_size, num_levels=model.config.num_fused_levels
        ).logits_per_text
    finally:
        model.train(was_training)
    metrics = retrieval_metrics(similarity, corpus.text_to_video)
    if dual_softmax:
        metrics.update(dual_softmax_retrieval_metrics(similarity, corpus.text_to_video))
    metrics["skipped_captions"] = len(records) - len(corpus.text_to_video)
    return metrics


@dataclass
class RetrievalEvaluator:
    """What `HBITrainer.evaluate` runs for a retrieval model: `evaluate_retrieval` on a dataset
    of caption records."""

    collator: HBIDataCollator
    batch_size: int = 64
    chunk_size: int = 64
    dual_softmax: bool = False

    def __call__(self, model, dataset, progress: bool = True) -> dict[str, float | int]:
        return evaluate_retrieval(
            model, self.collator, dataset, self.batch_size, self.chunk_size, self.dual_softmax, progress
        )

    @staticmethod
    def format(metrics: Mapping) -> str:
        return format_metrics_table(metrics)
