"""Evaluation: one corpus encoder, and the retrieval and question answering evaluators that
`HBITrainer.evaluate` runs."""

from .encoding import EncodedClips, EncodedCorpus, encode_clips, encode_corpus, encode_texts
from .retrieval import RetrievalEvaluator, evaluate_retrieval
from .video_qa import VideoQAEvaluator, evaluate_video_qa, predict_answers

__all__ = [
    "EncodedClips",
    "EncodedCorpus",
    "RetrievalEvaluator",
    "VideoQAEvaluator",
    "encode_clips",
    "encode_corpus",
    "encode_texts",
    "evaluate_retrieval",
    "evaluate_video_qa",
    "predict_answers",
]
