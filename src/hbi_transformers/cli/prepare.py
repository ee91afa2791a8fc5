"""`hbi-prepare`: decode a corpus's clips once into a prepared-frame corpus, which training,
evaluation, label writing and indexing then read instead of decoding the videos every epoch.

    hbi-prepare --annotations train.jsonl --video_root videos --output_dir prepared/train
    hbi-prepare --dataset msrvtt --annotations_dir msrvtt --video_root msrvtt/videos --split eval \\
        --output_dir prepared/msrvtt-test
    hbi-train --train_annotations prepared/train --eval_annotations prepared/test ...

Every distinct clip is decoded once, in one process per core, sampled as the processor samples it
(sampling rule, segment, --max_frames) and resized by its resize step; crop, RandAugment and
normalisation still run at every read. Run it again with the same options to finish an
interrupted preparation: the shards already written are kept. Format: docs/video_input.md.
"""

import argparse
import time

import torch

from ..data import prepare_corpus
from ..data.prepared import FRAME_FORMATS
from ..models.hbi import HBIProcessor, HBIVideoProcessor
from .loading import frame_sampling_for, is_hbi_checkpoint, load_corpus

DESCRIPTION = (
    "Decode every clip of a corpus once (all cores) into Parquet shards of the frames the video processor "
    "samples, resized for it: training and evaluation then read frames instead of decoding videos. Resumes an "
    "interrupted run; videos that fail to decode are named, counted and left out."
)


def _video_processor(args) -> HBIVideoProcessor:
    """The model folder's video processor, or one built from the options."""
    if args.model_name_or_path is not None:
        if not is_hbi_checkpoint(args.model_name_or_path):
            raise ValueError(f"{args.model_name_or_path} is not an HBI model folder with a processor: give --image_size")
        return HBIProcessor.from_pretrained(args.model_name_or_path).video_processor
    return HBIVideoProcessor(
        max_frames=args.max_frames,
        video_framerate=args.video_framerate,
        frame_sampling=frame_sampling_for(args.dataset, args.frame_sampling),
        size={"shortest_edge": args.image_size},
        crop_size={"height": args.image_size, "width": args.image_size},
    )


def run(argv: list[str] | None = None) -> dict:
    """Runs the command; returns the prepared corpus's manifest."""
    parser = argparse.ArgumentParser(
        prog="hbi-prepare", description=DESCRIPTION, epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, help="folder of the prepared corpus")
    parser.add_argument("--dataset", default="generic", help="generic, msrvtt, activitynet or didemo")
    parser.add_argument("--annotations", default=None,
                        help="generic: annotation file (.jsonl/.json/.csv), webdataset shards or hub dataset")
    parser.add_argument("--annotations_dir", default=None, help="msrvtt / activitynet / didemo annotation folder")
    parser.add_argument("--video_root", default=None, help="folder the videos are found in")
    parser.add_argument("--split", default="train", choices=("train", "eval"),
                        help="official datasets: the training or the evaluation split")
    parser.add_argument("--msrvtt_train_split", default="9k", help="msrvtt: the 9k (official) or 7k training split")
    parser.add_argument("--hub_split", default="train", help="hub dataset: the split to prepare")
    parser.add_argument("--model_name_or_path", default=None,
                        help="an HBI model folder whose processor to prepare for (else the options below)")
    parser.add_argument("--image_size", type=int, default=224, help="the vision tower's input size")
    parser.add_argument("--max_frames", type=int, default=12, help="frames per video (64 for ActivityNet)")
    parser.add_argument("--video_framerate", type=float, default=1.0, help="frames sampled per second")
    parser.add_argument("--frame_sampling", default=None,
                        help="fps or per_second; default per_second for activitynet / didemo, else fps")
    parser.add_argument("--frame_format", default="raw", choices=FRAME_FORMATS,
                        help="raw: exact pixels, fastest to read, largest; png: exact pixels, smaller, slower to "
                             "read; jpeg: lossy (see docs/video_input.md for the measured difference)")
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument("--shard_size", type=int, default=256, help="clips per Parquet shard")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per core)")
    parser.add_argument("--max_bad_fraction", type=float, default=0.05, help="largest tolerated share of bad videos")
    args = parser.parse_args(argv)

    # The worker processes use the cores; the main process only writes shards.
    torch.set_num_threads(1)
    video_processor = _video_processor(args)
    if args.dataset == "generic" and args.annotations is None:
        raise ValueError("nothing to prepare: give --annotations or an official --dataset")
    corpus = load_corpus(
        args.dataset, args.split, args.annotations, args.annotations_dir, args.video_root,
        max_bad_fraction=args.max_bad_fraction, msrvtt_train_split=args.msrvtt_train_split, hub_split=args.hub_split,
    )
    started = time.perf_counter()
    manifest = prepare_corpus(
        corpus, video_processor, args.output_dir, frame_format=args.frame_format, jpeg_quality=args.jpeg_quality,
        shard_size=args.shard_size, num_workers=args.workers, max_bad_fraction=args.max_bad_fraction,
    )
    bad = manifest["bad_videos"]
    print(f"{manifest['num_clips']} clips of {manifest['num_records']} records in {args.output_dir} "
          f"({time.perf_counter() - started:.1f} s); {len(bad)} videos skipped"
          + "".join(f"\n  {name}: {reason}" for name, reason in bad[:10])
          + (f"\n  ... and {len(bad) - 10} more (all in the manifest)" if len(bad) > 10 else ""))
    return manifest


def main() -> None:
    run()


if __name__ == "__main__":
    main()
