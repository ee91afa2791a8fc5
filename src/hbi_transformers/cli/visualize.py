"""`hbi-visualize`: draw the word x frame Banzhaf interaction maps of a caption and a video."""

import argparse
from pathlib import Path

from ..apps.visualization import SOURCES, interaction_maps, plot_interaction_maps
from ..models.hbi import HBIModel, HBIProcessor


def run(argv: list[str] | None = None) -> Path:
    """Runs the command; returns the PNG's path."""
    parser = argparse.ArgumentParser(
        prog="hbi-visualize",
        description="Draw the word x frame Banzhaf interaction maps (entity, action and event levels) "
        "of a caption and a video as a PNG."
    )
    parser.add_argument("--model", required=True, help="An HBI folder holding the model and its processor.")
    parser.add_argument("--video", required=True, help="The video file.")
    parser.add_argument("--caption", required=True, help="The text.")
    parser.add_argument("--output", required=True, help="The PNG to write.")
    parser.add_argument(
        "--source", choices=SOURCES, default="estimator", help="Where the values come from (default: %(default)s)."
    )
    parser.add_argument(
        "--num-samples", type=int, default=200, help="Monte Carlo coalitions per value (default: %(default)s)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the clustering noise and the Monte Carlo draws.")
    args = parser.parse_args(argv)

    model = HBIModel.from_pretrained(args.model).eval()
    processor = HBIProcessor.from_pretrained(args.model)
    maps = interaction_maps(
        model, processor, args.video, args.caption, source=args.source, num_samples=args.num_samples, seed=args.seed
    )
    output_path = plot_interaction_maps(maps, args.output)
    print(output_path)
    return output_path

def main() -> None:
    run()


if __name__ == "__main__":
    main()
