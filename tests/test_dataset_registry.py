"""The cifar10 and caltech256 branches of dataset opening, on stand-ins in the real on-disk formats.

The stand-ins are clip_helpers.replication.rehearsal's at its "smoke" sizes: CIFAR-10's Python pickles (2 images per class in
the train batches, 2 in test_batch) and Caltech-256's 257 folders, images in the first 4 and in 257.clutter, one
of them a truncated JPEG. No network and no weights. What each dataset should hold is read here from the files
themselves (pickle, PIL), not from the kit.
"""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_helpers import downloads
from clip_helpers.replication import rehearsal
from clip_helpers.data import class_name, classes_of, targets_of
from clip_helpers.training.recipes import train_and_val_sets
from clip_helpers.sources import open_source
from clip_helpers.models import preprocess_for
from clip_helpers.text import CIFAR10_TEMPLATES

SMOKE = rehearsal.SIZES["smoke"]
pytestmark = pytest.mark.filterwarnings(f"ignore:{downloads.SKIP_CHECKSUMS}=1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand-ins")
    rehearsal.write_cifar10(root, SMOKE["cifar_train_per_class"], SMOKE["cifar_test_per_class"])
    rehearsal.write_caltech256(root, SMOKE["caltech_per_class"], SMOKE["caltech_classes"])
    return root


@pytest.fixture(autouse=True)
def stand_in_checksums(monkeypatch):
    """The stand-ins' md5s differ from the real files'; the rehearsal's switch lets them through."""
    monkeypatch.setenv(downloads.SKIP_CHECKSUMS, "1")


def unpickled(data_dir, name):
    with open(Path(data_dir) / "cifar-10-batches-py" / name, "rb") as file:
        return pickle.load(file, encoding="latin1")


def cifar_rows(data_dir, names):
    """(pixels HWC [n, 32, 32, 3], labels) of CIFAR batches, as the format defines them (rows of CHW bytes)."""
    entries = [unpickled(data_dir, name) for name in names]
    data = np.concatenate([entry["data"] for entry in entries]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return data, [label for entry in entries for label in entry["labels"]]


TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def readable_caltech_files(data_dir):
    """{class folder: [files PIL decodes]} of the stand-in Caltech-256, in folder order."""
    folders = sorted((Path(data_dir) / "caltech256" / "256_ObjectCategories").iterdir())
    readable = {}
    for folder in folders:
        readable[folder.name] = []
        for path in sorted(folder.glob("*.jpg")):
            try:
                with Image.open(path) as image:
                    image.load()
                readable[folder.name].append(path)
            except OSError:
                pass
    return readable


@pytest.mark.parametrize("split, batches", [("test", ["test_batch"]), ("train", TRAIN_BATCHES)])
def test_open_dataset_cifar10_reads_the_split_from_its_own_pickles(data_dir, split, batches):
    pixels, labels = cifar_rows(data_dir, batches)
    opened = open_source("cifar10", split, n_per_class=1, data_dir=str(data_dir), seed=3)
    dataset = opened.dataset
    assert opened.class_names == classes_of(dataset) == unpickled(data_dir, "batches.meta")["label_names"]
    assert sorted(targets_of(dataset)) == list(range(10))  # one image of each class
    for position, index in enumerate(dataset.indices):
        image, label = dataset[position]
        assert label == labels[index] and np.array_equal(np.asarray(image), pixels[index])


def test_open_dataset_caltech256_keeps_every_class_name_and_only_readable_images(data_dir):
    readable = readable_caltech_files(data_dir)
    with pytest.warns(UserWarning, match="unreadable"):
        opened = open_source("caltech256", "test", n_per_class=1, data_dir=str(data_dir))
    dataset = opened.dataset
    assert opened.class_names == classes_of(dataset) == [class_name(folder) for folder in readable]
    with_images = [label for label, files in enumerate(readable.values()) if files]
    assert sorted(targets_of(dataset)) == with_images  # one of each class that has a readable image
    for image, label in (dataset[i] for i in range(len(dataset))):
        assert image.mode == "RGB"
        folder = list(readable)[label]
        assert any(np.array_equal(np.asarray(image), np.asarray(Image.open(p).convert("RGB"))) for p in readable[folder])


def test_datasets_for_cifar10_trains_on_the_train_batches_and_validates_on_test_batch(data_dir):
    train, val, opened = train_and_val_sets("cifar10", preprocess_for(32), str(data_dir), train_size=15, val_size=5, seed=1)
    assert opened.class_names == unpickled(data_dir, "batches.meta")["label_names"]
    assert opened.train_templates == ["{}"] and opened.templates == CIFAR10_TEMPLATES
    assert len(train) == 15 and len(val) == 5
    train_pixels, train_labels = cifar_rows(data_dir, TRAIN_BATCHES)
    val_pixels, val_labels = cifar_rows(data_dir, ["test_batch"])
    for subset, pixels, labels in ((train, train_pixels, train_labels), (val, val_pixels, val_labels)):
        for position, index in enumerate(subset.indices):
            image, label = subset[position]
            assert label == labels[index]
            expected = preprocess_for(32)(Image.fromarray(pixels[index]))
            torch.testing.assert_close(image, expected)


def test_datasets_for_caltech256_splits_one_pool_by_class_without_sharing_an_image(data_dir):
    readable = readable_caltech_files(data_dir)
    with pytest.warns(UserWarning, match="unreadable"):
        train, val, opened = train_and_val_sets("caltech256", None, str(data_dir), train_size=None, val_size=None)
    assert opened.class_names == [class_name(folder) for folder in readable]
    assert opened.train_templates == ["{}"] and opened.templates == CIFAR10_TEMPLATES
    assert set(train.indices).isdisjoint(val.indices)
    assert len(train) + len(val) == sum(len(files) for files in readable.values())  # every readable image, once
    counts = {label: len(files) for label, files in enumerate(readable.values()) if files}
    for label, n in counts.items():  # a class of 2 gives 1 to validation; a class of 1 stays in training
        assert targets_of(val).count(label) == (1 if n >= 2 else 0)
