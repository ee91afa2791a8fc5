"""`hbi-build-tokenizer`: build OpenAI CLIP's tokenizer (the ids of openai/clip-vit-base-patch32)
without hub access.

    hbi-build-tokenizer --output clip-tokenizer
    hbi-build-tokenizer --bpe bpe_simple_vocab_16e6.txt.gz --output clip-tokenizer
    hbi-build-tokenizer --bpe open_clip_torch-3.3.0-py3-none-any.whl --output clip-tokenizer

Without --bpe, the merges file is taken from the open-clip-torch wheel fetched with pip.
"""

import argparse
import tempfile
from pathlib import Path

from ..data.clip_vocabulary import build_clip_tokenizer, download_open_clip_bpe, extract_bpe_from_wheel

# The reference ids of openai/clip-vit-base-patch32 for one caption: a built tokenizer must agree.
REFERENCE_CAPTION = "a photo of a cat"
REFERENCE_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]

DESCRIPTION = (
    "Build OpenAI CLIP's tokenizer (the 49,408 ids of openai/clip-vit-base-patch32) without hub access, "
    "from the BPE merges file of the open-clip-torch wheel, check it on a reference caption and save it."
)


def run(argv: list[str] | None = None):
    """Runs the command; returns the tokenizer."""
    parser = argparse.ArgumentParser(
        prog="hbi-build-tokenizer", description=DESCRIPTION, epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz, or an open-clip-torch wheel")
    parser.add_argument("--output", type=Path, required=True, help="folder to save the tokenizer in")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        bpe_path = args.bpe
        if bpe_path is None:
            bpe_path = download_open_clip_bpe(Path(scratch) / "bpe.txt.gz")
        elif bpe_path.suffix == ".whl":
            bpe_path = extract_bpe_from_wheel(bpe_path, Path(scratch) / "bpe.txt.gz")
        try:
            tokenizer = build_clip_tokenizer(bpe_path)
        except ValueError as error:
            raise SystemExit(str(error)) from error

    ids = tokenizer(REFERENCE_CAPTION).input_ids
    if ids != REFERENCE_IDS:
        raise SystemExit(f"built tokenizer gives {ids} for {REFERENCE_CAPTION!r}, expected {REFERENCE_IDS}")
    tokenizer.save_pretrained(args.output)
    print(f"saved a CLIP tokenizer of {len(tokenizer)} tokens to {args.output}")
    return tokenizer


def main() -> None:
    run()


if __name__ == "__main__":
    main()
