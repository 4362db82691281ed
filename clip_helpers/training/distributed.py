"""Fine-tuning on several processes with torch.distributed, launched by torchrun (NCCL on GPUs, gloo on CPUs).

    torchrun --nproc_per_node 2 -m clip_helpers.training.finetune ...

Contrastive training has one catch that a plain DistributedDataParallel wrapper gets wrong: each process
must score its images against the captions of the *whole* global batch, so features are gathered across
processes (gathering.gather_with_grad), the gradient of every slice flowing back to the process that made it.
With that, distributed_clip_loss is the single-process clip_loss on the global batch, and DDP's averaged
gradients are the single-process gradients on it (tests/test_distributed.py checks both, every parameter).

The global batch: the loader's batch_size stays the *global* batch, split into equal contiguous chunks, one
per process in rank order (batches.shard, batches.ShardedSampler), so adding processes leaves the optimisation, the
negatives and the learning-rate schedule unchanged; only the work per process shrinks. fine_tune uses all of
this under torchrun through Several, which clip_helpers.training.processes imports only then.

Several processes, one writer: the main process (rank 0) writes the run's files, the others wait for it. A
failure on the main process (a refused run folder, a full disk, a NaN checkpoint) is raised on every process,
since the others would otherwise wait for it in their next collective until the timeout.
"""
import os
import pickle
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from .batches import shard
from .checkpoints import RunFolderError, load_checkpoint, run_folder
from .gathering import (all_labels, distributed_clip_loss, gather, gather_with_grad, own_part, unwrap,
                        wrap_model)

__all__ = ["Processes", "SINGLE", "Several", "init_from_env", "cleanup", "processes_for", "on_main", "main_first",
           "from_main", "all_agree", "run_folder_on_main", "distributed_clip_loss", "gather", "gather_with_grad",
           "wrap_model", "unwrap", "all_labels", "own_part"]

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class Processes(NamedTuple):
    """Where this process stands among the ones torchrun started."""
    rank: int
    world_size: int
    local_rank: int
    device: str
    is_main: bool


SINGLE = Processes(rank=0, world_size=1, local_rank=0, device="cpu", is_main=True)


def init_from_env(device: str | None = None, timeout_s: float = 1800) -> Processes:
    """Join the process group torchrun describes in the environment; one process when there is none.

    `device`: "cuda" or "cpu" (default: cuda when a GPU is visible). Each process takes the GPU of its
    LOCAL_RANK and NCCL; CPU processes use gloo. Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) nothing
    is initialised and the result says world_size 1.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE._replace(device="cuda:0" if device.startswith("cuda") else device)
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} is set but {', '.join(missing)} is not: start the processes "
                           f"with torchrun (torchrun --nproc_per_node N -m clip_helpers.training.finetune ...), which sets them all.")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible: "
                               f"start at most that many processes per node (--nproc_per_node).")
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s),
                                device_id=torch.device(device) if backend == "nccl" else None)
    return Processes(rank, world_size, local_rank, device, rank == 0)


def cleanup() -> None:
    """Leave the process group (a no-op in a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def processes_for(model: nn.Module) -> Processes:
    """The processes torchrun started, joining their group on first use, or one process without torchrun."""
    device = next(model.parameters()).device
    processes = init_from_env(device.type)
    if torch.device(processes.device) != device:
        raise ValueError(f"The model is on {device} but process {processes.rank} (LOCAL_RANK {processes.local_rank}) "
                         f"trains on {processes.device}: move it there first (model.to(init_from_env().device)).")
    return processes


# ---------------------------------------------------------------- one writer

def from_main(value, processes: Processes):
    """The main process's `value` (any picklable object) on every process; also a barrier."""
    box = [value if processes.is_main else None]
    dist.broadcast_object_list(box, src=0, device=torch.device(processes.device) if "cuda" in processes.device else None)
    return box[0]


def all_agree(ok: bool, processes: Processes) -> bool:
    """True when `ok` is true on every process."""
    flag = torch.tensor([int(ok)], device=processes.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def portable(error: BaseException | None) -> BaseException | None:
    """The error itself when it can travel to the other processes (pickled), else a RuntimeError that says it."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def on_main(processes: Processes, write: Callable, *args, **kwargs):
    """Run `write` (a checkpoint, the history, the results) on the main process only, then wait for it,
    so no process reads a file before it is complete; returns write's result on the main process, else None.
    When it fails, every process raises its error (the others would otherwise wait for the main one forever)."""
    result, error = None, None
    if processes.is_main:
        try:
            result = write(*args, **kwargs)
        except Exception as failure:
            error = failure
    shared = from_main(portable(error), processes)
    if error is not None:
        raise error
    if shared is not None:
        raise shared
    return result


def main_first(processes: Processes, load: Callable, *args, **kwargs):
    """load() on the main process, then on the others: a download or a cache is written once, then read."""
    result = on_main(processes, load, *args, **kwargs)
    return result if processes.is_main else load(*args, **kwargs)


@contextmanager
def run_folder_on_main(processes: Processes, run_dir, record: dict, model: nn.Module, resume, overwrite: bool):
    """checkpoints.run_folder on the main process only (lock, checks, run.json); yields on every process the
    checkpoint to resume from, or None. The other processes read the checkpoint the main one checked from
    run_dir: on several machines the run folder must be on a filesystem they all share."""
    with ExitStack() as stack:
        state = on_main(processes, lambda: stack.enter_context(run_folder(run_dir, record, model, resume, overwrite)))
        epoch = from_main(None if state is None else state["epoch"], processes)
        if not processes.is_main and epoch is not None:
            try:
                state = load_checkpoint(run_dir)
            except ValueError:
                state = None
        if not all_agree(epoch is None or (state is not None and state["epoch"] == epoch), processes):
            raise RunFolderError(f"Not every process could read the checkpoint of epoch {epoch} in {run_dir}: on "
                                 f"several machines, put the run folder (--data-dir) on a filesystem they all share.")
        yield state


# ---------------------------------------------------------------- what fine_tune does differently on several

class Several:
    """fine_tune's view of one of torchrun's processes (the interface of processes.OneProcess): its share of every
    global batch, the DDP wrapper, the loss of the global batch, and rank 0 the one writer."""

    def __init__(self, processes: Processes):
        self.processes = processes
        self.rank, self.world_size, self.local_rank = processes.rank, processes.world_size, processes.local_rank
        self.device, self.is_main = processes.device, processes.is_main

    @classmethod
    def for_model(cls, model: nn.Module) -> "Several":
        return cls(processes_for(model))

    @classmethod
    def from_env(cls, device: str | None = None) -> "Several":
        return cls(init_from_env(device))

    def shard(self, loader, seed: int):
        return shard(loader, self.processes, seed)

    def forward_for(self, model):
        return wrap_model(model, self.processes)

    loss = staticmethod(distributed_clip_loss)

    def batch_labels(self, labels):
        return all_labels(labels, self.processes)

    def own_part(self, items):
        return own_part(items, self.processes)

    def on_main(self, write, *args, **kwargs):
        return on_main(self.processes, write, *args, **kwargs)

    def main_first(self, load, *args, **kwargs):
        return main_first(self.processes, load, *args, **kwargs)

    def run_folder(self, run_dir, record, model, resume=False, overwrite=False):
        return run_folder_on_main(self.processes, run_dir, record, model, resume, overwrite)
