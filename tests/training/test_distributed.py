"""Two CPU processes (gloo): the gathered loss and the DDP-averaged gradients equal one process's
on the concatenated batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_batch, tiny_config
from torch.nn.parallel import DistributedDataParallel

from hbi_transformers import HBIModel
from hbi_transformers.models.hbi.losses import gather_from_all_processes

WORLD_SIZE = 2
# Uneven shards: rank 0 holds 3 pairs, rank 1 holds 2.
SHARDS = [slice(0, 3), slice(3, 5)]


def build_model():
    torch.manual_seed(0)
    return HBIModel(tiny_config())


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def worker(rank, init_file, batch, result_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    torch.set_num_threads(1)
    model = DistributedDataParallel(build_model())
    shard = {key: value[SHARDS[rank]] for key, value in batch.items()}
    torch.manual_seed(1)  # the clustering noise, drawn identically on every rank
    out = model(**shard, return_loss=True)
    out.loss.backward()
    gathered = gather_from_all_processes(torch.arange(SHARDS[rank].start, SHARDS[rank].stop) * 1.0)
    torch.save(
        {"loss": out.loss.detach(), "logits": out.logits_per_text.detach(), "gathered": gathered,
         "grads": gradients(model.module)},
        os.path.join(result_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    batch = make_batch(n_text=5, n_video=5)
    mp.spawn(worker, args=(str(tmp_path / "init"), batch, str(tmp_path)), nprocs=WORLD_SIZE, join=True)

    single = build_model()
    torch.manual_seed(1)
    out = single(**batch, return_loss=True)
    out.loss.backward()
    expected_grads = gradients(single)

    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(result["gathered"], torch.arange(5) * 1.0)
        torch.testing.assert_close(result["loss"], out.loss.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(result["logits"], out.logits_per_text.detach(), atol=1e-5, rtol=0)
        assert result["grads"].keys() == expected_grads.keys()
        for name, grad in expected_grads.items():
            torch.testing.assert_close(result["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)
