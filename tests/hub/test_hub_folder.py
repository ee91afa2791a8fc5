"""The folder that `hbi-push` uploads: complete, and loadable with `trust_remote_code=True` by
someone who does not have the package."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData
from conftest import run_without_package, textured_frames, tiny_clip_tokenizer, tiny_config, write_mp4

from hbi_transformers import HBIModel, HBIProcessor, HBIVideoProcessor
from hbi_transformers.cli.loading import load_processor
from hbi_transformers.cli.push_to_hub import run as push_command
from hbi_transformers.hub.example_clip import synthetic_example
from hbi_transformers.hub.publishing import missing_hub_files, prepare_hub_folder, write_push_card

MODEL_CARDS = Path(__file__).resolve().parents[2] / "model_cards"

REMOTE_CODE = ["configuration_hbi", "modeling_hbi", "wti", "token_merging", "banzhaf_estimator", "losses", "temporal",
               "processing_hbi", "video_processing_hbi", "video_augmentation", "video_io"]


def prepare(model_dir, output_dir, tokenizer=None, **card_options):
    """prepare_hub_folder on the model and processor loaded as `hbi-push` loads them."""
    model = HBIModel.from_pretrained(model_dir)
    processor = load_processor(str(model_dir), model.config.vision_config.image_size, tokenizer)
    return prepare_hub_folder(model, processor, model_dir, output_dir, **card_options)


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """A model folder as hbi-train leaves it: model, processor, eval_results.json."""
    folder = tmp_path_factory.mktemp("hbi-trained")
    tokenizer = tiny_clip_tokenizer(tmp_path_factory.mktemp("bpe"))
    processor = HBIProcessor(
        HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, max_frames=4),
        tokenizer, max_words=8,
    )
    torch.manual_seed(0)
    model = HBIModel(tiny_config(text_config={**tiny_config().text_config.to_dict(), "vocab_size": len(tokenizer)}))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps({"eval_t2v_R@1": 12.5, "eval_v2t_R@1": 11.0, "epoch": 5}))
    return folder


def test_hub_folder_is_complete(trained_folder, tmp_path):
    folder = prepare(trained_folder, tmp_path / "upload", repo_id="someone/hbi-tiny", datasets=["friedrichor/MSR-VTT"])
    names = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md"} <= names
    assert {f"{module}.py" for module in REMOTE_CODE} <= names
    assert json.loads((folder / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_hbi.HBIConfig", "AutoModel": "modeling_hbi.HBIModel"
    }
    assert json.loads((folder / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_hbi.HBIProcessor"
    }
    card = (folder / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---\n")[1])
    (entry,) = metadata["model-index"]
    assert entry["name"] == "hbi-tiny"
    assert [result["metrics"][0]["value"] for result in entry["results"]] == [12.5, 11.0]  # eval_results.json
    assert "base_model" not in metadata  # nothing says where the weights come from
    assert "at most 4 frames" in card and 'from_pretrained("someone/hbi-tiny"' in card
    assert {"example.mp4", "example.json"} <= names
    # No example in the folder: the synthetic clip, whose caption its plan gives without rendering.
    assert json.loads((folder / "example.json").read_text())["caption"] == synthetic_example().caption
    assert missing_hub_files(folder) == []

    (folder / "token_merging.py").unlink()  # imported by modeling_hbi, named by no auto_map
    (folder / "example.mp4").unlink()  # the card's snippet runs on it
    assert sorted(missing_hub_files(folder)) == ["example.mp4", "token_merging.py"]
    (folder / "README.md").unlink()
    assert sorted(missing_hub_files(folder)) == ["README.md", "token_merging.py"]
    with pytest.raises(ValueError, match="not empty"):
        prepare(trained_folder, folder)


def test_converted_folder_gets_a_processor_from_a_tokenizer(trained_folder, tmp_path):
    converted = tmp_path / "converted"  # what hbi-convert writes: the model only
    HBIModel.from_pretrained(trained_folder).save_pretrained(converted)
    HBIProcessor.from_pretrained(trained_folder).tokenizer.save_pretrained(tmp_path / "tokenizer")
    folder = prepare(converted, tmp_path / "upload", tokenizer=str(tmp_path / "tokenizer"))
    assert missing_hub_files(folder) == []
    assert "Not measured here yet." in (folder / "README.md").read_text()


def test_hub_folder_loads_without_the_package(trained_folder, tmp_path):
    folder = prepare(trained_folder, tmp_path / "upload")
    video = write_mp4(tmp_path / "clip.mp4", textured_frames(12, 32, 32), fps=4)
    captions = ["a cat", "a dog runs"]
    processor = HBIProcessor.from_pretrained(trained_folder)
    model = HBIModel.from_pretrained(trained_folder).eval()
    inputs = processor(text=captions, videos=[str(video)], return_tensors="pt")
    torch.manual_seed(0)
    expected = model(**inputs).logits_per_text
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        for item in (model, processor, processor.video_processor):
            assert type(item).__module__.startswith("transformers_modules"), type(item).__module__
        inputs = processor(text={captions!r}, videos=[{str(video)!r}], return_tensors="pt")
        torch.manual_seed(0)
        logits = model(**inputs).logits_per_text
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.allclose(logits, expected, atol=1e-5), (logits, expected)
        print("remote code ok")
        """
    )
    run_without_package(script, tmp_path)




def test_conversion_published_with_the_official_card(trained_folder, tmp_path):
    converted = tmp_path / "converted"  # what hbi-convert writes: the model only
    HBIModel.from_pretrained(trained_folder).save_pretrained(converted)
    HBIProcessor.from_pretrained(trained_folder).tokenizer.save_pretrained(tmp_path / "tokenizer")
    official = MODEL_CARDS / "hbi-msrvtt-vit-b-32.md"
    folder = push_command([str(converted), "--repo-id", "someone/hbi-msrvtt", "--tokenizer", str(tmp_path / "tokenizer"),
                           "--card", str(official), "--output", str(tmp_path / "upload"), "--dry-run"])
    card = (folder / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata == yaml.safe_load(official.read_text().split("---\n")[1])  # paper figures, base model, license
    assert card.split("<!-- hbi:use -->")[0] == official.read_text().split("<!-- hbi:use -->")[0]
    assert 'from_pretrained("someone/hbi-msrvtt"' in card and missing_hub_files(folder) == []
    with pytest.raises(FileNotFoundError, match="no model card at"):
        push_command([str(converted), "--repo-id", "someone/x", "--tokenizer", str(tmp_path / "tokenizer"),
                      "--card", str(tmp_path / "absent.md"), "--output", str(tmp_path / "again"), "--dry-run"])


def test_push_card_for_a_model_from_nowhere(tmp_path):
    """A model built in memory, pushed into a repository without a card: a new HBI card, no claim
    of origin, with the synthetic example clip."""
    working = tmp_path / "push"
    model = HBIModel(tiny_config())
    model.save_pretrained(working)
    (working / "README.md").write_text(ModelCard.from_template(
        ModelCardData(library_name="transformers", tags=["mine"]),
        model_description="This is the model card of a 🤗 transformers model that has been pushed on the Hub. "
                          "This model card has been automatically generated.",
    ).content)  # as transformers writes it for a repository without a card
    write_push_card(model, working, "someone/fresh")
    card = (working / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert "base_model" not in metadata and "mine" in metadata["tags"] and "hbi" in metadata["tags"]
    assert "An HBI text-video retrieval model." in card and "from scratch" not in card
    assert 'from_pretrained("someone/fresh"' in card and json.loads((working / "example.json").read_text())["caption"]
    assert "at most 24 tokens (start\nand end tokens included) of the tokenizer pushed with the processor" in card
