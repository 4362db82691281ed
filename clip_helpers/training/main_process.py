"""Several processes, one writer: the main process (rank 0) writes the run's files, the others wait for it.

A failure on the main process (a refused run folder, a full disk, a NaN checkpoint) is raised on every
process, since the others would otherwise wait for it in their next collective until the timeout.
"""
import pickle
from contextlib import ExitStack, contextmanager
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .checkpoints import RunFolderError, load_checkpoint, run_folder
from .distributed import SINGLE, Processes


def barrier(processes: Processes = SINGLE) -> None:
    """Wait until every process gets here (a no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier(device_ids=[processes.local_rank] if processes.device.startswith("cuda") else None)


def from_main(value, processes: Processes):
    """The main process's `value` (any picklable object) on every process; also a barrier."""
    if processes.world_size == 1:
        return value
    box = [value if processes.is_main else None]
    dist.broadcast_object_list(box, src=0, device=torch.device(processes.device) if "cuda" in processes.device else None)
    return box[0]


def all_agree(ok: bool, processes: Processes) -> bool:
    """True when `ok` is true on every process."""
    if processes.world_size == 1:
        return ok
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
    if processes.world_size == 1:
        with run_folder(run_dir, record, model, resume, overwrite) as state:
            yield state
        return
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
