import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers.training.batches import distinct_class_batches, val_loader_for
from clip_helpers.losses import inbatch_ceiling, loss_floor


def labels_in(loader):
    return [batch_labels for _, batch_labels in loader]


def test_validation_batches_hold_distinct_classes_every_item_once_in_a_fixed_order():
    labels = torch.arange(12).repeat_interleave(10)  # sorted, as data.split returns a class's items together
    dataset = TensorDataset(torch.zeros(120, 1), labels)
    batches = labels_in(val_loader_for(dataset, batch_size=16, seed=3))
    assert sorted(torch.cat(batches).tolist()) == sorted(labels.tolist())  # every item once
    assert all(len(b.unique()) == len(b) for b in batches)  # no two items of one class in a batch
    assert all(loss_floor(b) == 0 and inbatch_ceiling(b) == 1 for b in batches)
    assert [len(b) for b in batches] == [12] * 10  # 12 classes: rounds of 12, never cut at 16
    again = torch.cat(labels_in(val_loader_for(dataset, batch_size=16, seed=3)))
    other = torch.cat(labels_in(val_loader_for(dataset, batch_size=16, seed=4)))
    assert again.tolist() == torch.cat(batches).tolist() and other.tolist() != again.tolist()
    sorted_batches = labels_in(DataLoader(dataset, batch_size=16))  # the old loader: whole classes per batch
    assert max(int(torch.bincount(b).max()) for b in sorted_batches) == 10


def test_more_classes_than_a_batch_are_split_evenly_and_unbalanced_classes_end_in_small_batches():
    labels = [0] * 5 + [1] * 1 + [2] * 3 + list(range(3, 40))  # 40 classes, one of 5 items, one of 3
    batches = distinct_class_batches(labels, batch_size=16, seed=0)
    assert sorted(i for batch in batches for i in batch) == list(range(len(labels)))
    assert all(len({labels[i] for i in batch}) == len(batch) for batch in batches)
    assert [len(b) for b in batches] == [14, 13, 13, 2, 2, 1, 1]  # 40 = 14+13+13; classes 0 and 2 twice; 0 twice
    assert max(len(b) for b in batches) <= 16


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        distinct_class_batches([0, 1], batch_size=0)
