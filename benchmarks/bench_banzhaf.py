"""Throughput of the Monte Carlo Banzhaf interaction labels (docs/banzhaf.md).

    python benchmarks/bench_banzhaf.py
    python benchmarks/bench_banzhaf.py --batch 32 --words 64 --frames 64 --samples 100 --loop-pairs 1
    python benchmarks/bench_banzhaf.py --device cuda

Times `monte_carlo_banzhaf_interaction` (official semantics) on a batch of random pairs shaped
like MSR-VTT's (near-uniform weights, as the frozen random weight heads of estimator pre-training
give), against a straightforward loop over (word, frame, sample) that evaluates the four
coalition values of the official semantics with tensor operations over the batch, as the
official generator does. The loop is far too slow to run in full, so it runs only the first
--loop-pairs (word, frame) pairs with every sample, and its rate is extrapolated per label (every
pair costs the same). It uses the same coalitions as the vectorised run, and the benchmark checks
that both give the same labels on those pairs.
"""

import argparse
import resource
import time

import torch

from hbi_transformers.training.banzhaf_labels import LABEL_SIMILARITY_SCALE, draw_coalitions, monte_carlo_banzhaf_interaction
from hbi_transformers.models.hbi.wti import MASKED_WEIGHT_LOGIT


def random_game(batch: int, words: int, frames: int, device: torch.device, seed: int):
    """Similarities around CLIP's typical 0.25, random caption and video lengths, weights from
    small logits softmaxed over the real tokens (as the estimator passes them)."""
    generator = torch.Generator().manual_seed(seed)
    word_counts = torch.randint(max(1, words // 3), words + 1, (batch,), generator=generator)
    frame_counts = torch.randint(max(1, frames // 2), frames + 1, (batch,), generator=generator)
    text_mask = (torch.arange(words)[None] < word_counts[:, None]).long()
    video_mask = (torch.arange(frames)[None] < frame_counts[:, None]).long()
    sim_map = 0.25 + 0.05 * torch.randn(batch, words, frames, generator=generator)
    sim_map = sim_map * text_mask[:, :, None] * video_mask[:, None, :]
    text_logits = 0.02 * torch.randn(batch, words, generator=generator)
    video_logits = 0.02 * torch.randn(batch, frames, generator=generator)
    text_weight = torch.softmax(text_logits.masked_fill(text_mask == 0, MASKED_WEIGHT_LOGIT), -1)
    video_weight = torch.softmax(video_logits.masked_fill(video_mask == 0, MASKED_WEIGHT_LOGIT), -1)
    return [tensor.to(device) for tensor in (sim_map, text_mask, video_mask, text_weight, video_weight)]


def wti_value(cell_map, text_logits, video_logits):
    """WTI similarity of a [batch, words, frames] map whose cells outside the coalition are 0."""
    t2v = (torch.softmax(text_logits, -1) * cell_map.max(-1).values).sum(-1)
    v2t = (torch.softmax(video_logits, -1) * cell_map.max(-2).values).sum(-1)
    return (t2v + v2t) / 2


def loop_labels(sim_map, text_mask, video_mask, text_weight, video_weight, word_members, frame_members, pairs):
    """Official-semantics labels of the given (word, frame) pairs, one coalition at a time."""
    scaled = sim_map * LABEL_SIMILARITY_SCALE
    labels = {}
    for i, j in pairs:
        total = torch.zeros(sim_map.shape[0], device=sim_map.device)
        for sample in range(word_members.shape[0]):
            words_in = word_members[sample] & (text_mask != 0)
            frames_in = frame_members[sample] & (video_mask != 0)
            words_in[:, i], frames_in[:, j] = False, False
            words_with_i, frames_with_j = words_in.clone(), frames_in.clone()
            words_with_i[:, i], frames_with_j[:, j] = True, True
            coalition_map = scaled * words_in[:, :, None] * frames_in[:, None, :]
            text_logits = text_weight.masked_fill(~words_in, MASKED_WEIGHT_LOGIT)
            video_logits = video_weight.masked_fill(~frames_in, MASKED_WEIGHT_LOGIT)
            value = wti_value(coalition_map, text_logits, video_logits)
            # Official v(C + {i, j}): only the cell (i, j) joins; mixed softmax of the
            # coalition's re-softmaxed weights with the raw weights of i and j.
            pair_map = coalition_map.clone()
            pair_map[:, i, j] = scaled[:, i, j]
            mixed_text = torch.softmax(text_logits, -1).masked_fill(~words_in, MASKED_WEIGHT_LOGIT)
            mixed_video = torch.softmax(video_logits, -1).masked_fill(~frames_in, MASKED_WEIGHT_LOGIT)
            mixed_text[:, i], mixed_video[:, j] = text_weight[:, i], video_weight[:, j]
            value_with_pair = wti_value(pair_map, mixed_text, mixed_video)
            value_with_word = wti_value(
                scaled * words_with_i[:, :, None] * frames_in[:, None, :],
                text_weight.masked_fill(~words_with_i, MASKED_WEIGHT_LOGIT),
                video_logits,
            )
            value_with_frame = wti_value(
                scaled * words_in[:, :, None] * frames_with_j[:, None, :],
                text_logits,
                video_weight.masked_fill(~frames_with_j, MASKED_WEIGHT_LOGIT),
            )
            total += value_with_pair - value_with_word - value_with_frame + value
        labels[i, j] = total / word_members.shape[0] * text_mask[:, i] * video_mask[:, j]
    return labels


def peak_memory_reset(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_increase(device: torch.device, start: int) -> int:
    """Peak bytes above `start`: the CUDA allocator's peak on GPU; on CPU, the growth of the
    process's peak resident set (a lower bound when an earlier peak was higher)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--words", type=int, default=24)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--samples", type=int, default=100, help="coalitions per label")
    parser.add_argument("--loop-pairs", type=int, default=2, help="(word, frame) pairs the loop runs")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each version (best counts)")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: from the memory budget")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    game = random_game(args.batch, args.words, args.frames, device, args.seed)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    coalitions = draw_coalitions(args.samples, args.batch, args.words, args.frames, generator=generator, device=device)
    labels_per_batch = args.batch * args.words * args.frames

    def vectorised():
        return monte_carlo_banzhaf_interaction(
            *game, num_samples=args.samples, chunk_size=args.chunk_size, coalitions=coalitions
        )

    # Memory first, before the loop or repeated runs raise the process's peak.
    memory_start = peak_memory_reset(device)
    labels = vectorised()
    synchronize(device)
    peak_bytes = peak_memory_increase(device, memory_start)

    # Interleaved, best of each: the machine's load then weighs on both alike.
    pairs = [divmod(index, args.frames) for index in range(min(args.loop_pairs, args.words * args.frames))]
    vectorised_timings, loop_timings = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        vectorised()
        synchronize(device)
        vectorised_timings.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference = loop_labels(*game, *coalitions, pairs)
        synchronize(device)
        loop_timings.append(time.perf_counter() - start)
    vectorised_seconds, loop_seconds = min(vectorised_timings), min(loop_timings)
    difference = max((labels[:, i, j] - reference[i, j]).abs().max().item() for i, j in pairs)

    vectorised_rate = labels_per_batch / vectorised_seconds
    loop_rate = args.batch * len(pairs) / loop_seconds
    print(
        f"device {device}, torch threads {torch.get_num_threads()}; batch {args.batch}, {args.words} words x "
        f"{args.frames} frames, {args.samples} samples, official semantics; best of {args.repeats} interleaved runs"
    )
    print(
        f"vectorised: {vectorised_rate:12,.0f} labels/s  ({vectorised_seconds * 1e3:.1f} ms per batch, "
        f"{vectorised_seconds / args.batch * 1e3:.2f} ms per pair); "
        f"peak memory +{peak_bytes / 2**20:.1f} MiB"
    )
    print(
        f"loop:       {loop_rate:12,.0f} labels/s  ({len(pairs)} of {args.words * args.frames} (word, frame) pairs "
        f"x {args.samples} samples in {loop_seconds:.3f} s, extrapolated: "
        f"{loop_seconds / len(pairs) * args.words * args.frames / args.batch:.3f} s per pair)"
    )
    print(
        f"speed-up:   {vectorised_rate / loop_rate:,.0f}x; "
        f"max |label difference| on the looped pairs {difference:.2e}"
    )


if __name__ == "__main__":
    main()
