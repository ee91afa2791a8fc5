"""Training clips per second on an accelerator, fed from video files and from prepared frames, and
the share of each step spent waiting for data. Prepared to run in a few minutes on a lent GPU:

    python benchmarks/gpu_training_throughput.py                  # ViT-B/32 shape, bf16, cuda
    python benchmarks/gpu_training_throughput.py --tiny --device cpu --clips 8 --steps 3   # smoke run

It writes `--clips` H.264 clips shaped like MSR-VTT's (30 s, 320 x 240, 30 fps), prepares them
(`prepare_corpus`, raw frames), then trains a randomly initialised HBI of the official ViT-B/32
shape (12 frames, 32 words, bf16 autocast; the HBI heads stay fp32 as officially) for `--steps`
steps after `--warmup` from each source, with `--workers` DataLoader workers decoding. A step's
wait is the time `next(loader)` blocks; its compute runs from there to the optimiser step
(synchronised). Medians over steps are printed.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_video_io import write_clip  # noqa: E402

from hbi_transformers.data import HBIDataCollator, clip_vocabulary, load_video_text_dataset, prepare_corpus  # noqa: E402
from hbi_transformers.models.hbi import HBIConfig, HBIModel, HBIProcessor, HBIVideoProcessor  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

CAPTIONS = ("a man is cooking in a kitchen", "a red car drives down a road", "people dance on a stage at night")


def model_config(tiny: bool, tokenizer) -> HBIConfig:
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if not tiny:
        return HBIConfig(text_config=special)  # otherwise the official ViT-B/32 shape
    tower = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    return HBIConfig(text_config=dict(tower, **special, vocab_size=len(tokenizer), max_position_embeddings=32),
                     vision_config=dict(tower, image_size=224, patch_size=32), projection_dim=64,
                     temporal_num_layers=2)


def train_steps(model, loader, optimizer, device, steps: int, warmup: int, dtype) -> tuple[list[float], list[float]]:
    """(wait seconds, compute seconds) of each measured step."""
    waits, computes = [], []
    iterator = iter(loader)
    for step in range(warmup + steps):
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        waited = time.perf_counter() - start
        inputs = {key: batch[key].to(device, non_blocking=True)
                  for key in ("input_ids", "attention_mask", "pixel_values_videos", "video_mask")}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**inputs, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            waits.append(waited)
            computes.append(time.perf_counter() - start - waited)
    return waits, computes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a small model, for a smoke run on a CPU")
    parser.add_argument("--dir", default=None, help="keep the clips and the prepared corpus here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gpu_training_throughput"))
    (root / "videos").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(args.clips):
        path = root / "videos" / f"clip{index:03d}.mp4"
        if not path.exists():
            write_clip(path, 30, 30, 320, 240, gop=None, seed=index)
        records.append({"video": str(path), "video_id": f"clip{index:03d}", "caption": CAPTIONS[index % len(CAPTIONS)]})
    tokenizer = CLIPTokenizer(vocab=clip_vocabulary([]), merges=[])
    processor = HBIProcessor(HBIVideoProcessor(), tokenizer, max_words=32)  # 12 frames at 1 fps, 224 x 224
    started = time.perf_counter()
    prepare_corpus(records, processor.video_processor, root / "prepared", num_workers=args.workers, progress=False)
    print(f"{args.clips} clips prepared in {time.perf_counter() - started:.1f} s with {args.workers} processes")

    torch.manual_seed(0)
    model = HBIModel(model_config(args.tiny, tokenizer)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
    collator = HBIDataCollator(processor, do_augment=False)
    print(f"{'source':<14} {'clips/s':>9} {'wait share':>11} {'wait s':>8} {'compute s':>10}  "
          f"(batch {args.batch_size}, {args.workers} workers, {device}, {dtype or 'fp32'})")
    for name, source in (("video files", records), ("prepared", str(root / "prepared"))):
        dataset = load_video_text_dataset(source) if isinstance(source, str) else source
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=args.workers, collate_fn=collator, pin_memory=device.type == "cuda",
                            persistent_workers=True, prefetch_factor=4)
        waits, computes = train_steps(model, loader, optimizer, device, args.steps, args.warmup, dtype)
        wait, compute = statistics.median(waits), statistics.median(computes)
        print(f"{name:<14} {args.batch_size / (wait + compute):9.1f} {wait / (wait + compute):11.1%} "
              f"{wait:8.3f} {compute:10.3f}")
        del loader


if __name__ == "__main__":
    main()
