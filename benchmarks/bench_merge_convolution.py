"""The token-merge convolution two ways: torch's `conv1d` (what training and the forward run) and
`convolve_by_stacked_taps` (what gallery scoring runs), on float32 tokens of D = 512.

    OMP_NUM_THREADS=1 python benchmarks/bench_merge_convolution.py
    python benchmarks/bench_merge_convolution.py --items 64 --widths 4 7 13 25 --repeats 21

For each width: the median time of each (the two alternate, so that a drifting machine affects
both alike), their ratio, and each one's largest deviation from the same convolution in float64.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hbi_transformers.models.hbi.token_merging import convolve_by_stacked_taps

DIM = 512


def torch_convolution(tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv1d(tokens.transpose(1, 2), weight, padding=1).transpose(1, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64, help="items per batch (compute_similarity merges 64)")
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 7, 13, 25])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    # nn.Conv1d's default initialisation range, as the merge layers start.
    weight = (torch.rand(DIM, DIM, 3, generator=generator) * 2 - 1) / (3 * DIM) ** 0.5
    ways = {"torch conv1d": torch_convolution, "stacked taps": convolve_by_stacked_taps}
    print(f"{args.items} items, D = {DIM}, {torch.get_num_threads()} thread(s), medians of {args.repeats}")
    print(f"{'tokens':>6} | {'torch conv1d':>12} | {'stacked taps':>12} | {'ratio':>5} | max |error| vs float64")
    for width in args.widths:
        tokens = torch.randn(args.items, width, DIM, generator=generator)
        exact = torch_convolution(tokens.double(), weight.double())
        times = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, way in ways.items():
                begin = time.perf_counter()
                way(tokens, weight)
                times[name].append(time.perf_counter() - begin)
        medians = {name: statistics.median(values) for name, values in times.items()}
        errors = {name: (way(tokens, weight).double() - exact).abs().max().item() for name, way in ways.items()}
        print(f"{width:>6} | {medians['torch conv1d'] * 1e3:>9.2f} ms | {medians['stacked taps'] * 1e3:>9.2f} ms | "
              f"{medians['stacked taps'] / medians['torch conv1d']:>4.2f}x | "
              f"torch {errors['torch conv1d']:.1e}, taps {errors['stacked taps']:.1e}")


if __name__ == "__main__":
    main()
