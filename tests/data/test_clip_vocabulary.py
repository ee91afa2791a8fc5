import gzip
import subprocess
import sys
import zipfile

import pytest

from hbi_transformers.data.clip_vocabulary import (
    BPE_MEMBER,
    build_clip_tokenizer,
    byte_symbols,
    extract_bpe_from_wheel,
)

TINY_MERGES = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]


def write_bpe(path, merges):
    lines = ["#version: tiny"] + [f"{a} {b}" for a, b in merges]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def test_byte_symbols_cover_every_byte_once():
    symbols = byte_symbols()
    assert len(symbols) == len(set(symbols)) == 256
    assert symbols[:3] == ["!", '"', "#"]
    # The space byte is remapped past U+0100, as in GPT-2 / CLIP.
    assert chr(ord(" ") + 256) not in symbols[:188] and "Ġ" in symbols


def test_tiny_bpe_gives_clip_layout(tmp_path):
    tokenizer = build_clip_tokenizer(write_bpe(tmp_path / "bpe.txt.gz", TINY_MERGES), num_merges=4)
    vocab = tokenizer.get_vocab()
    assert len(vocab) == 512 + 4 + 2
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["ca"] == 512 and vocab["cat</w>"] == 513 and vocab["dog</w>"] == 515
    assert vocab["<|startoftext|>"] == 516 and vocab["<|endoftext|>"] == 517
    assert tokenizer("Cat  DOG").input_ids == [516, 513, 515, 517]


def test_too_few_merges_is_an_error(tmp_path):
    path = write_bpe(tmp_path / "bpe.txt.gz", TINY_MERGES)
    with pytest.raises(ValueError, match="not a CLIP BPE merges file"):
        build_clip_tokenizer(path, num_merges=10)


def test_command_refuses_a_wheel_without_clip_merges(tmp_path):
    bpe = write_bpe(tmp_path / "bpe.txt.gz", TINY_MERGES)
    wheel = tmp_path / "open_clip_torch-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(bpe, BPE_MEMBER)
    assert extract_bpe_from_wheel(wheel, tmp_path / "out.gz").read_bytes() == bpe.read_bytes()
    # A tiny merges file is not CLIP's: the command must refuse to build from it.
    result = subprocess.run(
        [sys.executable, "-m", "hbi_transformers.cli.build_tokenizer", "--bpe", str(wheel), "--output",
         str(tmp_path / "tokenizer")],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "not a CLIP BPE merges file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "tokenizer").exists()
