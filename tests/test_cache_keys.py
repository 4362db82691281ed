"""Each dataset says what identifies its items (its cache_key()); features.items_key builds the cache key from it.

Two different datasets never share a key, the same dataset built again keeps its key, and a file changed on
disk changes it."""
import itertools
import os

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset
from torchvision.transforms import ToTensor

from clip_helpers.data import Caltech256Captions, ImageFolderCaptions, caltech256
from clip_helpers.features import items_key
from clip_helpers.shapes import ShapesDataset


def write_folders(root, classes=("001.cat", "002.dog"), per_class=2):
    """Class folders of one-colour images, every image its own colour."""
    for label, folder in enumerate(classes):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_class + 1):
            number = folder.split(".")[0]
            Image.new("RGB", (40, 40), (100 * label, 40 * i, 0)).save(root / folder / f"{number}_{i:04d}.jpg")
    return root


def caltech_root(tmp_path, per_class=2):
    write_folders(tmp_path / "caltech256" / "256_ObjectCategories", per_class=per_class)
    return tmp_path


def test_different_datasets_never_share_a_key(tmp_path):
    datasets = [ShapesDataset("train", n_per_class=2), ShapesDataset("train", n_per_class=3),
                ShapesDataset("train", n_per_class=2, seed=1), ShapesDataset("heldout", n_per_class=2),
                ShapesDataset("train", n_per_class=2, image_size=48),
                ShapesDataset("train", n_per_class=2, transform=ToTensor()),
                ImageFolderCaptions(write_folders(tmp_path / "a")),
                ImageFolderCaptions(write_folders(tmp_path / "b")),  # the same pixels, other files
                ImageFolderCaptions(write_folders(tmp_path / "c", per_class=3)),
                caltech256(caltech_root(tmp_path / "d"), download=False),
                caltech256(caltech_root(tmp_path / "e", per_class=1), download=False),
                Subset(ShapesDataset("train", n_per_class=2), [0, 1]),
                Subset(ShapesDataset("train", n_per_class=2), [0, 2]),
                ConcatDataset([ShapesDataset("train", n_per_class=2), ShapesDataset("heldout", n_per_class=2)]),
                TensorDataset(torch.zeros(2, 3, 4, 4), torch.arange(2))]
    keys = [items_key(dataset) for dataset in datasets]
    assert None not in keys
    for (i, a), (j, b) in itertools.combinations(enumerate(keys), 2):
        assert a != b, (datasets[i], datasets[j])


def test_the_same_dataset_built_again_keeps_its_key(tmp_path):
    root = caltech_root(tmp_path)
    write_folders(tmp_path / "folders")
    for build in (lambda: ShapesDataset("all", n_per_class=2, transform=ToTensor()),
                  lambda: ImageFolderCaptions(tmp_path / "folders"),
                  lambda: caltech256(root, download=False)):
        assert items_key(build()) == items_key(build())


def test_a_file_replaced_on_disk_changes_the_key(tmp_path):
    root = caltech_root(tmp_path)
    before = items_key(caltech256(root, download=False))
    path = caltech256(root, download=False).image_paths()[0]
    Image.new("RGB", (41, 40), (0, 0, 255)).save(path)
    os.utime(path, ns=(1, 1))
    assert items_key(caltech256(root, download=False)) != before


def test_caltech_image_paths_are_the_files_torchvision_opens(tmp_path):
    dataset = caltech256(caltech_root(tmp_path), download=False)
    assert isinstance(dataset, Caltech256Captions)
    assert len(dataset.image_paths()) == len(dataset) == 4
    for path, (image, label) in zip(dataset.image_paths(), dataset):
        with Image.open(path) as expected:
            assert image.tobytes() == expected.convert("RGB").tobytes() and f".{dataset.classes[label]}" in path


def test_any_dataset_with_a_cache_key_is_cacheable_and_its_type_is_part_of_the_key():
    class Numbers(Dataset):
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, index):
            return torch.full((3, 4, 4), float(index)), 0

        def cache_key(self):
            return f"n={self.n}"

    class OtherNumbers(Numbers):
        pass

    assert items_key(Numbers(3)) == items_key(Numbers(3)) != items_key(Numbers(4))
    assert items_key(OtherNumbers(3)) != items_key(Numbers(3))
