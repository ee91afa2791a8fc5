"""Two-stage search against the exhaustive HBI ranking on a synthetic index.

    python benchmarks/bench_search.py                          # 20k and 100k entries
    python benchmarks/bench_search.py --sizes 20000 --pools 100 1000 --features iid

Frame embeddings are generated straight into an index (`index_from_features`, no video is
decoded): D = 512, 12 frames (3 to 12 valid), with the scoring model of benchmarks/bench_eval.py
(tiny towers, the real HBI heads at D = 512, official retrieval level weights 1, 0, 0 unless
`--level-weights`). Queries are 24-word token embeddings (5 to 24 valid).

`--features topics` (default) gives the features the structure that makes retrieval possible:
videos share one of size / 10 topics, each video's frames scatter around its own centre near
the topic, and each query's content words scatter around one video's centre (its other words are
noise). `--features iid` draws everything independently: no structure, the worst case for any
first stage.

For each pool size, recall@k is the share of the exhaustive top-k that the two-stage search
returns (averaged over `--queries` queries scored together), and top-1 the share of queries whose
best hit is the same. Latency is one query at a time, on the same index in the same run: every
round times each configuration once, in turn, and the table gives each one's fastest of
`--repeats` rounds (on a shared machine, the run least disturbed by others).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import build_model  # the scoring model of the evaluation benchmark

from hbi_transformers.models.hbi.modeling_hbi import HBITextOutput, HBIVideoOutput
from hbi_transformers.apps.search import index_from_features, search_by_text_features

DIM, FRAMES, WORDS = 512, 12, 24
VIDEOS_PER_TOPIC = 10


def synthetic_features(size: int, num_queries: int, structure: str, seed: int = 0):
    """Videos `[size, frames, D]` with masks, and queries `[num_queries, words, D]` with masks."""
    generator = torch.Generator().manual_seed(seed)
    frame_counts = torch.randint(3, FRAMES + 1, (size,), generator=generator)
    word_counts = torch.randint(5, WORDS + 1, (num_queries,), generator=generator)
    video_mask = (torch.arange(FRAMES)[None] < frame_counts[:, None]).long()
    text_mask = (torch.arange(WORDS)[None] < word_counts[:, None]).long()
    if structure == "iid":
        video_embeds = torch.randn(size, FRAMES, DIM, generator=generator)
        text_embeds = torch.randn(num_queries, WORDS, DIM, generator=generator)
    else:
        topics = torch.randn(max(1, size // VIDEOS_PER_TOPIC), DIM, generator=generator)
        centres = topics[torch.randint(0, len(topics), (size,), generator=generator)]
        centres += 0.8 * torch.randn(size, DIM, generator=generator)
        video_embeds = centres[:, None] + torch.randn(size, FRAMES, DIM, generator=generator)
        targets = torch.randint(0, size, (num_queries,), generator=generator)
        text_embeds = torch.randn(num_queries, WORDS, DIM, generator=generator)
        content_words = torch.rand(num_queries, WORDS, generator=generator) < 0.5
        text_embeds[content_words] += centres[targets][:, None].expand(-1, WORDS, -1)[content_words]
    # Padding frames keep their values, as the temporal module's output does (a zero frame has no direction).
    videos = HBIVideoOutput(video_embeds=video_embeds, video_mask=video_mask)
    texts = HBITextOutput(text_embeds=text_embeds, attention_mask=text_mask)
    return videos, texts


def top_ids(hits) -> list[list[str]]:
    return [[hit.file for hit in query_hits] for query_hits in hits]


def agreement(reference: list[list[str]], candidate: list[list[str]], top_k: int) -> tuple[float, float]:
    recall = statistics.mean(len(set(ref) & set(cand)) / top_k for ref, cand in zip(reference, candidate))
    top1 = statistics.mean(float(ref[0] == cand[0]) for ref, cand in zip(reference, candidate))
    return 100 * recall, 100 * top1


def query(texts: HBITextOutput, index: int) -> HBITextOutput:
    return HBITextOutput(text_embeds=texts.text_embeds[index : index + 1], attention_mask=texts.attention_mask[index : index + 1])


def latencies_ms(index, texts, model, top_k, chunk_size, pools, repeats) -> dict:
    """Fastest single-query time of each pool (None: exhaustive), configurations interleaved."""
    times = {pool: [] for pool in pools}
    for repeat in range(repeats):
        one_query = query(texts, repeat % texts.text_embeds.shape[0])
        for pool in pools:
            start = time.perf_counter()
            search_by_text_features(index, one_query, model, top_k, chunk_size, pool)
            times[pool].append(time.perf_counter() - start)
    return {pool: 1000 * min(pool_times) for pool, pool_times in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--pools", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--queries", type=int, default=32, help="queries scored together for recall")
    parser.add_argument("--repeats", type=int, default=7, help="rounds of single-query runs; the fastest counts")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--features", choices=["topics", "iid"], default="topics")
    parser.add_argument("--level-weights", type=float, nargs=3, default=[1.0, 0.0, 0.0])
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    model = build_model().to(args.device)
    model.config.level_weights = args.level_weights
    print(f"device {args.device}, {torch.get_num_threads()} CPU threads, features {args.features}, D {DIM}, "
          f"{FRAMES} frames, level weights {args.level_weights}, top-{args.top_k}, {args.queries} queries for recall, "
          f"latency: fastest of {args.repeats} interleaved rounds of single queries")
    header = f"{'entries':>8}  {'search':<10}  {'pool':>6}  {'recall@' + str(args.top_k):>9}  {'top-1':>6}  " \
             f"{'ms/query':>9}  {'speed-up':>8}"
    print(header)
    for size in args.sizes:
        videos, texts = synthetic_features(size, args.queries, args.features)
        texts = HBITextOutput(text_embeds=texts.text_embeds.to(args.device),
                              attention_mask=texts.attention_mask.to(args.device))
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            index = index_from_features(Path(folder) / "index", model, videos, [str(i) for i in range(size)],
                                        shard_size=args.shard_size)
            del videos
            build_seconds = time.perf_counter() - start
            pools = [pool for pool in args.pools if pool <= size]
            exhaustive = top_ids(search_by_text_features(index, texts, model, args.top_k, args.chunk_size))
            milliseconds = latencies_ms(index, texts, model, args.top_k, args.chunk_size, [None, *pools], args.repeats)
            print(f"{size:>8}  {'exhaustive':<10}  {'-':>6}  {100.0:>9.1f}  {100.0:>6.1f}  {milliseconds[None]:>9.0f}  "
                  f"{1.0:>7.1f}x")
            for pool in pools:
                two_stage = top_ids(search_by_text_features(index, texts, model, args.top_k, args.chunk_size, pool))
                recall, top1 = agreement(exhaustive, two_stage, args.top_k)
                print(f"{size:>8}  {'two-stage':<10}  {pool:>6}  {recall:>9.1f}  {top1:>6.1f}  {milliseconds[pool]:>9.0f}  "
                      f"{milliseconds[None] / milliseconds[pool]:>7.1f}x")
            print(f"{'':>8}  (index of {size} entries written in {build_seconds:.1f} s)")


if __name__ == "__main__":
    main()
