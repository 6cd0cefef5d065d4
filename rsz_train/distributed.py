"""Data-parallel training (DistributedDataParallel) for rsz_train.train: one process per GPU or CPU share.

Two ways in, the same environment contract as torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT): `rsz-train ... --nproc N` spawns N local processes and sets those variables, or
`torchrun --nproc-per-node N -m rsz_train.cli dsva ...` (multi-node too) sets them itself.

Every rank draws the same global batch from the epoch's seeded generator (rsz_train.train), then keeps
its own share: for class-balanced episodes a share is whole classes with all their images, so each rank
still trains on a "classes x images per class" episode; for plain batches it is every world_size-th
image. Augmentations and captions are drawn for the whole global batch on every rank (the generator
stays in step with a single-process run) and applied to the rank's share only. Each rank scales its
loss by its share of the global batch, so the averaged gradient is the single-process gradient of the
global batch for every loss that is a per-image mean. NCCL on GPUs, gloo on CPUs. Rank 0 alone
validates, writes metrics and checkpoints and scores the test split.
"""

from __future__ import annotations

import atexit
import datetime
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from rsz_infer.errors import RszError

PR_SET_PDEATHSIG = 1  # linux/prctl.h
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job; world_size 1 is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> DistContext:
    """This process's place in the job, from the torchrun variables (a single process when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    return DistContext(rank, world, int(os.environ.get("LOCAL_RANK", rank)))


def start(ctx: DistContext, device: torch.device) -> torch.device:
    """Join the process group (NCCL for CUDA, gloo otherwise); returns this rank's device."""
    if not ctx.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:  # N ranks on one CPU: share the cores instead of fighting
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world_size))
    if not dist.is_initialized():
        atexit.register(stop, ctx)
        # long timeout: the other ranks wait in a collective while rank 0 validates
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            rank=ctx.rank,
            world_size=ctx.world_size,
            timeout=datetime.timedelta(hours=2),
        )
    return device


def stop(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def local_share(batch: np.ndarray, labels: np.ndarray, class_balanced: bool, ctx: DistContext) -> np.ndarray:
    """Positions in the global `batch` (indices into the training set) that this rank trains on."""
    if not ctx.enabled:
        return np.arange(len(batch))
    if class_balanced:
        # Episodes are laid out class after class: rank r takes classes r, r + W, ... with all their images.
        batch_labels = labels[batch]
        classes = list(dict.fromkeys(batch_labels.tolist()))
        if len(classes) < ctx.world_size:
            raise RszError(
                f"train.classes_per_batch: {len(classes)} classes per episode cannot be shared by "
                f"{ctx.world_size} processes (use at least one class per process)"
            )
        mine = set(classes[ctx.rank :: ctx.world_size])
        return np.flatnonzero(np.isin(batch_labels, list(mine)))
    if len(batch) < ctx.world_size:
        raise RszError(f"a batch of {len(batch)} images cannot be shared by {ctx.world_size} processes")
    return np.arange(ctx.rank, len(batch), ctx.world_size)


def from_main(ctx: DistContext, compute: Callable[[], Any]) -> Any:
    """compute() on rank 0, its result sent to every rank (what is the same everywhere and slow to
    make, e.g. MiniLM class semantics, is made once)."""
    if not ctx.enabled:
        return compute()
    box = [compute() if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class LossModule(torch.nn.Module):
    """model.training_losses as forward(), so that DistributedDataParallel sees each step."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.model.training_losses(batch)


def loss_module(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """What the training step calls: the model's losses, gradient-averaged across ranks when distributed."""
    module = LossModule(model)
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters: a model's losses need not touch every trainable weight in every step.
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


def global_losses(
    losses: dict[str, torch.Tensor], local_size: int, global_size: int, ctx: DistContext
) -> dict[str, float]:
    """The losses of the global batch: each rank's per-image means weighted by its share of the batch."""
    keys = sorted(losses)
    values = torch.stack([losses[k].detach().float().cpu() for k in keys])
    if ctx.enabled:
        values = values * (local_size / global_size)
        dist.all_reduce(values)
    return dict(zip(keys, values.tolist()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_launcher(launcher: int) -> None:
    """End this rank when its launcher ends (SIGTERM or SIGKILL of `rsz-train --nproc`): an orphaned rank
    would go on training and writing the run after the launcher's lock on it is gone, beside the
    `--resume` that takes the lock again. torch.multiprocessing's own parent-death signal is SIGINT, which
    a shell script's background job (`rsz-train ... &`) ignores, so SIGTERM here. Linux (prctl
    PR_SET_PDEATHSIG); elsewhere ranks may outlive it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher:  # it ended before prctl took effect
        os._exit(1)


def _spawned(
    rank: int, world: int, port: int, launcher: int, fn: Callable, args: tuple, kwargs: dict, result: Any
) -> None:
    _die_with_launcher(launcher)
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    try:
        value = fn(*args, **kwargs)
        # leave the group here, not in start()'s atexit hook: gloo's threads torn down at interpreter exit
        # aborted a rank once in a while after a finished job ("terminate called without an active exception")
        stop(current())
        if rank == 0:  # what rank 0 did is what the job did (the launcher returns it)
            result.put(value)
    except RszError as err:  # keep the one-line message for the parent
        raise RuntimeError(f"RszError: {err}") from None


def launch(nproc: int, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run fn(*args, **kwargs) in `nproc` local processes joined as one torchrun-style job; returns what
    fn returned on rank 0 (picklable)."""
    if nproc < 1:
        raise RszError(f"--nproc {nproc}: must be at least 1")
    if current().enabled:
        raise RszError(f"--nproc {nproc}: already inside a distributed job (torchrun sets the processes)")
    import torch.multiprocessing as mp

    result = mp.get_context("spawn").SimpleQueue()
    spawn_args = (nproc, free_port(), os.getpid(), fn, args, kwargs, result)
    try:
        mp.spawn(_spawned, args=spawn_args, nprocs=nproc, join=True)
    except mp.ProcessRaisedException as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        message = next((line for line in reversed(lines) if "RszError: " in line), None)
        if message is not None:
            raise RszError(message.split("RszError: ", 1)[1]) from None
        raise RszError(f"--nproc {nproc}: a training process failed: {lines[-1] if lines else err}") from None
    except mp.ProcessExitedException as err:
        raise RszError(f"--nproc {nproc}: a training process died ({err})") from None
    # (a small value: the pipe holds it until it is read here, after join)
    return None if result.empty() else result.get()


__all__ = [
    "DistContext",
    "barrier",
    "current",
    "from_main",
    "global_losses",
    "launch",
    "local_share",
    "loss_module",
    "start",
    "stop",
]
