"""The dataset registry: a teacher's own folder of photos opens like any named source."""
import pytest
from PIL import Image

from clip_helpers.data import ImageFolderCaptions, targets_of
from clip_helpers.sources import open_source, zero_shot_test_sets
from clip_helpers.text import CIFAR10_TEMPLATES


@pytest.fixture
def my_photos(tmp_path):
    """Two classes in the layout a teacher would make by hand: my_photos/<class>/<images>."""
    root = tmp_path / "my_photos"
    for class_name, colour, count in (("cat", "red", 3), ("dog", "blue", 2)):
        (root / class_name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (16, 16), colour).save(root / class_name / f"{i}.png")
    return root


def test_a_folder_of_class_folders_is_a_source(my_photos):
    opened = open_source(str(my_photos))
    assert opened.class_names == ["cat", "dog"] == ImageFolderCaptions(my_photos).classes
    assert sorted(targets_of(opened.dataset)) == [0, 0, 0, 1, 1]
    image, label = opened.dataset[0]
    assert image.size == (16, 16) and opened.class_names[label] == "cat"
    assert opened.templates == CIFAR10_TEMPLATES and opened.train_templates == ["{}"]
    assert not opened.has_test_split  # one pool: data.split cuts it


def test_a_folder_source_takes_n_per_class_and_a_transform(my_photos):
    opened = open_source(str(my_photos), "test", n_per_class=1, transform=lambda image: image.size)
    assert sorted(targets_of(opened.dataset)) == [0, 1]
    assert opened.dataset[0][0] == (16, 16)
    test_sets = zero_shot_test_sets(str(my_photos), 1)
    assert list(test_sets.datasets) == ["my_photos test"] and test_sets.class_names == ["cat", "dog"]
    assert len(test_sets.datasets["my_photos test"]) == 2  # one image of each class


def test_an_unknown_source_names_the_choices_and_the_folder_layout(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown source 'cifar100'.*one sub-folder of images per class"):
        open_source("cifar100", data_dir=tmp_path)
    with pytest.raises(ValueError, match='split of "cifar10" must be "train" or "test"'):
        open_source("cifar10", "held_out", data_dir=tmp_path)


def test_shapes_splits_are_the_seen_and_the_held_out_pairs():
    seen, held_out = (open_source("shapes", split, n_per_class=1) for split in ("test", "held_out"))
    assert len(seen.dataset) == 30 and len(held_out.dataset) == 6
    assert seen.class_names == held_out.class_names and len(seen.class_names) == 36
    assert set(targets_of(seen.dataset)).isdisjoint(targets_of(held_out.dataset))
