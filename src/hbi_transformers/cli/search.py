"""`hbi-search`: rank the entries of an `hbi-index` index for one or more captions."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from ..apps.search import SearchHit, VideoIndex, format_search_results, search, search_results_to_json
from ..apps.search.rank import DEFAULT_CHUNK_SIZE, DEFAULT_NPROBES, DEFAULT_REFINE_FACTOR
from .arguments import ParallelismArguments, configure_parallelism
from .loading import load_model_and_processor

DESCRIPTION = (
    "Search an hbi-index index by text: score its entries against each caption with the full HBI score (or, "
    "with --candidates, only the best entries by pooled embeddings) and print the best hits of each, with the "
    "best-matching moment of each hit, as a table or as JSON."
)


@dataclass
class SearchArguments:
    model: str | None = field(
        default=None, metadata={"help": "The HBI model folder or hub name; None: the one recorded in the index."}
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "CLIP tokenizer folder (see hbi-build-tokenizer), when the model folder has no processor files; "
            "None: the model's own processor, else the tokenizer recorded in the index."
        },
    )
    top_k: int = field(default=10, metadata={"help": "Hits per query."})
    candidates: int | None = field(
        default=None,
        metadata={
            "help": "Two-stage search: re-rank only this many pooled-embedding candidates; None: score every entry."
        },
    )
    nprobes: int | None = field(
        default=DEFAULT_NPROBES, metadata={"help": "First-stage index partitions scanned; None: every one."}
    )
    refine_factor: int | None = field(
        default=DEFAULT_REFINE_FACTOR,
        metadata={"help": "Approximate first-stage neighbours re-ranked on exact vectors, per candidate; None: none."},
    )
    chunk_size: int = field(default=DEFAULT_CHUNK_SIZE, metadata={"help": "Texts x videos per scoring block."})
    as_json: bool = field(default=False, metadata={"help": "Print JSON instead of a table.", "aliases": ["--json"]})
    device: str | None = field(default=None, metadata={"help": "None: cuda when available, else cpu."})


def run(argv: list[str] | None = None) -> list[list[SearchHit]]:
    """Runs the command; returns each query's hits, best first."""
    parser = HfArgumentParser((SearchArguments, ParallelismArguments), prog="hbi-search", description=DESCRIPTION)
    parser.add_argument("index", help="Index folder written by hbi-index.")
    parser.add_argument("queries", nargs="+", help="One or more captions.")
    args, parallelism_args, positional = parser.parse_args_into_dataclasses(args=argv)
    configure_parallelism(parallelism_args, argv)
    index = VideoIndex.open(positional.index)
    model_name = args.model or index.model_name_or_path
    if not model_name:
        raise SystemExit(f"the index at {positional.index} does not name its model: pass --model")
    recorded_tokenizer = (index.info.get("tokenizer") or {}).get("name_or_path")
    has_processor = (Path(model_name) / "processor_config.json").exists()
    tokenizer = args.tokenizer or (None if has_processor else recorded_tokenizer)
    model, processor = load_model_and_processor(model_name, tokenizer, args.device)
    results = search(
        positional.index, positional.queries, model, processor, top_k=args.top_k,
        chunk_size=args.chunk_size, candidates=args.candidates,
        nprobes=args.nprobes, refine_factor=args.refine_factor,
    )
    if args.as_json:
        print(json.dumps(search_results_to_json(positional.queries, results), indent=2))
    else:
        print(format_search_results(positional.queries, results))
    return results


def main() -> None:
    run()


if __name__ == "__main__":
    main()
