"""A messy corpus trains to the end: the figures of the README's reliability section.

    python benchmarks/reliability_run.py [--clips 200] [--workdir /tmp/hbi-reliability]

Writes a corpus of tiny H.264 clips where 5% of the rows are bad, of 9 kinds (missing file, empty
file, truncated file, not a video, audio only, resolution change mid-stream, segment past the end,
blank caption, caption of the wrong type), four of them side by side so that one batch holds no
good video. A tiny HBI trains on it for 2 epochs, streamed, with 2 DataLoader workers, in a child
process that is killed with SIGKILL once its first checkpoint is complete; a second child resumes
from "latest" and trains to the end. Each child logs the clips of every batch it trains on; the
parent prints how often each good clip was trained on per epoch, the bad clips the trainer
counted, and the steps.
"""

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

BATCH_SIZE, EPOCHS, FPS = 4, 2, 4


def write_clip(path, frames, fps=FPS):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_audio_only(path):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())


def raw_h264(size) -> bytes:
    """An Annex B H.264 stream of frames of `size` pixels: it carries its own parameter sets, so
    two of them concatenated are one stream whose frames change size."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="h264") as output:
        stream = output.add_stream("libx264", rate=FPS)
        stream.width = stream.height = size
        stream.pix_fmt, stream.options = "yuv420p", {"bf": "0"}
        for index in range(4):
            output.mux(stream.encode(av.VideoFrame.from_ndarray(textured(size, index), format="rgb24")))
        output.mux(stream.encode())
    return buffer.getvalue()


def write_size_change(path):
    """32-pixel frames, then 48-pixel ones, remuxed into one mp4 track."""
    import av

    with av.open(io.BytesIO(raw_h264(32) + raw_h264(48)), format="h264") as source, av.open(str(path), "w") as output:
        stream = output.add_stream_from_template(source.streams.video[0])
        for index, packet in enumerate(packet for packet in source.demux(video=0) if packet.size):
            packet.pts = packet.dts = index
            packet.duration, packet.time_base, packet.stream = 1, Fraction(1, FPS), stream
            output.mux(packet)


def textured(size, index, seed=0):
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([(x * 5 + index * 20) % 256, (y * 7 + seed * 30) % 256, (x + y + seed * 50) % 256], -1).astype(np.uint8)


def make_corpus(root: Path, num_clips: int) -> tuple[Path, dict]:
    """Rows in order; returns the annotation file and the bad rows by kind."""
    root.mkdir(parents=True, exist_ok=True)
    bad = {16: "missing", 17: "empty file", 18: "not a video", 19: "audio only",  # one all-bad batch
           45: "truncated", 77: "resolution change", 101: "segment past the end", 133: "missing",
           150: "blank caption", 170: "caption of the wrong type"}
    rows = []
    for row in range(num_clips):
        name, kind = f"clip{row:04d}.mp4", bad.get(row)
        caption = f"shape {row % 7} moves {'left' if row % 2 else 'right'}"
        entry = {"video": name, "caption": caption}
        if kind in (None, "blank caption", "caption of the wrong type", "segment past the end", "truncated"):
            write_clip(root / name, np.stack([textured(32, index, seed=row) for index in range(8)]))
        if kind == "empty file":
            (root / name).write_bytes(b"")
        elif kind == "not a video":
            (root / name).write_text("this is a caption file, not a video\n" * 20)
        elif kind == "audio only":
            write_audio_only(root / name)
        elif kind == "resolution change":
            write_size_change(root / name)
        elif kind == "truncated":
            data = (root / name).read_bytes()
            (root / name).write_bytes(data[: len(data) // 2])
        elif kind == "segment past the end":
            entry.update(start=30, end=40)
        elif kind == "blank caption":
            entry["caption"] = "   "
        elif kind == "caption of the wrong type":
            entry["caption"] = {"en": caption}
        rows.append(entry)
    annotations = root / "train.jsonl"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return annotations, bad


def train(workdir: Path, resume: bool) -> None:
    """One child: trains, logging the clips of every trained batch with the step and epoch."""
    import torch

    torch.set_num_threads(1)
    from hbi_transformers import HBIConfig, HBIModel, HBIProcessor, HBIVideoProcessor
    from hbi_transformers.data import HBIDataCollator, build_clip_tokenizer, load_video_text_dataset
    from hbi_transformers.training import HBITrainer, HBITrainingArguments

    log = open(workdir / ("resumed.jsonl" if resume else "killed.jsonl"), "a")

    class LoggingTrainer(HBITrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            entry = {"step": self.state.global_step + 1, "epoch": int(self.state.epoch or 0),
                     "clips": inputs["video_index"].tolist()}
            log.write(json.dumps(entry) + "\n")
            log.flush()
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    tokenizer = build_clip_tokenizer(workdir / "bpe.txt.gz", num_merges=0)
    processor = HBIProcessor(HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                               max_frames=4, video_framerate=2), tokenizer, max_words=12)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = HBIConfig(
        text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=16,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0),
        vision_config=dict(tower, image_size=32, patch_size=16), projection_dim=32, temporal_num_layers=2,
        merge_attention_heads=2, banzhaf_estimator_width=8,
    )
    summary = json.loads((workdir / "corpus.json").read_text())
    steps_per_epoch = -(-summary["rows_loaded"] // BATCH_SIZE)
    arguments = HBITrainingArguments(
        output_dir=str(workdir / "run"), per_device_train_batch_size=BATCH_SIZE, max_steps=EPOCHS * steps_per_epoch,
        dataloader_num_workers=2, save_strategy="steps", save_steps=steps_per_epoch // 2, logging_steps=10,
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, learning_rate=1e-3, coef_lr=1.0,
    )
    trainer = LoggingTrainer(
        model=HBIModel(config), args=arguments,
        train_dataset=load_video_text_dataset(summary["annotations"], video_root=summary["root"], streaming=True),
        data_collator=HBIDataCollator(processor, max_bad_fraction=0.1), processing_class=processor,
    )
    trainer.train(resume_from_checkpoint="latest" if resume else None)
    (workdir / "report.json").write_text(json.dumps({
        "bad": [[item.name, item.reason] for item in trainer.video_counter.bad_items],
        "seen": trainer.video_counter.seen_items, "steps": trainer.state.global_step,
        "skipped_batches": trainer.skipped_batches, "steps_per_epoch": steps_per_epoch,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/hbi-reliability")
    parser.add_argument("--phase", choices=("first", "resume"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if args.phase:
        train(workdir, resume=args.phase == "resume")
        return

    import shutil

    from hbi_transformers.data import AnnotationReport, load_video_text_dataset, stable_video_index

    shutil.rmtree(workdir, ignore_errors=True)
    started = time.perf_counter()
    annotations, bad = make_corpus(workdir / "corpus", args.clips)
    import gzip

    with gzip.open(workdir / "bpe.txt.gz", "wt") as handle:
        handle.write("#version: none\n")
    report = AnnotationReport()
    rows = list(load_video_text_dataset(str(annotations), video_root=str(workdir / "corpus"), annotation_report=report))
    (workdir / "corpus.json").write_text(json.dumps({"annotations": str(annotations), "root": str(workdir / "corpus"),
                                                     "rows_loaded": len(rows)}))
    print(f"corpus: {args.clips} rows, {len(bad)} bad ({len(bad) / args.clips:.0%}): {sorted(set(bad.values()))}")
    print(f"annotation check: {report.summary()}")

    command = [sys.executable, __file__, "--workdir", str(workdir)]
    child = subprocess.Popen([*command, "--phase", "first"], start_new_session=True)
    first_checkpoint = None
    while child.poll() is None and first_checkpoint is None:
        time.sleep(0.2)
        done = sorted((workdir / "run").glob("checkpoint-*/trainer_state.json"))
        first_checkpoint = done[0].parent if done else None
    if first_checkpoint is None:
        raise SystemExit(f"the first run ended (exit code {child.returncode}) before its first checkpoint")
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    killed_at = int(first_checkpoint.name.split("-")[1])
    lines = (workdir / "killed.jsonl").read_text().splitlines()
    print(f"first run killed with SIGKILL after {len(lines)} logged batches; checkpoint-{killed_at} complete")
    subprocess.run([*command, "--phase", "resume"], check=True)

    result = json.loads((workdir / "report.json").read_text())
    kept = [json.loads(line) for line in lines if json.loads(line)["step"] <= killed_at]
    kept += [json.loads(line) for line in (workdir / "resumed.jsonl").read_text().splitlines()]
    bad_videos = {f"clip{row:04d}.mp4" for row, kind in bad.items() if "caption" not in kind}
    good = {stable_video_index((row["video"], row["start"], row["end"])) for row in rows
            if Path(row["video"]).name not in bad_videos}
    per_epoch = {}
    for entry in kept:
        epoch = (entry["step"] - 1) // result["steps_per_epoch"]
        for clip in entry["clips"]:
            per_epoch.setdefault(epoch, {}).setdefault(clip, 0)
            per_epoch[epoch][clip] += 1
    for epoch, counts in sorted(per_epoch.items()):
        times = [counts.get(clip, 0) for clip in good]
        print(f"epoch {epoch + 1}: {len(good)} good clips, trained on {min(times)} to {max(times)} times each; "
              f"{len(set(counts) - set(good))} other clips trained")
    print(f"bad videos counted by the trainer: {len(result['bad'])} of {result['seen']} clips tried")
    for name, reason in result["bad"]:
        print(f"  {Path(name).name}: {reason}")
    print(f"steps {result['steps']} ({result['steps_per_epoch']} per epoch), all-bad batches skipped after resume: "
          f"{result['skipped_batches']}; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
