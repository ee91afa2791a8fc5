"""`hbi-index`: index a folder of videos for `hbi-search`, or bring an index up to date."""

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..apps.search import IndexReport, build_index
from ..apps.search.index import DEFAULT_ANN_MIN_ROWS, DEFAULT_BATCH_ROWS
from .arguments import ParallelismArguments, configure_parallelism
from .loading import load_model_and_processor

DESCRIPTION = (
    "Index a folder of videos for hbi-search: encode every video under VIDEO_DIR (recursively), whole or in "
    "fixed windows, with an HBI model into a LanceDB table. Re-running it on the same folder encodes only "
    "new and changed files and drops deleted ones; files that fail to decode are reported and skipped."
)


@dataclass
class IndexArguments:
    model: str = field(metadata={"help": "The HBI model (trained or converted folder, or hub name) to encode with."})
    output: str = field(metadata={"help": "The index folder (created, or brought up to date)."})
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "CLIP tokenizer folder (see hbi-build-tokenizer), when the model folder has no processor files; "
            "None: the model's own processor or tokenizer."
        },
    )
    segment_seconds: int | None = field(
        default=None,
        metadata={"help": "Index fixed windows of this many seconds instead of whole videos; None: whole videos."},
    )
    batch_size: int = field(default=8, metadata={"help": "Videos (or windows) encoded at once."})
    batch_rows: int = field(default=DEFAULT_BATCH_ROWS, metadata={"help": "Entries per commit."})
    storage_dtype: str = field(default="float32", metadata={"help": "float32 or float16 (half the disk) tokens."})
    ann_min_rows: int = field(
        default=DEFAULT_ANN_MIN_ROWS,
        metadata={"help": "Build the first stage's vector index (RaBitQ codes) from this many entries on."},
    )
    rebuild: bool = field(
        default=False,
        metadata={"help": "Delete the index in OUTPUT (of any version, damaged or not) and encode everything again."},
    )
    hash_contents: bool = field(
        default=False, metadata={"help": "Also compare file contents, so touched but unchanged files are kept."}
    )
    device: str | None = field(default=None, metadata={"help": "None: cuda when available, else cpu."})


def run(argv: list[str] | None = None) -> IndexReport:
    """Runs the command; returns what `build_index` did."""
    parser = HfArgumentParser((IndexArguments, ParallelismArguments), prog="hbi-index", description=DESCRIPTION)
    parser.add_argument("video_dir", help="Folder of videos, searched recursively.")
    args, parallelism_args, positional = parser.parse_args_into_dataclasses(args=argv)
    configure_parallelism(parallelism_args, argv)
    model, processor = load_model_and_processor(args.model, args.tokenizer, args.device)
    report = build_index(
        positional.video_dir, model, processor, args.output, batch_size=args.batch_size,
        segment_seconds=args.segment_seconds, batch_rows=args.batch_rows, hash_contents=args.hash_contents,
        storage_dtype=args.storage_dtype, ann_min_rows=args.ann_min_rows, rebuild=args.rebuild,
    )
    print(report.summary())
    return report


def main() -> None:
    run()


if __name__ == "__main__":
    main()
