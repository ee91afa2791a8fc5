import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_clip_tokenizer
from huggingface_hub import ModelCard

# The official checkpoints' cards are committed at the repository root.
MODEL_CARDS_DIR = Path(__file__).resolve().parents[2] / "model_cards"

from hbi_transformers.hub.example_clip import ExampleClip
from hbi_transformers.hub.model_card import (
    OFFICIAL_CHECKPOINTS,
    card_metrics,
    describe_tokenizer,
    render_model_card,
    render_official_model_card,
    update_model_card,
    use_section,
    write_model_card,
)

# As HBITrainer.evaluate() returns them: prefixed, with other entries beside the retrieval ones.
EVALUATION = {
    "eval_loss": 1.23,
    "eval_t2v_R@1": 45.1, "eval_t2v_R@5": 72.25, "eval_t2v_R@10": 81.0, "eval_t2v_R@50": 95.0,
    "eval_t2v_MdR": 2.0, "eval_t2v_MnR": 13.4, "eval_t2v_num_queries": 1000,
    "eval_v2t_R@1": 44.0, "eval_v2t_R@5": 71.5, "eval_v2t_R@10": 80.3, "eval_v2t_MdR": 2.0, "eval_v2t_MnR": 10.7,
}
METRIC_TYPES = ["recall_at_1", "recall_at_5", "recall_at_10", "recall_at_50", "median_rank", "mean_rank"]


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
    use = use_section("someone/hbi-msrvtt", local=False, example=ExampleClip("a cat", "a test clip"))
    card = render_model_card("hbi-msrvtt", EVALUATION, base_model="openai/clip-vit-base-patch32",
                             datasets=["friedrichor/MSR-VTT"], dataset_name="MSR-VTT 1k-A", tags=["msrvtt"],
                             license="apache-2.0", use=use)
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
    assert [t2v[name] for name in METRIC_TYPES] == [45.1, 72.25, 81.0, 95.0, 2.0, 13.4]
    v2t = results["video-to-text-retrieval", None]
    assert list(v2t) == [name for name in METRIC_TYPES if name != "recall_at_50"]  # not in the evaluation
    assert [v2t[name] for name in v2t] == [44.0, 71.5, 80.3, 2.0, 10.7]
    (entry,) = metadata["model-index"]
    assert entry["results"][0]["dataset"] == {"name": "MSR-VTT 1k-A", "type": "friedrichor/MSR-VTT", "split": "test"}
    # The hub's own parser reads the same figures back.
    parsed = ModelCard(card).data.eval_results
    assert {(r.task_type, r.metric_type): r.metric_value for r in parsed}[("text-to-video-retrieval", "mean_rank")] == 13.4
    # The text shows them too, and says how to load the model without the package.
    assert "45.1" in card and "13.4" in card
    assert "fine-tuned from [`openai/clip-vit-base-patch32`]" in card
    assert 'AutoModel.from_pretrained("someone/hbi-msrvtt", trust_remote_code=True)' in card
    assert 'hf_hub_download("someone/hbi-msrvtt", "example.mp4")' in card
    assert "pip install hbi-transformers" not in card and "not published on a package registry" in card


def test_metrics_with_or_without_prefix_from_a_dict_or_a_file(tmp_path):
    unprefixed = {key.removeprefix("eval_"): value for key, value in EVALUATION.items()}
    (tmp_path / "metrics.json").write_text(json.dumps(EVALUATION))
    expected = card_metrics(unprefixed)
    assert len(expected) == 11 and expected["t2v_R@50"] == 95.0 and "loss" not in expected
    assert card_metrics(EVALUATION) == card_metrics(tmp_path / "metrics.json") == expected

    model_dir = tmp_path / "hbi-trained"
    model_dir.mkdir()
    path = write_model_card(model_dir, tmp_path / "metrics.json", datasets=["my/corpus"], use="## Use")
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
        for key, metric_type in zip(["R@1", "R@5", "R@10", "R@50", "MdR", "MnR"], METRIC_TYPES)
        if f"t2v_{key}" in OFFICIAL_CHECKPOINTS[name].reported_metrics
    }
    assert "not measured here yet" in card and "https://arxiv.org/abs/2303.14369" in card
    # The committed card is the generated one.
    assert (MODEL_CARDS_DIR / f"{name}.md").read_text() == card


def test_official_cards_hold_the_paper_figures_until_measured():
    paper = "HBI paper (Jin et al., CVPR 2023)"
    msrvtt = results_by(front_matter(render_official_model_card("hbi-msrvtt-vit-b-32")))
    paper_types = [name for name in METRIC_TYPES if name != "recall_at_50"]
    assert msrvtt == {("text-to-video-retrieval", paper): dict(zip(paper_types, [48.6, 74.6, 83.4, 2.0, 12.0]))}
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


def test_origin_is_claimed_only_when_known():
    scratch = render_model_card("hbi-scratch", EVALUATION, from_scratch=True)
    assert "base_model" not in front_matter(scratch)
    assert "trained from scratch" in scratch and "fine-tuned" not in scratch and "openai/clip" not in scratch
    unknown = render_model_card("hbi-unknown", EVALUATION)
    assert "base_model" not in front_matter(unknown)
    assert "trained from scratch" not in unknown and "fine-tuned" not in unknown
    # A local folder is no hub model: named in the text, not in the metadata.
    local = render_model_card("hbi-local", EVALUATION, base_model=str(MODEL_CARDS_DIR))
    assert "base_model" not in front_matter(local) and f"fine-tuned from `{MODEL_CARDS_DIR}`" in local
    with pytest.raises(ValueError, match="no base model"):
        render_model_card("hbi-both", from_scratch=True, base_model="openai/clip-vit-base-patch32")


class ReferenceTokenizer:
    """Tokenizes the reference caption as given: CLIP's tokenizer as far as the card can tell."""

    def __init__(self, size, ids):
        self.size, self.ids = size, ids

    def __len__(self):
        return self.size

    def __call__(self, text):
        return {"input_ids": self.ids}


def test_tokenizer_is_described_by_its_size_and_origin(tmp_path):
    clip_ids = [49406, 320, 1125, 539, 320, 2368, 49407]
    assert describe_tokenizer(ReferenceTokenizer(49408, clip_ids)).startswith("CLIP's BPE tokenizer (49,408 tokens")
    # CLIP's size with other ids, or CLIP's ids for the first tokens with another size: not CLIP's.
    assert "not CLIP's" in describe_tokenizer(ReferenceTokenizer(49408, clip_ids[:-1] + [7]))
    tokenizer = tiny_clip_tokenizer(tmp_path)
    assert describe_tokenizer(tokenizer) == f"a {len(tokenizer):,}-token tokenizer of its own (not CLIP's 49,408-token one)"
    assert describe_tokenizer(tokenizer, "trained on the captions") == f"a {len(tokenizer):,}-token tokenizer trained on the captions"


DEMO_SUMMARY = {  # as hbi-demo writes metrics.json
    "untrained": {"t2v_R@1": 0.8, "t2v_R@5": 3.3, "t2v_R@10": 5.8, "t2v_R@50": 45.0, "t2v_MdR": 54.0, "t2v_MnR": 58.4,
                  "v2t_R@1": 0.8, "v2t_R@50": 41.7, "t2v_num_queries": 360},
    "trained": {"t2v_R@1": 24.4, "t2v_R@5": 62.2, "t2v_R@10": 80.8, "t2v_R@50": 97.2, "t2v_MdR": 4.0, "t2v_MnR": 8.2,
                "v2t_R@1": 22.5, "v2t_R@50": 97.5, "t2v_num_queries": 360},
    "estimator": {"heldout_mse": 0.0123, "mean_baseline_mse": 0.0456},
    "minutes": 13.1, "t2v_R@1_chance": 0.83, "settings": {"hidden_size": 128},
}


def test_demo_summary_fills_the_card(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(DEMO_SUMMARY))
    card = render_model_card("hbi-demo", tmp_path / "metrics.json", from_scratch=True)
    t2v = results_by(front_matter(card))["text-to-video-retrieval", None]
    assert t2v["recall_at_1"] == 24.4 and t2v["recall_at_50"] == 97.2
    results = card.split("## Results")[1].split("<!-- /hbi:results -->")[0]
    trained = next(line for line in results.splitlines() if line.startswith("trained") and "t2v" in line)
    untrained = next(line for line in results.splitlines() if line.startswith("untrained") and "t2v" in line)
    assert trained.split()[2:] == ["24.4", "62.2", "80.8", "97.2", "4.0", "8.2"]  # R@50 shown, not "-"
    assert untrained.split()[2:] == ["0.8", "3.3", "5.8", "45.0", "54.0", "58.4"]
    assert "held-out mean squared error 0.0123 against 0.0456" in results and "`metrics.json`" in results


def test_update_keeps_the_card_and_replaces_only_what_is_given(tmp_path):
    use = use_section("hbi-demo", local=True, example=ExampleClip("a red square appears", "a test clip"))
    card = render_model_card("hbi-demo", DEMO_SUMMARY, from_scratch=True, datasets=["synthetic-shapes"],
                             description="A demonstration model, trained on shapes.", use=use, tags=["demo"])
    new_use = use_section("me/hbi-demo", local=False, example=ExampleClip("a red square appears", "a test clip"))

    kept = update_model_card(card, use=new_use)
    assert front_matter(kept) == front_matter(card)  # model-index, no base_model, tags: as they were
    assert kept.split("<!-- hbi:use -->")[0] == card.split("<!-- hbi:use -->")[0]  # description and results
    assert 'from_pretrained("me/hbi-demo"' in kept and 'from_pretrained("hbi-demo"' not in kept
    assert kept.split("<!-- /hbi:use -->")[1] == card.split("<!-- /hbi:use -->")[1]  # citation

    updated = update_model_card(card, EVALUATION, use=new_use, base_model="openai/clip-vit-base-patch32")
    metadata = front_matter(updated)
    assert results_by(metadata)["text-to-video-retrieval", None]["recall_at_1"] == 45.1
    assert metadata["model-index"][0]["results"][0]["dataset"]["type"] == "synthetic-shapes"  # the card's
    assert metadata["base_model"] == "openai/clip-vit-base-patch32" and "demo" in metadata["tags"]
    assert "A demonstration model, trained on shapes." in updated and "24.4" not in updated.split("## Results")[1]

    foreign = "---\nlicense: cc-by-4.0\n---\n\n# My model\n\nMy own words.\n"
    appended = update_model_card(foreign, EVALUATION, use=new_use)
    assert appended.index("My own words.") < appended.index("## Results") < appended.index("## Use")
    assert front_matter(appended)["license"] == "cc-by-4.0"


OLD_DEMO_CARD = """---
base_model: openai/clip-vit-base-patch32
datasets:
- synthetic-shapes
library_name: transformers
model-index:
- name: hbi-synthetic-shapes
  results:
  - task:
      type: text-to-video-retrieval
      name: Text-to-video retrieval
    dataset:
      name: synthetic shapes corpus (test split)
      type: synthetic-shapes
      split: test
    metrics:
    - type: recall_at_1
      value: 24.4
      name: R@1
---

# hbi-synthetic-shapes

A small HBI trained from scratch on CPU.

## Results

```
model     direction   R@1  R@50
measured  t2v        24.4     -
```

## Use

model = AutoModel.from_pretrained("hbi-synthetic-shapes", trust_remote_code=True)

### Large galleries

Encode once.

## Citation

(the paper)
"""


def test_a_card_without_marks_gets_its_sections_replaced_under_their_headings():
    """A card written before the marks (as the demo's was): the sections under the same headings
    are replaced, the rest kept; `from_scratch` drops the base model it wrongly named."""
    use = use_section("me/hbi-demo", local=False, example=ExampleClip("a red square appears", "a test clip"))
    card = update_model_card(OLD_DEMO_CARD, DEMO_SUMMARY, use=use, from_scratch=True)
    metadata = front_matter(card)
    assert "base_model" not in metadata and metadata["datasets"] == ["synthetic-shapes"]
    assert results_by(metadata)["text-to-video-retrieval", None]["recall_at_50"] == 97.2
    assert card.count("## Results") == 1 and card.count("## Use") == 1 and "### Large galleries" not in card
    assert 'from_pretrained("hbi-synthetic-shapes"' not in card and 'from_pretrained("me/hbi-demo"' in card
    assert "A small HBI trained from scratch on CPU." in card and card.rstrip().endswith("## Citation\n\n(the paper)")
    assert card.index("## Results") < card.index("## Use") < card.index("## Citation")
