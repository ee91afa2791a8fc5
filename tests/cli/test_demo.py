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


def test_trained_tokenizer_has_a_fixed_layout(tmp_path):
    """The BPE trainer gives the end-of-word symbols it adds ids in a different order each run; the
    demo puts them in a fixed order (start / end of text, symbols in byte order, merges in merge
    order), so that runs with the same merges start from the same embeddings."""
    from transformers import CLIPTokenizer

    from hbi_transformers.apps.demo import DemoSettings, caption_tokenizer
    from hbi_transformers.data import clip_vocabulary

    captions = [
        "a red square moves left, then the blue circle grows.",
        "the green triangle spins and a yellow star shrinks",
        "an orange heart jumps up; then a purple cross turns white",
        "a white disk fades out, and the black box slides right",
    ] * 5
    settings = DemoSettings(tokenizer_name_or_path=str(tmp_path / "absent"))
    base_order = CLIPTokenizer(vocab=clip_vocabulary([]), merges=[]).get_vocab()
    symbol_ids = []
    for _ in range(3):
        tokenizer = caption_tokenizer(settings, captions)
        vocab = tokenizer.get_vocab()
        merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
        merged = ["".join(merge.split(" ") if isinstance(merge, str) else merge) for merge in merges]
        ordered = sorted(vocab, key=vocab.get)
        symbols = ordered[2 : len(ordered) - len(merged)]
        assert ordered[:2] == ["<|startoftext|>", "<|endoftext|>"]
        assert symbols == sorted(symbols, key=base_order.get) and ordered[len(symbols) + 2 :] == merged
        symbol_ids.append({symbol: vocab[symbol] for symbol in symbols})
        ids = tokenizer(captions[0])["input_ids"]
        assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 1
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == captions[0].replace(" ", "")
    assert symbol_ids[0] == symbol_ids[1] == symbol_ids[2]
