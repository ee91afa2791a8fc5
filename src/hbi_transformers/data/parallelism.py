"""How many DataLoader workers and torch compute threads a command uses: from the cores this
process may run on, so that decoding workers and compute threads never ask for more cores than
there are (threads that outnumber cores spin and fight: docs/video_input.md)."""

import os
from dataclasses import dataclass

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` set),
    shared with the other processes of a distributed run on this machine (`LOCAL_WORLD_SIZE`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


@dataclass(frozen=True)
class Parallelism:
    workers: int
    threads: int


def choose_parallelism(
    workers: int | None = None, threads: int | None = None, cores: int | None = None, accelerator: bool = False
) -> Parallelism:
    """DataLoader workers and torch threads for `cores` cores (default: `available_cores()`).

    Given both, they are kept. Given one, the other takes the cores left (at least 1 thread, at
    least 0 workers). Given neither: with an accelerator, computing needs one thread to drive it
    and every other core decodes; on CPU, half the cores compute (rounded down, at least 1) and
    the rest decode. Either way workers + threads <= cores, except on a single core, where one
    thread computes and the main process decodes (0 workers)."""
    cores = available_cores() if cores is None else cores
    if workers is not None and threads is not None:
        return Parallelism(workers, threads)
    if threads is not None:
        return Parallelism(max(0, cores - threads), threads)
    if workers is not None:
        return Parallelism(workers, max(1, cores - workers))
    threads = 1 if accelerator else max(1, cores // 2)
    return Parallelism(max(0, cores - threads), threads)


def apply_parallelism(parallelism: Parallelism) -> Parallelism:
    """Sets torch's compute threads (and logs the choice); returns `parallelism`."""
    torch.set_num_threads(parallelism.threads)
    logger.info(f"{parallelism.threads} torch threads, {parallelism.workers} decoding workers "
                f"({available_cores()} cores)")
    return parallelism


def free_cores_for_workers() -> int:
    """Decoding workers that fit beside torch's compute threads: the cores they leave free."""
    return max(0, available_cores() - torch.get_num_threads())
