"""Builds OpenAI CLIP's tokenizer without hub access, from the BPE merges file that ships inside
the `open-clip-torch` wheel (`open_clip/bpe_simple_vocab_16e6.txt.gz`, MIT licence).

The vocabulary is derived from the merges the way CLIP derives it: the 256 byte symbols, the same
with the end-of-word marker `</w>`, one token per merge (the first 48,894), then the start and end
of text tokens: 49,408 ids, identical to `openai/clip-vit-base-patch32`'s.
"""

import gzip
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from transformers import CLIPTokenizer

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_NUM_MERGES = 48894
START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"


def byte_symbols() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: one printable unicode character per byte value, in CLIP's
    vocabulary order (printable bytes as themselves, the others mapped past U+0100)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    remapped = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(remapped))]


def read_bpe_merges(bpe_path: str | Path, num_merges: int = CLIP_NUM_MERGES) -> list[tuple[str, str]]:
    """The first `num_merges` merges of a CLIP BPE file (gzip; its first line is a header)."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1 : num_merges + 1]
    merges = [tuple(line.split()) for line in lines]
    malformed = [i for i, merge in enumerate(merges) if len(merge) != 2]
    if malformed or len(merges) != num_merges:
        raise ValueError(
            f"{bpe_path} is not a CLIP BPE merges file: expected {num_merges} merges of two symbols, "
            f"got {len(merges)} lines ({len(malformed)} malformed)"
        )
    return merges


def clip_vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = byte_symbols()
    tokens = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    return {token: index for index, token in enumerate(tokens)}


def build_clip_tokenizer(bpe_path: str | Path, num_merges: int = CLIP_NUM_MERGES) -> CLIPTokenizer:
    """CLIP's tokenizer over the merges of `bpe_path`. It pads with id 0 as the official HBI layout
    does (docs/video_input.md#quirk-padding-with-id-0), so that `skip_special_tokens` drops that
    padding when decoding; `split_special_tokens` keeps a "!" typed in a caption an ordinary byte
    symbol rather than the padding token (and reads the literal start / end of text strings as text,
    docs/video_input.md#quirk-padding-with-id-0)."""
    merges = read_bpe_merges(bpe_path, num_merges)
    return CLIPTokenizer(vocab=clip_vocabulary(merges), merges=merges, pad_token=byte_symbols()[0],
                         split_special_tokens=True)


def extract_bpe_from_wheel(wheel_path: str | Path, output_path: str | Path) -> Path:
    with zipfile.ZipFile(wheel_path) as wheel:
        if BPE_MEMBER not in wheel.namelist():
            raise ValueError(f"{wheel_path} does not contain {BPE_MEMBER}")
        Path(output_path).write_bytes(wheel.read(BPE_MEMBER))
    return Path(output_path)


def download_open_clip_bpe(output_path: str | Path) -> Path:
    """Fetches the `open-clip-torch` wheel from the package index (no model hub needed) and takes
    the BPE file out of it."""
    with tempfile.TemporaryDirectory() as download_dir:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", download_dir,
             "open-clip-torch"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wheels = sorted(Path(download_dir).glob("open_clip_torch-*.whl"))
        if not wheels:
            raise FileNotFoundError("pip download of open-clip-torch produced no wheel")
        return extract_bpe_from_wheel(wheels[-1], output_path)

