"""Every metrics file our commands write is read into the card's figures; any other file is
refused with its name."""

import json
from dataclasses import asdict

import pytest
import torch

from hbi_transformers.cli.loading import write_metrics
from hbi_transformers.hub.metrics_files import metrics_files_in, read_metrics, read_metrics_file
from hbi_transformers.training.estimator_pretraining import EstimatorEpoch
from hbi_transformers.training.metrics.retrieval import (
    dual_softmax_retrieval_metrics,
    format_metrics_table,
    retrieval_metrics,
)
from hbi_transformers.training.metrics.video_qa import format_qa_table, video_qa_accuracy


def evaluation(seed=0):
    """What evaluate_retrieval returns for a random 6 x 6 similarity."""
    similarity = torch.randn(6, 6, generator=torch.Generator().manual_seed(seed))
    return {**retrieval_metrics(similarity), **dual_softmax_retrieval_metrics(similarity)}


def test_hbi_train_eval_results(tmp_path):
    metrics = {f"eval_{key}": value for key, value in evaluation().items()} | {"eval_loss": 2.0, "epoch": 3.0}
    write_metrics(metrics, tmp_path, "eval_results", format_metrics_table)  # as hbi-train writes it
    read = read_metrics_file(tmp_path / "eval_results.json")
    expected = evaluation()
    assert read.retrieval["t2v_R@50"] == expected["t2v_R@50"] and read.retrieval["v2t_MnR"] == expected["v2t_MnR"]
    assert read.retrieval["dsl_t2v_R@1"] == expected["dsl_t2v_R@1"]
    assert "loss" not in read.retrieval and not read.video_qa and not read.estimator
    assert read.sources == [str(tmp_path / "eval_results.json")]


def test_hbi_evaluate_output_json(tmp_path):
    (tmp_path / "test.json").write_text(json.dumps(evaluation(1), indent=2))  # as hbi-evaluate --output_json
    read = read_metrics_file(tmp_path / "test.json")
    assert read.retrieval == {key: float(value) for key, value in evaluation(1).items()
                              if key.split("_")[-1] in ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")}


def test_hbi_train_qa_eval_results(tmp_path):
    metrics = video_qa_accuracy([1, 2, 3, 0], [1, 2, 0, -1], ["what", "who", "what", "how"])
    write_metrics(metrics, tmp_path, "eval_results", format_qa_table)  # as hbi-train-qa writes it
    read = read_metrics_file(tmp_path / "eval_results.json")
    assert read.video_qa["accuracy"] == pytest.approx(200 / 3) and read.video_qa["accuracy_all"] == 50.0
    assert read.video_qa["what_accuracy"] == 50.0 and not read.retrieval


def test_hbi_demo_metrics_and_estimator_history(tmp_path):
    summary = {"untrained": evaluation(2), "trained": evaluation(3), "estimator": {"heldout_mse": 0.5,
               "mean_baseline_mse": 0.75}, "minutes": 1.5, "t2v_R@1_chance": 16.7, "settings": {"seed": 0}}
    (tmp_path / "metrics.json").write_text(json.dumps(summary, indent=2))  # as hbi-demo writes it
    history = [EstimatorEpoch(epoch, 1.0 / epoch, 2.0 / epoch, 3.0) for epoch in (1, 2)]
    (tmp_path / "history.json").write_text(json.dumps([asdict(record) for record in history]))  # hbi-train-estimator
    demo = read_metrics_file(tmp_path / "metrics.json")
    assert demo.retrieval["t2v_R@1"] == evaluation(3)["t2v_R@1"]
    assert demo.untrained["t2v_R@1"] == evaluation(2)["t2v_R@1"]
    assert demo.estimator == {"heldout_mse": 0.5, "mean_baseline_mse": 0.75}
    assert read_metrics_file(tmp_path / "history.json").estimator == {"epoch": 2, "heldout_mse": 1.0,
                                                                       "mean_baseline_mse": 3.0}
    # Both found in the folder and merged: the later file's estimator wins, the demo's retrieval stays.
    assert metrics_files_in(tmp_path) == [tmp_path / "metrics.json", tmp_path / "history.json"]
    merged = read_metrics(metrics_files_in(tmp_path))
    assert merged.retrieval == demo.retrieval and merged.estimator["epoch"] == 2 and len(merged.sources) == 2


def test_other_files_are_refused_by_name(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"best_metric": 1.0, "log_history": []}))
    with pytest.raises(ValueError, match=r"trainer_state\.json: no retrieval .*\(it holds: best_metric, log_history\)"):
        read_metrics_file(tmp_path / "trainer_state.json")
    (tmp_path / "broken.json").write_text('{"t2v_R@1": 1,\n')
    with pytest.raises(ValueError, match=r"broken\.json: not JSON \(line 2"):
        read_metrics_file(tmp_path / "broken.json")
    with pytest.raises(ValueError, match=r"list\.json: a list, but not"):
        (tmp_path / "list.json").write_text("[1, 2]")
        read_metrics_file(tmp_path / "list.json")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_metrics_file(tmp_path / "absent.json")
