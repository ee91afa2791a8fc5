"""Training and evaluation: `HBITrainer` with the official recipes, optimisation, Banzhaf labels
and estimator pre-training, the corpus encoder and evaluators, and the metrics. Builds on
`hbi_transformers.models` and `hbi_transformers.data`."""

from .arguments import HBITrainingArguments, VideoQATrainingArguments
from .evaluation import (
    RetrievalEvaluator,
    VideoQAEvaluator,
    encode_clips,
    encode_corpus,
    encode_texts,
    evaluate_retrieval,
    evaluate_video_qa,
    predict_answers,
)
from .metrics.retrieval import format_metrics_table, load_retrieval_metric, retrieval_metrics
from .metrics.video_qa import format_qa_table, video_qa_accuracy
from .official_precision import use_official_fp16_towers
from .trainer import HBITrainer

__all__ = [
    "HBITrainer",
    "HBITrainingArguments",
    "RetrievalEvaluator",
    "VideoQAEvaluator",
    "VideoQATrainingArguments",
    "encode_clips",
    "encode_corpus",
    "encode_texts",
    "evaluate_retrieval",
    "evaluate_video_qa",
    "format_metrics_table",
    "format_qa_table",
    "load_retrieval_metric",
    "predict_answers",
    "retrieval_metrics",
    "use_official_fp16_towers",
    "video_qa_accuracy",
]
