"""Text-video retrieval metrics as an `evaluate` module, loaded by path (no hub access):

    evaluate.load(".../hbi_transformers/retrieval_metric")
    # or hbi_transformers.metrics.load_retrieval_metric()

It wraps `hbi_transformers.metrics`, which holds the ranking rules.
"""

import datasets
import evaluate
import numpy as np

from hbi_transformers.training.metrics.retrieval import dual_softmax_retrieval_metrics, retrieval_metrics

_DESCRIPTION = """
Text-to-video and video-to-text retrieval: R@1, R@5, R@10, R@50 (percent), median rank (MdR) and
mean rank (MnR), 1-based, with several captions per video allowed. A video-to-text query ranks the
videos' caption groups, each scored by its best caption (the official multi-sentence rule).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one row of similarities per caption, `n_video` floats each (a row of the
        `[n_text, n_video]` matrix, higher is better). Rows may come in batches through `add_batch`.
    references: for each caption, the index of its video (its column in the rows).
    tie_rule: "optimistic" (default; the correct item goes ahead of equal scores) or "pessimistic".
    dual_softmax_temperature: when given, also returns the metrics after dual-softmax
        re-ranking, prefixed `dsl_` (1.0 for logits already multiplied by the logit scale).
Returns:
    `t2v_R@1` ... `t2v_R@50`, `t2v_MdR`, `t2v_MnR`, `t2v_num_queries`, `t2v_num_tied_queries`, and
    the same for `v2t`.
Example:
    >>> metric = hbi_transformers.metrics.load_retrieval_metric()
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])["t2v_R@1"]
    100.0
"""

_CITATION = """
@inproceedings{jin2023video,
  title={Video-Text as Game Players: Hierarchical Banzhaf Interaction for Cross-Modal Representation Learning},
  author={Jin, Peng and Huang, Jinfa and Xiong, Pengfei and Tian, Shangxuan and Liu, Chang
          and Ji, Xiangyang and Yuan, Li and Chen, Jie},
  booktitle={CVPR},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # float64 so that float64 scores keep their order (and their ties) exactly.
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, tie_rule="optimistic", dual_softmax_temperature=None):
        similarity = np.asarray(predictions, dtype=np.float64)
        if similarity.ndim != 2:
            raise ValueError("every prediction row must hold one score per video (rows of equal length)")
        text_to_video = np.asarray(references, dtype=np.int64)
        metrics = retrieval_metrics(similarity, text_to_video, tie_rule=tie_rule)
        if dual_softmax_temperature is not None:
            metrics.update(
                dual_softmax_retrieval_metrics(
                    similarity, text_to_video, temperature=dual_softmax_temperature, tie_rule=tie_rule
                )
            )
        return metrics
