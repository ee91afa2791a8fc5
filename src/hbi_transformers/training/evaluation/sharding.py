"""Evaluation work split over the processes of a torch.distributed run: each process takes every
world-size-th item, and the results are merged on every process."""

import torch

from ...models.hbi.losses import distributed_world_size


def process_share(items: list) -> list:
    """This process's share of `items` (all of them outside torch.distributed)."""
    world_size = distributed_world_size()
    if world_size == 1:
        return items
    return items[torch.distributed.get_rank() :: world_size]


def merge_from_all_processes(local: dict) -> dict:
    """The union of every process's `{item: result}` (results travel as pickled CPU objects)."""
    world_size = distributed_world_size()
    if world_size == 1:
        return local
    shards = [None] * world_size
    torch.distributed.all_gather_object(shards, local)
    return {key: value for shard in shards for key, value in shard.items()}
