"""`hbi-make-corpus`: render the offline video-text corpus of coloured shapes (captions, QA and
splits); see `hbi_transformers.data.synthetic`.

    hbi-make-corpus --output synthetic-corpus
    hbi-make-corpus --output /tmp/shapes --clips 200 --size 64 64 --workers 2

A folder that already holds a complete corpus with the same settings is left as it is.
"""

import argparse
import json
import time

from ..data.synthetic import make_synthetic_corpus

DESCRIPTION = (
    "Render the offline video-text corpus of coloured shapes (H.264 clips, captions, closed-answer "
    "questions, train / validation / test splits); a folder that already holds a complete corpus with the"
    " same settings is left as it is."
)


def run(argv: list[str] | None = None) -> dict:
    """Runs the command; returns the corpus's paths."""
    parser = argparse.ArgumentParser(
        prog="hbi-make-corpus", description=DESCRIPTION, epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="synthetic-corpus", help="folder to write the corpus to")
    parser.add_argument("--clips", type=int, default=2000, help="number of clips over all splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(96, 96), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--seconds", type=float, nargs=2, default=(4, 8), metavar=("SHORTEST", "LONGEST"))
    parser.add_argument("--captions", type=int, default=3, help="captions per clip")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: all CPUs)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    paths = make_synthetic_corpus(
        args.output,
        num_clips=args.clips,
        seed=args.seed,
        size=tuple(args.size),
        fps=args.fps,
        seconds=tuple(args.seconds),
        captions_per_clip=args.captions,
        num_workers=args.workers,
    )
    elapsed = time.perf_counter() - started
    with open(paths["manifest"], encoding="utf-8") as handle:
        counts = json.load(handle)["counts"]
    for split, clips in counts["clips"].items():
        print(
            f"{split:>10}: {clips} clips, {counts['captions'][split]} captions, {counts['questions'][split]} questions"
        )
    print(f"{counts['answers']} answers in {paths['answers']}")
    print(f"corpus in {paths['output_dir']} ({elapsed:.1f} s)")
    return paths


def main() -> None:
    run()


if __name__ == "__main__":
    main()
