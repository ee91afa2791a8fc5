"""What a saved model carries as remote code: exactly the modules of the model folder
(hbi_transformers/models/hbi), unchanged, loadable without the package."""

import textwrap
from pathlib import Path

import torch
from safetensors.torch import save_file
from conftest import make_batch, run_without_package, tiny_clip_tokenizer, tiny_config

from hbi_transformers import HBIForVideoQuestionAnswering, HBIModel, HBIProcessor, HBIVideoProcessor
from hbi_transformers.models.hbi import configuration_hbi
from hbi_transformers.models.hbi.configuration_hbi import video_qa_config

MODEL_FOLDER = Path(configuration_hbi.__file__).parent
# Not remote code: the package's exports, and the converter, which reads official checkpoints.
NOT_SHIPPED = {"__init__.py", "convert_hbi_original_to_hf.py"}


def test_saved_code_is_exactly_the_model_folder(tmp_path):
    torch.manual_seed(0)
    HBIModel(tiny_config()).save_pretrained(tmp_path / "retrieval")
    HBIForVideoQuestionAnswering(video_qa_config(tiny_config(), num_labels=3)).save_pretrained(tmp_path / "qa")
    HBIProcessor(HBIVideoProcessor(), tiny_clip_tokenizer(tmp_path), max_words=8).save_pretrained(tmp_path / "processor")

    shipped = {path.name: path for folder in ("retrieval", "qa", "processor") for path in (tmp_path / folder).glob("*.py")}
    expected = {path.name for path in MODEL_FOLDER.glob("*.py")} - NOT_SHIPPED
    assert set(shipped) == expected
    for name, path in shipped.items():
        assert path.read_text() == (MODEL_FOLDER / name).read_text(), name


def test_saved_qa_model_loads_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = HBIForVideoQuestionAnswering(video_qa_config(tiny_config(), num_labels=3)).eval()
    model.save_pretrained(tmp_path / "qa")
    batch = make_batch()
    torch.save(batch, tmp_path / "batch.pt")
    torch.manual_seed(0)
    with torch.no_grad():
        torch.save(model(**batch).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForVisualQuestionAnswering
        model = AutoModelForVisualQuestionAnswering.from_pretrained({str(tmp_path / "qa")!r}, trust_remote_code=True)
        model.eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        batch = torch.load({str(tmp_path / "batch.pt")!r})
        torch.manual_seed(0)
        with torch.no_grad():
            logits = model(**batch).logits
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.allclose(logits, expected, atol=1e-6), (logits - expected).abs().max()
        print("remote code ok")
        """
    )
    run_without_package(script, tmp_path)


def test_folders_saved_by_version_0_1_0_still_load(tmp_path):
    """0.1.0 kept the QA model's body at the top level (`text_model.*`, `levels.*`, ...) beside
    `answer_heads.*`; those keys load into the body under `hbi.`."""
    torch.manual_seed(0)
    model = HBIForVideoQuestionAnswering(video_qa_config(tiny_config(), num_labels=3))
    model.save_pretrained(tmp_path / "current")
    legacy_state = {key.removeprefix("hbi."): tensor for key, tensor in model.state_dict().items()}
    assert {"text_model.embeddings.token_embedding.weight", "answer_heads.0.classifier.fc_in.weight"} <= set(legacy_state)
    (tmp_path / "legacy").mkdir()
    model.config.save_pretrained(tmp_path / "legacy")
    legacy_weights = {key: tensor.contiguous() for key, tensor in legacy_state.items()}
    save_file(legacy_weights, str(tmp_path / "legacy" / "model.safetensors"), metadata={"format": "pt"})
    loaded, info = HBIForVideoQuestionAnswering.from_pretrained(tmp_path / "legacy", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert not any(parameter.requires_grad for parameter in loaded.hbi.banzhaf_teacher.parameters())
    # The retrieval class reads the body of either layout.
    for folder in ("legacy", "current"):
        body, body_info = HBIModel.from_pretrained(tmp_path / folder, output_loading_info=True)
        assert not body_info["missing_keys"]
        assert {key.split(".")[0] for key in body_info["unexpected_keys"]} == {"answer_heads"}
        for key, tensor in model.hbi.state_dict().items():
            assert torch.equal(body.state_dict()[key], tensor), (folder, key)
