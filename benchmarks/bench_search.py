"""The LanceDB search index on synthetic features: query latency (p50 / p95), recall@k of the
two-stage search against exhaustive HBI scoring of the whole index, build rate and disk size.

    python benchmarks/bench_search.py                                   # 100k entries
    python benchmarks/bench_search.py --sizes 1000000 --pools 100 200
    python benchmarks/bench_search.py --sizes 1000000 --keep DIR --index-type ivf_rq --rq-bits 2
    python benchmarks/bench_search.py --sizes 20000 --features iid
    python benchmarks/bench_search.py --sizes 1000000 --keep /data/bench   # build once, query again later

Frame embeddings are generated straight into an index (`index_from_features`, no video is
decoded, tokens stored as float16): D = 512, 12 frames (3 to 12 valid), with the scoring model
of benchmarks/bench_eval.py (tiny towers, the real HBI heads at D = 512, official retrieval level
weights 1, 0, 0 unless `--level-weights`). Queries are 24-word token embeddings (5 to 24 valid).
Features are generated and written in blocks, so memory holds one block, not the index.

`--features topics` (default) gives the features the structure that makes retrieval possible:
videos share one of size / 10 topics, each video's frames scatter around its own centre near
the topic, and each query's content words scatter around one video's centre (its other words are
noise). `--features iid` draws everything independently: no structure, the worst case for any
first stage.

For each pool size, recall@k is the share of the exhaustive top-k that the two-stage search
returns (over `--queries` queries scored together), top-1 the share of queries whose best hit is
the same. Latency is one query at a time (`--repeats` of them, configurations interleaved), as
p50 and p95; run with `taskset -c 0,1` for 2 cores. `--keep DIR` builds each size's index in DIR
and reuses it when it is already there, whole. `--index-type` replaces the index's first-stage
vector index by another kind of the engine's (the comparison behind the choice of 4-bit RaBitQ
codes: IVF with `sqrt(n)` partitions, or RaBitQ with `--rq-bits`), searched with `--nprobes` /
`--refine-factor`.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import build_model  # the scoring model of the evaluation benchmark

from hbi_transformers.models.hbi.modeling_hbi import HBITextOutput, HBIVideoOutput
from hbi_transformers.apps.search import VideoIndex, search_by_text_features
from hbi_transformers.apps.search.index import remove_index
from hbi_transformers.apps.search.writing import RQ_BITS
from hbi_transformers.apps.search.rank import DEFAULT_NPROBES, DEFAULT_REFINE_FACTOR

DIM, FRAMES, WORDS = 512, 12, 24
VIDEOS_PER_TOPIC = 10


def synthetic_features(size: int, num_queries: int, structure: str, seed: int = 0, block: int = 20000):
    """Videos in blocks (`HBIVideoOutput` of `[block, frames, D]`), and queries
    `[num_queries, words, D]` with masks."""
    generator = torch.Generator().manual_seed(seed)
    word_counts = torch.randint(5, WORDS + 1, (num_queries,), generator=generator)
    text_mask = (torch.arange(WORDS)[None] < word_counts[:, None]).long()
    topics = torch.randn(max(1, size // VIDEOS_PER_TOPIC), DIM, generator=generator)
    # Each video's centre is made from its own seed: queries can target any video of any block.
    def centre(video):
        own = torch.Generator().manual_seed(seed * 1_000_003 + video)
        topic = int(torch.randint(0, len(topics), (1,), generator=own))
        return topics[topic] + 0.8 * torch.randn(DIM, generator=own)

    def blocks():
        for start in range(0, size, block):
            count = min(block, size - start)
            own = torch.Generator().manual_seed(seed + 1 + start)
            frame_counts = torch.randint(3, FRAMES + 1, (count,), generator=own)
            video_mask = (torch.arange(FRAMES)[None] < frame_counts[:, None]).long()
            if structure == "iid":
                video_embeds = torch.randn(count, FRAMES, DIM, generator=own)
            else:
                centres = torch.stack([centre(start + i) for i in range(count)])
                video_embeds = centres[:, None] + torch.randn(count, FRAMES, DIM, generator=own)
            # Padding frames keep their values, as the temporal module's output does.
            yield HBIVideoOutput(video_embeds=video_embeds, video_mask=video_mask)

    text_embeds = torch.randn(num_queries, WORDS, DIM, generator=generator)
    if structure != "iid":
        targets = torch.randint(0, size, (num_queries,), generator=generator).tolist()
        content_words = torch.rand(num_queries, WORDS, generator=generator) < 0.5
        target_centres = torch.stack([centre(video) for video in targets])
        text_embeds[content_words] += target_centres[:, None].expand(-1, WORDS, -1)[content_words]
    return blocks(), HBITextOutput(text_embeds=text_embeds, attention_mask=text_mask)


def build(folder: Path, model, blocks, size: int, batch_rows: int, ann_min_rows: int):
    """The index of all blocks: written block by block through one writer."""
    from hbi_transformers.apps.search.writing import IndexWriter, entry_tensors, new_info
    from hbi_transformers.training.model_identity import model_identity

    with IndexWriter(folder) as writer:
        writer.attach(new_info(model_identity(model), None, None, "float16"), None)
        position = 0
        for videos in blocks:
            for start in range(0, videos.video_embeds.shape[0], batch_rows):
                embeds = videos.video_embeds[start : start + batch_rows].to(model.device)
                names = [str(position + i) for i in range(embeds.shape[0])]
                writer.add([{"file": name, "start": None, "end": None, "timestamps": None} for name in names],
                           entry_tensors(model, embeds, videos.video_mask[start : start + batch_rows].to(model.device)))
                writer.pending_files.update({name: dict.fromkeys(("size", "mtime_ns", "content_hash", "duration"))
                                             for name in names})
                writer.flush()
                position += len(names)
        writer.commit_info()
        writer.maintain_ann_index(ann_min_rows)
    return VideoIndex.open(folder)


def replace_vector_index(index: VideoIndex, kind: str, rq_bits: int) -> VideoIndex:
    """The index with its first-stage vector index rebuilt as `kind` (sqrt(n) partitions for
    IVF_PQ and IVF_FLAT, 64 PQ sub-vectors; the index's own partitions and `rq_bits` for RaBitQ)."""
    from lancedb.index import IvfFlat, IvfPq

    from hbi_transformers.apps.search.writing import create_ann_index

    if kind == "ivf_rq":
        create_ann_index(index.dataset, rq_bits, replace=True)
    else:
        partitions = max(1, round(len(index) ** 0.5))
        config = {"ivf_pq": lambda: IvfPq(distance_type="dot", num_partitions=partitions, num_sub_vectors=DIM // 8),
                  "ivf_flat": lambda: IvfFlat(distance_type="dot", num_partitions=partitions)}[kind]()
        index.table.create_index("pooled", config=config, replace=True)
    return VideoIndex.open(index.index_dir)


def disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def current_version_bytes(index: VideoIndex) -> int:
    """The bytes the index's current version reads: its data files and vector index (the rest of
    the folder is older versions, which LanceDB keeps for their readers, 7 days by default)."""
    table_dir = index.index_dir / "entries.lance"
    data = sum(data_file.file_size_bytes for fragment in index.dataset.get_fragments()
               for data_file in fragment.metadata.files)
    vector_index = sum(disk_bytes(table_dir / "_indices" / str(segment.uuid))
                       for described in index.dataset.describe_indices() for segment in described.segments)
    return data + vector_index


def top_ids(hits) -> list[list[str]]:
    return [[hit.file for hit in query_hits] for query_hits in hits]


def agreement(reference: list[list[str]], candidate: list[list[str]], top_k: int) -> tuple[float, float]:
    recall = statistics.mean(len(set(ref) & set(cand)) / top_k for ref, cand in zip(reference, candidate))
    top1 = statistics.mean(float(ref[0] == cand[0]) for ref, cand in zip(reference, candidate))
    return 100 * recall, 100 * top1


def query(texts: HBITextOutput, index: int) -> HBITextOutput:
    return HBITextOutput(text_embeds=texts.text_embeds[index : index + 1], attention_mask=texts.attention_mask[index : index + 1])


def latencies_ms(index, texts, model, top_k, chunk_size, configurations, repeats, first_stage) -> dict:
    """p50 and p95 single-query times of each pool size (None: exhaustive), configurations
    interleaved."""
    times = {configuration: [] for configuration in configurations}
    for repeat in range(repeats):
        one_query = query(texts, repeat % texts.text_embeds.shape[0])
        for pool in configurations:
            if pool is None and repeat >= 3:
                continue  # seconds each: three are enough to show the gap
            start = time.perf_counter()
            search_by_text_features(index, one_query, model, top_k, chunk_size, pool, **first_stage)
            times[pool].append(1000 * (time.perf_counter() - start))
    return {configuration: (statistics.median(values),
                            statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0])
            for configuration, values in times.items()}


def built_index(folder: Path, model, size: int, features: str, queries: int, batch_rows: int, ann_min_rows: int):
    """The index of `size` synthetic entries in `folder` (reused when it is there, whole), the
    queries, and the build's seconds (None when reused)."""
    blocks, texts = synthetic_features(size, queries, features)
    if (folder / "index.json").exists():
        index = VideoIndex.open(folder)
        if len(index) == size:
            return index, texts, None
        remove_index(folder)
    start = time.perf_counter()
    index = build(folder, model, blocks, size, batch_rows, ann_min_rows)
    return index, texts, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100000])
    parser.add_argument("--pools", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--queries", type=int, default=32, help="queries scored together for recall")
    parser.add_argument("--repeats", type=int, default=40, help="single-query runs per configuration")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--features", choices=["topics", "iid"], default="topics")
    parser.add_argument("--level-weights", type=float, nargs=3, default=[1.0, 0.0, 0.0])
    parser.add_argument("--batch-rows", type=int, default=4096)
    parser.add_argument("--ann-min-rows", type=int, default=50000)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--index-type", choices=["ivf_rq", "ivf_pq", "ivf_flat"], default=None,
                        help="rebuild the first-stage vector index as this kind (default: as built)")
    parser.add_argument("--rq-bits", type=int, default=RQ_BITS, help="bits per dimension of --index-type ivf_rq")
    parser.add_argument("--nprobes", type=int, default=DEFAULT_NPROBES)
    parser.add_argument("--refine-factor", type=int, default=DEFAULT_REFINE_FACTOR)
    parser.add_argument("--folder", default=None, help="where to build (default: a temporary folder)")
    parser.add_argument("--keep", default=None, help="build in (and reuse from) KEEP/index-SIZE-FEATURES")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parts", action="store_true",
                        help="also time a query's parts: the code scan alone, with the candidates read, the whole query")
    args = parser.parse_args()

    model = build_model().to(args.device)
    model.config.level_weights = args.level_weights
    print(f"device {args.device}, {torch.get_num_threads()} CPU threads, features {args.features}, D {DIM}, "
          f"{FRAMES} frames, float16 tokens, level weights {args.level_weights}, top-{args.top_k}, "
          f"{args.queries} queries for recall, latency over {args.repeats} single queries", flush=True)
    for size in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.folder) as folder:
            folder = Path(args.keep or folder) / f"index-{size}-{args.features}"
            index, texts, build_seconds = built_index(folder, model, size, args.features, args.queries,
                                                      args.batch_rows, args.ann_min_rows)
            if args.index_type:
                start = time.perf_counter()
                index = replace_vector_index(index, args.index_type, args.rq_bits)
                print(f"  {args.index_type} vector index built in {time.perf_counter() - start:.0f} s", flush=True)
            first_stage = {"nprobes": args.nprobes, "refine_factor": args.refine_factor}
            texts = HBITextOutput(text_embeds=texts.text_embeds.to(args.device),
                                  attention_mask=texts.attention_mask.to(args.device))
            built = "reused" if build_seconds is None else f"built in {build_seconds:.0f} s ({size / build_seconds:.0f} entries/s)"
            print(f"{size} entries: {built}, {disk_bytes(folder) / 2**30:.2f} GiB on disk, of which the current "
                  f"version {current_version_bytes(index) / 2**30:.2f} GiB, ANN index: {index.has_ann_index()} "
                  f"({sum(len(described.segments) for described in index.dataset.describe_indices())} segments, "
                  f"engine threads {os.environ.get('LANCE_CPU_THREADS')})",
                  flush=True)
            start = time.perf_counter()
            exhaustive = top_ids(search_by_text_features(index, texts, model, args.top_k, args.chunk_size))
            print(f"  exhaustive HBI scoring of {args.queries} queries: {time.perf_counter() - start:.0f} s", flush=True)
            configurations = [None] + [pool for pool in args.pools if pool <= size]
            milliseconds = latencies_ms(index, texts, model, args.top_k, args.chunk_size, configurations, args.repeats,
                                        first_stage)
            print(f"{'entries':>8}  {'search':<10}  {'pool':>6}  {'recall@' + str(args.top_k):>9}  "
                  f"{'top-1':>6}  {'p50 ms':>8}  {'p95 ms':>8}")
            p50, p95 = milliseconds[None]
            print(f"{size:>8}  {'exhaustive':<10}  {'-':>6}  {100.0:>9.1f}  {100.0:>6.1f}  {p50:>8.0f}  {p95:>8.0f}")
            for pool in configurations[1:]:
                two_stage = top_ids(search_by_text_features(index, texts, model, args.top_k, args.chunk_size, pool,
                                                            **first_stage))
                recall, top1 = agreement(exhaustive, two_stage, args.top_k)
                p50, p95 = milliseconds[pool]
                print(f"{size:>8}  {'two-stage':<10}  {pool:>6}  {recall:>9.1f}  {top1:>6.1f}  {p50:>8.1f}  "
                      f"{p95:>8.1f}", flush=True)
            print(f"  reading 100 random rows by position (checked): {read_rows_ms(index, args.repeats):.1f} ms p50")
            if args.parts and index.has_ann_index():
                parts = query_parts_ms(index, texts, model, args.pools[0], args.top_k, args.chunk_size)
                for name, milliseconds in parts.items():
                    print(f"  {name}: {milliseconds:.1f} ms p50")


def query_parts_ms(index: VideoIndex, texts: HBITextOutput, model, pool: int, top_k: int, chunk_size: int) -> dict:
    """Where a two-stage query goes, each part timed on its own over every query after 4 warm-up
    ones (medians): the engine's code scan alone (row ids only), the scan with the candidates'
    rows read and checked, the whole query."""
    from hbi_transformers.apps.search.identity import pooled_embeddings

    with torch.no_grad():
        entity = model.text_levels(texts.text_embeds, texts.attention_mask, num_levels=1)[0]
    vectors = pooled_embeddings(entity).float().cpu().numpy()

    def scan_only(position):
        return index.nearest_ids(vectors[position], pool, None, None)

    parts = {
        f"code scan alone ({pool} row ids)": scan_only,
        f"scan, {pool} rows read and checked": lambda position: index.take_rows(scan_only(position)),
        "whole two-stage query": lambda position: search_by_text_features(index, query(texts, position), model, top_k,
                                                                           chunk_size, pool),
    }
    medians = {}
    for name, run in parts.items():
        times = []
        for repeat in range(4 + len(vectors)):
            start = time.perf_counter()
            run(repeat % len(vectors))
            times.append(1000 * (time.perf_counter() - start))
        medians[name] = statistics.median(times[4:])
    return medians


def read_rows_ms(index: VideoIndex, repeats: int, rows: int = 100) -> float:
    """The second stage's read of its candidates alone, on rows drawn at random."""
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        positions = sorted(torch.randperm(len(index), generator=generator)[:rows].tolist())
        start = time.perf_counter()
        index.take(positions)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


if __name__ == "__main__":
    main()
