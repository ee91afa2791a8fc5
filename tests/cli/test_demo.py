"""A shortened offline demonstration (`hbi-demo`, also `hbi-train` with no arguments) completes end to end."""

import json

from PIL import Image

from hbi_transformers import HBIModel, HBIProcessor
from hbi_transformers.cli.demo import run as demo_command


def test_shortened_default_run(tmp_path, capsys):
    output_dir = tmp_path / "demo"
    summary = demo_command([
        "--output_dir", str(output_dir), "--num_clips", "24", "--hidden_size", "64", "--num_layers", "1",
        "--image_size", "32", "--max_frames", "6", "--train_epochs", "1", "--estimator_epochs", "1",
        "--estimator_samples", "4", "--batch_size", "8", "--tokenizer_name_or_path", str(tmp_path / "absent"),
    ])
    printed = capsys.readouterr().out
    assert "untrained" in printed and "trained" in printed and "R@1" in printed
    assert "event localisation over" in printed and "held-out MSE" in printed
    localisation = summary["localisation"]
    assert localisation["events"] > 0 and 0 < localisation["chance"] < 1
    assert summary["trained"]["t2v_num_queries"] == summary["untrained"]["t2v_num_queries"] > 0
    assert json.loads((output_dir / "metrics.json").read_text())["trained"] == summary["trained"]
    assert "untrained" in (output_dir / "metrics.txt").read_text()
    assert "model-index" in (output_dir / "README.md").read_text()
    with Image.open(output_dir / "interaction.png") as image:
        assert image.format == "PNG" and image.width > 200
    model = HBIModel.from_pretrained(output_dir)
    processor = HBIProcessor.from_pretrained(output_dir)
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert (output_dir / "estimator" / "banzhaf_estimator.safetensors").exists()
