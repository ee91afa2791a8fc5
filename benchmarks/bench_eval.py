"""Scoring a gallery: `HBIModel.compute_similarity` against the official evaluation's schedule.

    python benchmarks/bench_eval.py                 # N = 1000 and 3000
    python benchmarks/bench_eval.py --sizes 500 --official-pairs 40
    python benchmarks/bench_eval.py --level-weights 1 0 0   # the retrieval default, as evaluate() scores
    OMP_NUM_THREADS=1 python benchmarks/bench_eval.py --profile 256   # where one call's time goes

Both score N cached texts x N videos (D = 512, 24 words, 12 frames, level weights 1, 1, 1 unless
`--level-weights` says otherwise) with the same model. The official schedule scores every level
whatever the weights, as the official code does; compute_similarity scores the levels the fused
score weighs (`num_levels=config.num_fused_levels`, what `evaluate()` passes). The official evaluation loops over 32 x 32 chunk pairs
and merges the action / event tokens of both chunks again for every pair; `compute_similarity`
merges each item once, in length-sorted batches cut to their longest item, and scores blocks of
`--chunk-size` with one matrix product per block (padding tokens zeroed instead of masking the
`[a, b, t, v]` tensor). The official schedule is timed on its first `--official-pairs` chunk pairs
and extrapolated to all of them (it says so); compute_similarity is the median of `--repeats`
runs; its FLOPs are also counted as they would be with no padding at all (each item merged on its
own at its own length, word-frame products of valid tokens only), the floor of these exact
computations. Both workers also time one plain matmul of a block's shape in their own process
and give their time as a multiple of their FLOPs at that rate (the bound), which shows how much
of a slow round is the machine. Each gets one warm-up (a chunk pair; a 32 x 32 gallery) first.
The two are measured `--rounds` times, one after the other, and the speed-up is the median of the
rounds' ratios: on a shared machine both drift by a fifth over minutes, which a ratio taken within
one round cancels.
Each measurement runs in its own process, so its peak memory (resident set growth over the
cached features) is its own; for compute_similarity the note says how much of it is the N x N
output. `--profile N` instead prints torch.profiler's operator table of one compute_similarity
call (after a warm-up call), with the matrix products' share of the time and their GFLOP/s.
"""

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

OFFICIAL_CHUNK = 32


def build_model(level_weights=(1.0, 1.0, 1.0)):
    from hbi_transformers import HBIConfig, HBIModel

    tiny_tower = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1)
    config = HBIConfig(
        text_config=dict(tiny_tower, vocab_size=100, max_position_embeddings=32),
        vision_config=dict(tiny_tower, image_size=32, patch_size=16),
        projection_dim=512,
        level_weights=list(level_weights),
    )
    torch.manual_seed(0)
    return HBIModel(config).eval()


def cached_features(size: int, words: int, frames: int):
    from hbi_transformers import HBITextOutput, HBIVideoOutput

    generator = torch.Generator().manual_seed(size)
    text_lengths = torch.randint(5, words + 1, (size,), generator=generator)
    frame_counts = torch.randint(3, frames + 1, (size,), generator=generator)
    texts = HBITextOutput(
        text_embeds=torch.randn(size, words, 512, generator=generator),
        attention_mask=(torch.arange(words)[None] < text_lengths[:, None]).long(),
    )
    videos = HBIVideoOutput(
        video_embeds=torch.randn(size, frames, 512, generator=generator),
        video_mask=(torch.arange(frames)[None] < frame_counts[:, None]).long(),
    )
    return texts, videos


def official_wti(text, video):
    """WTI as the official code writes it: the `[a, b, t, v]` tensor by einsum, masked by
    multiplication, then the two maxima."""
    similarity = torch.einsum("atd,bvd->abtv", text.tokens, video.tokens)
    if text.mask is not None:
        similarity = similarity * text.mask[:, None, :, None]
        similarity = similarity * video.mask[None, :, None, :]
    t2v = torch.einsum("abt,at->ab", similarity.max(dim=-1).values, text.weights)
    v2t = torch.einsum("abv,bv->ab", similarity.max(dim=-2).values, video.weights)
    return (t2v + v2t) / 2.0


def official_schedule(model, texts, videos, max_pairs: int) -> tuple[float, float, int, int]:
    """Seconds and GFLOP of the matrix products for the first `max_pairs` chunk pairs, pairs done,
    pairs in all."""
    from torch.utils.flop_counter import FlopCounterMode

    size = texts.text_embeds.shape[0]
    starts = range(0, size, OFFICIAL_CHUNK)
    pairs = [(t, v) for t in starts for v in starts]
    run_pairs(model, texts, videos, pairs[:1])  # warm-up, as compute_similarity gets
    begin = time.perf_counter()
    run_pairs(model, texts, videos, pairs[:max_pairs])
    seconds = time.perf_counter() - begin
    with FlopCounterMode(display=False) as counter:
        run_pairs(model, texts, videos, pairs[:max_pairs])
    return seconds, counter.get_total_flops() / 1e9, min(max_pairs, len(pairs)), len(pairs)


def run_pairs(model, texts, videos, pairs):
    with torch.no_grad():
        for text_start, video_start in pairs:
            text_slice = slice(text_start, text_start + OFFICIAL_CHUNK)
            video_slice = slice(video_start, video_start + OFFICIAL_CHUNK)
            text_levels = model.text_levels(texts.text_embeds[text_slice], texts.attention_mask[text_slice])
            video_levels = model.video_levels(videos.video_embeds[video_slice], videos.video_mask[video_slice])
            sum(official_wti(t, v) for t, v in zip(text_levels, video_levels))


def tokens_per_item(model, words: int, frames: int) -> int:
    """Tokens one text plus one video holds over the levels scored."""
    total = 0
    for count, side in ((words, "text"), (frames, "video")):
        total += count
        for level in model.levels[1 : model.config.num_fused_levels]:
            count = getattr(level, f"{side}_merge").merge.num_clusters(count)
            total += count
    return total


def matrix_product_gflop(model, texts, videos, chunk_size: int) -> float:
    """GFLOP of every matrix product and convolution one compute_similarity call runs (the
    level walk's layers and the word-frame products), counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.compute_similarity(texts, videos, chunk_size=chunk_size, num_levels=model.config.num_fused_levels)
    return counter.get_total_flops() / 1e9


def padding_free_gflop(model, texts, videos) -> float:
    """GFLOP of the same exact computation with no padding at all: compute_similarity's own merge
    with batches of one item (each cut to its own length), counted by torch's FLOP counter, plus
    the word-frame products of valid tokens only, counted from the merged levels."""
    from torch.utils.flop_counter import FlopCounterMode

    from hbi_transformers.models.hbi import modeling_hbi

    levels = model.config.num_fused_levels
    batch_size, modeling_hbi.SORTED_MERGE_BATCH = modeling_hbi.SORTED_MERGE_BATCH, 1
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            merged = [model._levels_merged_once(embeds, mask, side, modeling_hbi.OFFICIAL_MERGE_GROUP_SIZE, levels)
                      for side, embeds, mask in (("text", texts.text_embeds, texts.attention_mask),
                                                 ("video", videos.video_embeds, videos.video_mask))]
    finally:
        modeling_hbi.SORTED_MERGE_BATCH = batch_size

    def valid_tokens(level):
        return int(level.mask.sum()) if level.mask is not None else level.weights.numel()

    products = sum(valid_tokens(text) * valid_tokens(video) for text, video in zip(*merged))
    return (counter.get_total_flops() + 2 * texts.text_embeds.shape[-1] * products) / 1e9


def plain_matmul_gflops(rows: int, columns: int, dim: int = 512, repeats: int = 5) -> float:
    """GFLOP/s of one plain `[rows, dim] @ [dim, columns]` product here (median of `repeats`)."""
    left, right = torch.randn(rows, dim), torch.randn(columns, dim)
    left @ right.t()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        left @ right.t()
        times.append(time.perf_counter() - begin)
    return 2 * rows * columns * dim / sorted(times)[len(times) // 2] / 1e9


def resident_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def measure(method: str, size: int, args) -> dict:
    words, frames, chunk_size = args.words, args.frames, args.chunk_size
    torch.set_num_threads(torch.get_num_threads())
    model = build_model(args.level_weights)
    levels = model.config.num_fused_levels
    texts, videos = cached_features(size, words, frames)
    # Each side's bound, in its own process: how much of a slow round is the machine.
    rate = plain_matmul_gflops(chunk_size * words, chunk_size * frames)
    before = resident_mib()
    if method == "compute_similarity":
        warm_up = cached_features(OFFICIAL_CHUNK, words, frames)
        model.compute_similarity(*warm_up, chunk_size=chunk_size, num_levels=levels)
        times = []
        for _ in range(args.repeats):
            begin = time.perf_counter()
            model.compute_similarity(texts, videos, chunk_size=chunk_size, num_levels=levels)
            times.append(time.perf_counter() - begin)
        seconds = statistics.median(times)
        # The N x N results (fused + one per level) are the output, and each item's normalised
        # tokens at every level its representation: what remains is the blocks' working memory.
        output_mib = (1 + levels) * size * size * 4 / 2**20
        token_mib = size * tokens_per_item(model, words, frames) * 512 * 4 / 2**20
        note = f"of which {output_mib:.0f} MiB N x N scores and {token_mib:.0f} MiB level tokens"
        gflop = matrix_product_gflop(model, texts, videos, chunk_size)
        bound = gflop / rate
        note += f"; matrix products {gflop:.1f} GFLOP"
        # The same in every round: counted once.
        floor = padding_free_gflop(model, texts, videos) if args.count_padding_free else None
        note += f" ({floor:.1f} with no padding)" if floor else ""
        note += f", plain matmul {rate:.1f} GFLOP/s: bound {bound:.2f} s, time = {seconds / bound:.2f}x bound"
    else:
        floor = None
        measured, measured_gflop, done, total = official_schedule(model, texts, videos, args.official_pairs)
        seconds, gflop = measured * total / done, measured_gflop * total / done
        note = f"matrix products {gflop:.1f} GFLOP"
        note += f"; {done} of {total} chunk pairs timed and counted, extrapolated" if done < total else ""
        note += f"; plain matmul {rate:.1f} GFLOP/s: bound {gflop / rate:.1f} s, time = {seconds * rate / gflop:.2f}x bound"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "size": size, "seconds": seconds, "gflop": gflop,
            "padding_free_gflop": floor,
            "peak_growth_mib": max(peak - before, 0.0), "note": note}


def profile_compute_similarity(size: int, args) -> None:
    from torch.profiler import profile

    model = build_model(args.level_weights)
    texts, videos = cached_features(size, args.words, args.frames)
    levels = model.config.num_fused_levels
    model.compute_similarity(texts, videos, chunk_size=args.chunk_size, num_levels=levels)
    begin = time.perf_counter()
    with profile() as profiler:
        model.compute_similarity(texts, videos, chunk_size=args.chunk_size, num_levels=levels)
    seconds = time.perf_counter() - begin
    operators = profiler.key_averages()
    print(operators.table(sort_by="self_cpu_time_total", row_limit=15))
    products = sum(event.self_cpu_time_total for event in operators if event.key in ("aten::mm", "aten::addmm")) / 1e6
    total = sum(event.self_cpu_time_total for event in operators) / 1e6
    gflop = matrix_product_gflop(model, texts, videos, args.chunk_size)
    print(f"N = {size}, {torch.get_num_threads()} thread(s): {seconds:.2f} s profiled; matrix products (mm, addmm) "
          f"{products:.3f} s of {total:.3f} s in operators ({products / total:.0%}), {gflop:.1f} GFLOP at "
          f"{gflop / products:.0f} GFLOP/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--words", type=int, default=24)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--official-pairs", type=int, default=60, help="chunk pairs of the official schedule to time")
    parser.add_argument("--repeats", type=int, default=3, help="compute_similarity runs; the median is reported")
    parser.add_argument("--level-weights", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    parser.add_argument("--rounds", type=int, default=3, help="official / compute_similarity measurements in turn")
    parser.add_argument("--profile", type=int, metavar="N", help="operator table of one compute_similarity call at N")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--count-padding-free", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.profile:
        profile_compute_similarity(args.profile, args)
        return
    if args.worker:
        method, size = args.worker.split(":")
        print(json.dumps(measure(method, int(size), args)))
        return

    weights = ",".join(f"{weight:g}" for weight in args.level_weights)
    print(f"N texts x N videos, D 512, {args.words} words, {args.frames} frames, level weights {weights}; "
          f"{torch.get_num_threads()} threads")
    print(f"{'N':>6} {'round':>5} {'method':<22} {'seconds':>9} {'peak MiB':>9}  note")
    for size in args.sizes:
        ratios, padding_free = [], None
        for round_number in range(1, args.rounds + 1):
            results = {}
            for method in ("official_schedule", "compute_similarity"):
                command = [sys.executable, __file__, "--worker", f"{method}:{size}", "--words", str(args.words),
                           "--frames", str(args.frames), "--chunk-size", str(args.chunk_size),
                           "--official-pairs", str(args.official_pairs), "--repeats", str(args.repeats),
                           "--level-weights", *map(str, args.level_weights)]
                command += ["--count-padding-free"] if round_number == 1 else []
                result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                results[method] = result
                print(f"{size:>6} {round_number:>5} {method:<22} {result['seconds']:>9.2f} "
                      f"{result['peak_growth_mib']:>9.1f}  {result['note']}")
            official, ours = results["official_schedule"], results["compute_similarity"]
            ratios.append(official["seconds"] / ours["seconds"])
            padding_free = ours["padding_free_gflop"] or padding_free
        print(f"{size:>6} speed-up of compute_similarity: {statistics.median(ratios):.1f}x, median of {len(ratios)} "
              f"rounds ({min(ratios):.1f}x to {max(ratios):.1f}x; {math.ceil(size / OFFICIAL_CHUNK) ** 2} official "
              f"chunk pairs); its matrix products are {official['gflop'] / ours['gflop']:.1f}x fewer, "
              f"{official['gflop'] / padding_free:.1f}x with no padding at all")


if __name__ == "__main__":
    main()
