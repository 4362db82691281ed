"""How images are put into batches for fine-tuning: shuffled training batches, validation batches in which
no two images share a class, and under torchrun each process's share of every global training batch.

Why the validation batches matter: a contrastive batch scores each image against the captions of the same
batch. k images of one class have k captions of that class, so the loss of that batch cannot go below
log k and the report's in-batch matching cannot pass 1/k (clip_helpers.losses.loss_floor, inbatch_ceiling),
whatever the model learns. A split sorted by class, read in order, puts whole classes in a batch: its
validation curves show that floor, not learning. Batches of distinct classes have no floor at all.
"""
import math
from functools import partial
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from ..data import targets_of
from .seeds import epoch_seed
from .settings import SettingsError, data_problems


def train_loader_for(dataset, batch_size: int, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A shuffling DataLoader whose order fine_tune can fix per epoch (so a resumed run sees the same batches).

    A last batch of a single image is dropped (another image each epoch, since the order is shuffled): one
    pair has no negatives, so its loss is 0, and BatchNorm (the mini-CLIP's ResNet) cannot train on it.
    """
    problems = data_problems(batch_size=batch_size)
    if problems:
        raise SettingsError(f"{'; '.join(problems)}.")
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), drop_last=len(dataset) % batch_size == 1)


def dataset_size(loader):
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if hasattr(dataset, "__len__") else None


def smallest_batch(loader) -> int | None:
    """The fewest items a batch of `loader` holds, read from its batch sampler without drawing any (None: unknown)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    try:
        if isinstance(batch_sampler, BatchSampler):
            rest = len(batch_sampler.sampler) % batch_sampler.batch_size
            return rest if rest and not batch_sampler.drop_last else batch_sampler.batch_size
        if isinstance(batch_sampler, (list, tuple)) and batch_sampler:  # e.g. val_loader_for's
            return min(len(batch) for batch in batch_sampler)
    except TypeError:  # a sampler without a length (an IterableDataset's)
        pass
    return None


def has_batch_norm(model) -> bool:
    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())


def check_loaders(model, train_loader, val_loader, world_size: int = 1) -> None:
    """Refuse before the first step what would fail at some step, or train on nothing: an empty loader, and a
    training batch of one image (the whole batch with world_size 1; this process's share, with BatchNorm)."""
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if len(loader) == 0:
            raise SettingsError(f"{name} yields no batches (its dataset holds {dataset_size(loader)} items): "
                                f"give it at least one image.")
    smallest, batch_norm = smallest_batch(train_loader), has_batch_norm(model)
    if smallest != 1 or not (world_size == 1 or batch_norm):
        return
    why = ("the model's BatchNorm cannot train on one image" if batch_norm else
           "one pair has no negatives, so its loss is 0 and it trains nothing")
    batch_size = getattr(train_loader, "batch_size", None)
    if batch_size == 1:
        raise SettingsError(f"train_loader's batches hold one image{' per process' if world_size > 1 else ''}, and "
                            f"{why}: use a batch size of at least {2 * world_size}.")
    raise SettingsError(f"train_loader's last batch holds one image ({dataset_size(train_loader)} images in batches of "
                        f"{batch_size}), and {why}. Build it with clip_helpers.training.batches.train_loader_for, which drops "
                        f"such a batch, pass drop_last=True, or choose another batch size.")


def distinct_class_batches(labels, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Every index once, in batches of at most `batch_size` that never hold two items of one class.

    Dealt in rounds: each round takes one item (drawn at random) of every class that has items left, in a
    shuffled class order, and is cut into batches of near-equal size. A balanced set of n classes thus gives
    batches of about min(batch_size, n) items; an unbalanced one ends with smaller batches of the larger classes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == label))) for label in np.unique(labels)]
    batches = []
    while any(queues):
        round_items = [int(queues[queue].pop()) for queue in rng.permutation(len(queues)) if queues[queue]]
        batches += [part.tolist() for part in np.array_split(round_items, math.ceil(len(round_items) / batch_size))]
    return batches


def val_loader_for(dataset, batch_size: int, seed: int = 0, num_workers: int = 0,
                   pin_memory: bool = False) -> DataLoader:
    """A validation DataLoader of batches without two images of one class (distinct_class_batches), in one order
    fixed by `seed`: every epoch is scored on the same batches, and no batch imposes a floor on the loss."""
    return DataLoader(dataset, batch_sampler=distinct_class_batches(targets_of(dataset), batch_size, seed),
                      num_workers=num_workers, pin_memory=pin_memory)


# ---------------------------------------------------------------- several processes (torchrun)

ONE = SimpleNamespace(rank=0, world_size=1)  # where a process stands when it is the only one


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Each process's share of a global batch of `batch_size`; refuses a batch that does not split evenly."""
    if batch_size % world_size:
        raise ValueError(f"A global batch of {batch_size} does not split evenly over {world_size} processes: "
                         f"choose a batch size that is a multiple of {world_size}.")
    return batch_size // world_size


class ShardedSampler(DistributedSampler):
    """Process `rank`'s part of each global batch: the rank-th contiguous chunk of `local_batch_size` items.

    The global order is DistributedSampler's (a permutation seeded by seed + epoch; call set_epoch each
    epoch); it is cut into global batches of world_size x local_batch_size and the short last one is
    dropped, so every process makes the same number of equal steps. Gathering in rank order puts the
    global batch back together in the order one process with the same seed would have read it.
    """

    def __init__(self, dataset: Dataset, local_batch_size: int, num_replicas: int, rank: int,
                 shuffle: bool = True, seed: int = 0, order: Callable[[int], torch.Tensor] | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.local_batch_size, self.order = local_batch_size, order  # order(epoch): the global order, if given
        global_batch = local_batch_size * num_replicas
        self.num_batches = len(dataset) // global_batch
        if self.num_batches == 0:
            raise ValueError(f"{len(dataset)} items do not fill one global batch of {global_batch} "
                             f"({num_replicas} processes x {local_batch_size}): use a smaller batch size.")
        self.num_samples = self.num_batches * local_batch_size
        self.total_size = self.num_batches * global_batch

    def __iter__(self):
        if self.order is not None:
            order = self.order(self.epoch)
        elif self.shuffle:
            order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(len(self.dataset))
        global_batch = self.local_batch_size * self.num_replicas
        for start in range(self.rank * self.local_batch_size, self.total_size, global_batch):
            yield from order[start:start + self.local_batch_size].tolist()


def sharded_train_loader(dataset: Dataset, batch_size: int, processes=None, seed: int = 0,
                         num_workers: int = 0) -> DataLoader:
    """This process's loader for a global batch of `batch_size` (fine_tune calls its sampler's set_epoch).

    `processes`: distributed.Processes (rank and world_size); None: one process."""
    processes = processes or ONE
    local = local_batch_size(batch_size, processes.world_size)
    sampler = ShardedSampler(dataset, local, processes.world_size, processes.rank, seed=seed)
    return DataLoader(dataset, batch_size=local, sampler=sampler, num_workers=num_workers)


def single_process_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which one process reads train_loader_for's loader in epoch `epoch` of fine_tune:
    a DataLoader whose generator loop.reseed_sampler seeds (it draws a base seed from it, then shuffles)."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return next(iter(DataLoader(range(size), batch_size=size, shuffle=True, generator=generator)))


def shard(loader: DataLoader, processes, seed: int) -> DataLoader:
    """This process's part of a training loader of global batches (the loader itself in one process).

    A DataLoader with shuffle=True or False (train_loader_for's) becomes a loader of the same dataset
    with a ShardedSampler that reads, after set_epoch(epoch), the global batches one process reads in that
    epoch of a run seeded with `seed` (less a short last batch, which cannot be split evenly).
    """
    if processes.world_size == 1 or isinstance(getattr(loader, "sampler", None), ShardedSampler):
        return loader
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, (RandomSampler, SequentialSampler)) or getattr(sampler, "replacement", False) \
            or loader.batch_size is None:
        raise ValueError(f"fine_tune on several processes splits a DataLoader made with a batch_size and shuffle=True "
                         f"or False (train_loader_for); this one draws with a {type(sampler).__name__}. Build it "
                         f"with clip_helpers.training.batches.sharded_train_loader(dataset, batch_size, processes).")
    local = local_batch_size(loader.batch_size, processes.world_size)
    shuffle = isinstance(sampler, RandomSampler)
    sampler = ShardedSampler(loader.dataset, local, processes.world_size, processes.rank, shuffle=shuffle, seed=seed,
                             order=partial(single_process_order, len(loader.dataset), seed) if shuffle else None)
    return DataLoader(loader.dataset, batch_size=local, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
