"""Fault injection in training: a batch whose every video is bad is skipped without losing the
batches around it, with and without DataLoader workers, streamed or not, and after resuming; every
bad clip is counted once per run and the limit on their share holds for the whole run."""

import json
from pathlib import Path

import pytest
import torch
from conftest import textured_frames, tiny_config, tiny_processor, write_mp4
from torch.utils.data import SequentialSampler
from transformers import TrainerCallback

from hbi_transformers import HBIModel
from hbi_transformers.data import HBIDataCollator, TooManyBadVideosError, load_video_text_dataset
from hbi_transformers.training import HBITrainer, HBITrainingArguments

NUM_ROWS, BATCH_SIZE = 36, 4
ALL_BAD_BATCH = 2  # rows 8-11: the third batch


class InOrderTrainer(HBITrainer):
    """Batches in corpus order, so that the all-bad batch is where the test puts it; records the
    clips of every batch the model trains on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trained_clips = []

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.trained_clips += inputs["video_index"].tolist()
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """36 rows, one clip each; the 4 rows of the third batch name missing files."""
    root = tmp_path_factory.mktemp("videos")
    rows = []
    for row in range(NUM_ROWS):
        if row // BATCH_SIZE == ALL_BAD_BATCH:
            rows.append({"video": f"missing{row}.mp4", "caption": "a dog"})
        else:
            write_mp4(root / f"clip{row}.mp4", textured_frames(4, 32, 32, seed=row), fps=4)
            rows.append({"video": f"clip{row}.mp4", "caption": "a cat" if row % 2 else "cat dog"})
    annotations = root / "train.jsonl"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    processor, text_config = tiny_processor(tmp_path_factory.mktemp("tokenizer"), max_frames=2)
    return root, annotations, processor, text_config


def make_trainer(corpus, output_dir, streaming=False, workers=0, annotations=None, max_bad_fraction=0.5, **overrides):
    root, default_annotations, processor, text_config = corpus
    torch.manual_seed(0)
    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=BATCH_SIZE, num_train_epochs=1, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=workers, seed=0,
    )
    if streaming:
        settings["max_steps"] = NUM_ROWS // BATCH_SIZE
    settings.update(overrides)
    dataset = load_video_text_dataset(str(annotations or default_annotations), video_root=str(root), streaming=streaming)
    return InOrderTrainer(
        model=HBIModel(tiny_config(text_config=text_config)),
        args=HBITrainingArguments(**settings),
        train_dataset=dataset,
        data_collator=HBIDataCollator(processor, max_bad_fraction=max_bad_fraction, min_items=1),
        processing_class=processor,
    )


@pytest.mark.parametrize("streaming, workers", [(False, 0), (True, 0), (False, 2)])
def test_an_all_bad_batch_is_skipped_and_nothing_else_is_lost(corpus, tmp_path, streaming, workers):
    trainer = make_trainer(corpus, tmp_path, streaming=streaming, workers=workers)
    trainer.train()
    good_batches = NUM_ROWS // BATCH_SIZE - 1
    assert (trainer.trained_batches, trainer.skipped_batches) == (good_batches, 1)
    assert trainer.state.global_step == NUM_ROWS // BATCH_SIZE
    # Every good clip trained on exactly once in the epoch.
    assert len(trainer.trained_clips) == len(set(trainer.trained_clips)) == NUM_ROWS - BATCH_SIZE
    # Every bad clip named and counted once, in this process, whatever the workers.
    assert trainer.video_counter.seen_items == NUM_ROWS
    assert {item.name.rsplit("/", 1)[-1] for item in trainer.video_counter.bad_items} == {
        f"missing{row}.mp4" for row in range(8, 12)
    }


class ParameterSnapshots(TrainerCallback):
    def __init__(self):
        self.after_step = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step[state.global_step] = {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_the_skipped_batch_changes_no_parameter(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path, max_steps=ALL_BAD_BATCH + 2)
    snapshots = ParameterSnapshots()
    trainer.add_callback(snapshots)
    trainer.train()
    assert trainer.skipped_batches == 1
    before, after, next_step = (snapshots.after_step[step] for step in (ALL_BAD_BATCH, ALL_BAD_BATCH + 1, ALL_BAD_BATCH + 2))
    for name, value in after.items():
        assert torch.equal(value, before[name]), name
    assert any(not torch.equal(value, after[name]) for name, value in next_step.items())


class StopAfter(TrainerCallback):
    """Ends a run after `steps` optimiser steps, as an interruption would (the schedule is the full run's)."""

    def __init__(self, steps):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.steps:
            control.should_training_stop = True


def test_resuming_latest_before_the_all_bad_batch(corpus, tmp_path):
    full = make_trainer(corpus, tmp_path / "full")
    full.train()
    interrupted = make_trainer(corpus, tmp_path / "part", save_strategy="steps", save_steps=2)
    interrupted.add_callback(StopAfter(2))
    interrupted.train()
    # A checkpoint half-written when a run was killed: "latest" must pass it over.
    half_written = tmp_path / "part" / "checkpoint-7"
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"truncated")
    resumed = make_trainer(corpus, tmp_path / "part", save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint="latest")
    assert (resumed.trained_batches, resumed.skipped_batches) == (NUM_ROWS // BATCH_SIZE - 3, 1)
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_the_bad_share_holds_for_the_whole_run_with_workers(corpus, tmp_path):
    rows = [{"video": f"clip{row}.mp4" if row % 3 else f"gone{row}.mp4", "caption": "a cat"}
            for row in range(NUM_ROWS) if row // BATCH_SIZE != ALL_BAD_BATCH]
    annotations = tmp_path / "third_missing.jsonl"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    trainer = make_trainer(corpus, tmp_path, workers=2, annotations=annotations, max_bad_fraction=0.1)
    with pytest.raises(TooManyBadVideosError, match="max_bad_fraction=10.0%"):
        trainer.train()


def test_a_run_that_trains_nothing_fails(corpus, tmp_path):
    annotations = tmp_path / "all_missing.jsonl"
    annotations.write_text("".join(json.dumps({"video": f"gone{row}.mp4", "caption": "cat"}) + "\n" for row in range(8)))
    trainer = make_trainer(corpus, tmp_path, annotations=annotations, max_bad_fraction=1.0)
    with pytest.raises(RuntimeError, match="no batch could be trained: 8 of 8 videos skipped"):
        trainer.train()


def distributed_worker(rank, port, root, annotations, scratch, result_dir):
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    (Path(scratch) / f"tokenizer{rank}").mkdir()
    processor, text_config = tiny_processor(Path(scratch) / f"tokenizer{rank}", max_frames=2)
    corpus = (Path(root), Path(annotations), processor, text_config)
    trainer = make_trainer(corpus, Path(result_dir) / "run", ddp_backend="gloo")
    trainer.train()
    counter = trainer.video_counter
    result = {"trained": trainer.trained_batches, "skipped": trainer.skipped_batches, "seen": counter.seen_items,
              "bad": sorted(item.name.rsplit("/", 1)[-1] for item in counter.bad_items),
              "clips": trainer.trained_clips, "steps": trainer.state.global_step}
    torch.save(result, Path(result_dir) / f"rank{rank}.pt")
    # Neither process may leave while the other still talks to it.
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_skip_together_and_count_every_failure(corpus, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root, annotations = corpus[:2]
    (tmp_path / "scratch").mkdir()
    mp.spawn(distributed_worker, args=(port, str(root), str(annotations), str(tmp_path / "scratch"), str(tmp_path)),
             nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    # Batches go to the processes in turn: rank 0's second batch is the all-bad one, and rank 1
    # skips its own (good) batch of that step too, so that both stay in step.
    assert [result["steps"] for result in results] == [5, 5]
    assert [(result["trained"], result["skipped"]) for result in results] == [(4, 1), (4, 1)]
    for result in results:
        # Every process counted every clip tried anywhere, each failure once.
        assert result["bad"] == sorted(f"missing{row}.mp4" for row in range(8, 12))
        assert result["seen"] == NUM_ROWS
    trained = results[0]["clips"] + results[1]["clips"]
    assert len(set(trained)) == NUM_ROWS - 2 * BATCH_SIZE
