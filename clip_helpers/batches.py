"""How images are put into batches for fine-tuning: shuffled training batches, and validation batches in which
no two images share a class.

Why the validation batches matter: a contrastive batch scores each image against the captions of the same
batch. k images of one class have k captions of that class, so the loss of that batch cannot go below
log k and the report's in-batch matching cannot pass 1/k (clip_helpers.losses.loss_floor, inbatch_ceiling),
whatever the model learns. A split sorted by class, read in order, puts whole classes in a batch: its
validation curves show that floor, not learning. Batches of distinct classes have no floor at all.
"""
import math

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import targets_of


def train_loader_for(dataset, batch_size: int, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A shuffling DataLoader whose order fine_tune can fix per epoch (so a resumed run sees the same batches)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed))


def labels_of(dataset) -> list[int]:
    if isinstance(dataset, torch.utils.data.TensorDataset):  # recipes.rendered: the labels are its second tensor
        return dataset.tensors[1].tolist()
    return targets_of(dataset)


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
    return DataLoader(dataset, batch_sampler=distinct_class_batches(labels_of(dataset), batch_size, seed),
                      num_workers=num_workers, pin_memory=pin_memory)
