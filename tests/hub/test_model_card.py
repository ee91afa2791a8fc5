import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

# The official checkpoints' cards are committed at the repository root.
MODEL_CARDS_DIR = Path(__file__).resolve().parents[2] / "model_cards"

from hbi_transformers.hub.model_card import (
    OFFICIAL_CHECKPOINTS,
    card_metrics,
    render_model_card,
    render_official_model_card,
    write_model_card,
)

# As HBITrainer.evaluate() returns them: prefixed, with other entries beside the retrieval ones.
EVALUATION = {
    "eval_loss": 1.23,
    "eval_t2v_R@1": 45.1, "eval_t2v_R@5": 72.25, "eval_t2v_R@10": 81.0, "eval_t2v_R@50": 95.0,
    "eval_t2v_MdR": 2.0, "eval_t2v_MnR": 13.4, "eval_t2v_num_queries": 1000,
    "eval_v2t_R@1": 44.0, "eval_v2t_R@5": 71.5, "eval_v2t_R@10": 80.3, "eval_v2t_MdR": 2.0, "eval_v2t_MnR": 10.7,
}
METRIC_TYPES = ["recall_at_1", "recall_at_5", "recall_at_10", "median_rank", "mean_rank"]


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def results_by(metadata: dict) -> dict:
    """{(task type, source name): {metric type: value}} of a model-index; measured results are
    self-reported (no source)."""
    (entry,) = metadata["model-index"]
    return {
        (result["task"]["type"], result.get("source", {}).get("name")): {
            metric["type"]: metric["value"] for metric in result["metrics"]
        }
        for result in entry["results"]
    }


def test_card_metadata_carries_the_evaluation():
    card = render_model_card("hbi-msrvtt", EVALUATION, datasets=["friedrichor/MSR-VTT"], dataset_name="MSR-VTT 1k-A",
                             tags=["msrvtt"], license="apache-2.0", repo_id="someone/hbi-msrvtt")
    metadata = front_matter(card)
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "feature-extraction"
    assert metadata["base_model"] == "openai/clip-vit-base-patch32"
    assert metadata["datasets"] == ["friedrichor/MSR-VTT"]
    assert metadata["license"] == "apache-2.0"
    assert {"hbi", "text-video-retrieval", "msrvtt"} <= set(metadata["tags"])
    assert metadata["model-index"][0]["name"] == "hbi-msrvtt"
    results = results_by(metadata)
    assert set(results) == {("text-to-video-retrieval", None),
                            ("video-to-text-retrieval", None)}
    t2v = results["text-to-video-retrieval", None]
    assert list(t2v) == METRIC_TYPES
    assert [t2v[name] for name in METRIC_TYPES] == [45.1, 72.25, 81.0, 2.0, 13.4]
    v2t = results["video-to-text-retrieval", None]
    assert [v2t[name] for name in METRIC_TYPES] == [44.0, 71.5, 80.3, 2.0, 10.7]
    (entry,) = metadata["model-index"]
    assert entry["results"][0]["dataset"] == {"name": "MSR-VTT 1k-A", "type": "friedrichor/MSR-VTT", "split": "test"}
    # The hub's own parser reads the same figures back.
    parsed = ModelCard(card).data.eval_results
    assert {(r.task_type, r.metric_type): r.metric_value for r in parsed}[("text-to-video-retrieval", "mean_rank")] == 13.4
    # The text shows them too, and says how to load the model without the package.
    assert "45.1" in card and "13.4" in card
    assert 'AutoModel.from_pretrained("someone/hbi-msrvtt", trust_remote_code=True)' in card


def test_metrics_with_or_without_prefix_from_a_dict_or_a_file(tmp_path):
    unprefixed = {key.removeprefix("eval_"): value for key, value in EVALUATION.items()}
    (tmp_path / "metrics.json").write_text(json.dumps(EVALUATION))
    expected = card_metrics(unprefixed)
    assert len(expected) == 10 and "t2v_R@50" not in expected and "loss" not in expected
    assert card_metrics(EVALUATION) == card_metrics(tmp_path / "metrics.json") == expected

    model_dir = tmp_path / "hbi-trained"
    model_dir.mkdir()
    path = write_model_card(model_dir, tmp_path / "metrics.json", datasets=["my/corpus"])
    metadata = front_matter(path.read_text())
    assert path == model_dir / "README.md" and metadata["model-index"][0]["name"] == "hbi-trained"
    assert results_by(metadata)["text-to-video-retrieval", None]["recall_at_1"] == 45.1


def test_card_without_an_evaluation_has_no_model_index():
    card = render_model_card("hbi-fresh")
    metadata = front_matter(card)
    assert "model-index" not in metadata and metadata["library_name"] == "transformers"
    assert "Not measured here yet." in card


@pytest.mark.parametrize("name", sorted(OFFICIAL_CHECKPOINTS))
def test_official_checkpoint_cards_cite_the_paper(name):
    card = render_official_model_card(name)
    metadata = front_matter(card)
    assert metadata["license"] == "apache-2.0"
    results = results_by(metadata)
    (paper,) = results.values()  # the paper's text-to-video figures only, until measured
    assert paper == {
        metric_type: OFFICIAL_CHECKPOINTS[name].reported_metrics[f"t2v_{key}"]
        for key, metric_type in zip(["R@1", "R@5", "R@10", "MdR", "MnR"], METRIC_TYPES)
        if f"t2v_{key}" in OFFICIAL_CHECKPOINTS[name].reported_metrics
    }
    assert "not measured here yet" in card and "https://arxiv.org/abs/2303.14369" in card
    # The committed card is the generated one.
    assert (MODEL_CARDS_DIR / f"{name}.md").read_text() == card


def test_official_cards_hold_the_paper_figures_until_measured():
    paper = "HBI paper (Jin et al., CVPR 2023)"
    msrvtt = results_by(front_matter(render_official_model_card("hbi-msrvtt-vit-b-32")))
    assert msrvtt == {("text-to-video-retrieval", paper): dict(zip(METRIC_TYPES, [48.6, 74.6, 83.4, 2.0, 12.0]))}
    activitynet = results_by(front_matter(render_official_model_card("hbi-activitynet-vit-b-32")))
    assert activitynet == {("text-to-video-retrieval", paper): {"recall_at_1": 42.2}}

    # Once measured, the metadata holds the measurement (one set per task and dataset on the
    # hub) and the text both.
    card = render_official_model_card("hbi-msrvtt-vit-b-32", EVALUATION)
    measured = results_by(front_matter(card))
    assert set(measured) == {("text-to-video-retrieval", None), ("video-to-text-retrieval", None)}
    assert measured["text-to-video-retrieval", None]["recall_at_1"] == 45.1
    results = card.split("## Results")[1]
    assert "48.6" in results and "45.1" in results
