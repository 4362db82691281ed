import os
import pickle
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as photos
from torch.utils.data import Subset
from torchvision.transforms import ToTensor

from clip_helpers.data import (CALTECH256_URL, ImageFolderCaptions, caltech256, cifar10, class_name, split,
                               targets_of)
from clip_helpers.shapes import ShapesDataset


def photo(name, size=48):
    return Image.fromarray(getattr(photos, name)()).resize((size, size))


def noise(seed, size=16):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A Caltech-style folder: real photos, odd colour modes, a corrupt and a truncated file, and clutter."""
    root = tmp_path_factory.mktemp("256_ObjectCategories")
    ak47, bat, frog, clutter = (root / name for name in ("001.ak47", "002.baseball-bat", "003.frog", "257.clutter"))
    for d in (ak47, bat, frog, clutter, root / ".ipynb_checkpoints", root / "004.empty"):
        d.mkdir()
    photo("astronaut").save(ak47 / "001_0001.jpg")
    photo("coffee").save(ak47 / "001_0002.png")
    photo("chelsea").convert("L").save(ak47 / "001_0003.jpg")
    photo("rocket").convert("CMYK").save(ak47 / "001_0004.jpg")
    rgba = photo("chelsea").convert("RGBA")
    rgba.putalpha(0)  # fully transparent: should come out white, not black
    rgba.save(bat / "002_0001.png")
    photo("coffee").convert("P").save(bat / "002_0002.gif")
    photo("astronaut").save(bat / "002_0003.JPEG")
    (bat / "002_0004.jpg").write_bytes(np.random.default_rng(0).bytes(2000))  # corrupt
    whole = ak47 / "001_0001.jpg"
    (bat / "002_0005.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # truncated
    (bat / "notes.txt").write_text("not an image")
    for i in range(30):
        noise(i).save(frog / f"003_{i:04d}.jpg")
    for i in range(5):
        noise(100 + i).save(clutter / f"257_{i:04d}.png")
    photo("astronaut").save(root / ".ipynb_checkpoints" / "x.jpg")
    (root / "004.empty" / "readme.txt").write_text("no images here")
    return root


def load(root, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = ImageFolderCaptions(root, **kwargs)
    return dataset, [str(w.message) for w in caught]


def test_class_names_come_from_folder_names(folder):
    dataset, _ = load(folder)
    assert dataset.classes == ["ak47", "baseball bat", "frog", "empty", "clutter"]  # labels follow the folders
    for path, label in dataset.samples:
        assert class_name(os.path.basename(os.path.dirname(path))) == dataset.classes[label]


@pytest.mark.parametrize("name, expected", [
    ("001.ak47", "ak47"), ("257.clutter", "clutter"), ("002.american-flag", "american flag"),
    ("251.airplanes-101", "airplanes"), ("golden_retriever", "golden retriever"), ("cats", "cats"),
])
def test_class_name(name, expected):
    assert class_name(name) == expected


def test_unreadable_files_are_skipped_with_one_warning(folder):
    dataset, messages = load(folder)
    bat = folder / "002.baseball-bat"
    unreadable = [str(bat / "002_0004.jpg"), str(bat / "002_0005.jpg")]
    other_files = [str(bat / "notes.txt"), str(folder / "004.empty" / "readme.txt")]  # listed too, with their reason
    assert dataset.skipped == sorted(unreadable + other_files)
    assert all(dataset.skip_reasons[path].startswith("not an image type") for path in other_files)
    skipped_warnings = [m for m in messages if "skipped" in m]
    assert len(skipped_warnings) == 1 and ".skipped" in skipped_warnings[0]
    assert "2 unreadable" in skipped_warnings[0] and "2 not an image type" in skipped_warnings[0]
    assert len(dataset) == 4 + 3 + 30 + 5 == len(dataset.targets)
    assert not any(path in dict(dataset.samples) for path in dataset.skipped)
    assert "notes.txt" not in str(dataset.samples) and ".ipynb_checkpoints" not in str(dataset.samples)


def test_clean_folder_gives_no_warning(tmp_path):
    (tmp_path / "001.frog").mkdir()
    noise(0).save(tmp_path / "001.frog" / "a.png")
    dataset, messages = load(tmp_path)
    assert messages == [] and dataset.skipped == [] and len(dataset) == 1


def test_every_image_comes_out_rgb(folder):
    dataset, _ = load(folder)
    for image, label in dataset:
        assert image.mode == "RGB" and isinstance(label, int)


def test_images_are_the_files_pixels(folder):
    dataset, _ = load(folder)
    paths = [path for path, _ in dataset.samples]
    coffee, _ = dataset[paths.index(str(folder / "001.ak47" / "001_0002.png"))]
    assert np.array_equal(np.asarray(coffee), np.asarray(photo("coffee")))  # png is lossless
    transparent, _ = dataset[paths.index(str(folder / "002.baseball-bat" / "002_0001.png"))]
    assert np.asarray(transparent).min() == 255
    gray, _ = dataset[paths.index(str(folder / "001.ak47" / "001_0003.jpg"))]
    r, g, b = np.asarray(gray, dtype=int).transpose(2, 0, 1)
    assert (r == g).all() and (g == b).all() and r.std() > 10


def test_transform_is_applied(folder):
    dataset, _ = load(folder, transform=ToTensor())
    image, _ = dataset[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 48, 48)


def test_samples_are_sorted(folder):
    dataset, _ = load(folder)
    frogs = [path for path, label in dataset.samples if label == 2]
    assert frogs == sorted(frogs) and len(frogs) == 30


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="001.ak47"):
        ImageFolderCaptions(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="001.ak47"):
        ImageFolderCaptions(tmp_path)
    (tmp_path / "001.ak47").mkdir()
    (tmp_path / "001.ak47" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="001.ak47"):
        ImageFolderCaptions(tmp_path)
    (tmp_path / "001.ak47" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="could be read"), pytest.warns(UserWarning, match="skipped 2"):
        ImageFolderCaptions(tmp_path)


def test_targets_of_reads_labels_without_the_images(folder):
    dataset, _ = load(folder)
    assert targets_of(dataset) == [label for _, label in dataset]
    shapes = ShapesDataset(n_per_class=2)
    assert targets_of(shapes) == [label for _, label in shapes]
    nested = Subset(Subset(dataset, [5, 0, 40, 7]), [3, 0, 2])
    assert targets_of(nested) == [label for _, label in nested]
    tensors = torch.utils.data.TensorDataset(torch.zeros(4, 3), torch.tensor([2, 0, 1, 2]))  # recipes.rendered's form
    assert targets_of(Subset(tensors, [3, 1])) == [label.item() for _, label in Subset(tensors, [3, 1])] == [2, 0]


def check_split(dataset, val_fraction, seed=0):
    train, val = split(dataset, val_fraction, seed)
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted(train.indices + val.indices) == list(range(len(dataset)))
    labels = np.array(targets_of(dataset))
    for label in np.unique(labels):
        n = (labels == label).sum()
        n_val = (labels[val.indices] == label).sum()
        if n >= 2:
            assert 1 <= n_val <= n - 1
        assert abs(n_val - n * val_fraction) <= 1
    return train, val


def test_split_is_stratified_disjoint_and_covering(folder):
    dataset, _ = load(folder)
    train, val = check_split(dataset, 0.2)
    assert len(val) == 1 + 1 + 6 + 1
    check_split(ShapesDataset(n_per_class=10), 0.25)
    check_split(ShapesDataset(n_per_class=3), 0.01)  # rounds to 0 per class, but every class still gets one


def test_split_is_deterministic_from_seed():
    shapes = ShapesDataset(n_per_class=10)
    assert split(shapes, 0.3, seed=1)[1].indices == split(shapes, 0.3, seed=1)[1].indices
    assert split(shapes, 0.3, seed=1)[1].indices != split(shapes, 0.3, seed=2)[1].indices


def test_a_class_with_one_item_goes_to_train():
    class Labels:
        targets = [0, 1, 1, 1, 1]

        def __len__(self):
            return 5
    train, val = split(Labels(), 0.5)
    assert 0 in train.indices and 0 not in val.indices


@pytest.mark.parametrize("val_fraction", [0, 1, -0.1, 1.5])
def test_split_refuses_impossible_fractions(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        split(ShapesDataset(n_per_class=2), val_fraction)


@pytest.fixture
def no_network(monkeypatch):
    """torchvision's downloads fail as they do offline; records which URLs were tried."""
    tried = []

    def fail(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fail)
    monkeypatch.setattr(urllib.request, "urlopen", fail)  # a safety net: nothing here may reach the network
    return tried


def assert_clear(error, url, folder):
    message = str(error.value)
    assert url in message and str(folder) in message
    assert "PROFILE=offline" in message and "clip_helpers.shapes" in message


def test_cifar10_offline_error_names_url_folder_and_alternative(tmp_path, no_network):
    with pytest.raises(RuntimeError) as error:
        cifar10(root=tmp_path)
    assert no_network == [torchvision.datasets.CIFAR10.url]
    assert_clear(error, no_network[0], tmp_path / "cifar-10-batches-py")
    assert isinstance(error.value.__cause__, urllib.error.URLError)
    with pytest.raises(RuntimeError) as error:
        cifar10(root=tmp_path, train=False, download=False)
    assert_clear(error, no_network[0], tmp_path / "cifar-10-batches-py")


def test_caltech256_offline_error_names_url_folder_and_alternative(tmp_path, no_network):
    with pytest.raises(RuntimeError) as error:
        caltech256(root=tmp_path)
    assert no_network == [CALTECH256_URL]  # the URL we print is the one torchvision really uses
    assert_clear(error, CALTECH256_URL, tmp_path / "caltech256" / "256_ObjectCategories")
    with pytest.raises(RuntimeError) as error:
        caltech256(root=tmp_path, download=False)
    assert_clear(error, CALTECH256_URL, tmp_path / "caltech256" / "256_ObjectCategories")


def test_caltech256_from_disk_is_rgb_with_classes(tmp_path, no_network):
    categories = tmp_path / "caltech256" / "256_ObjectCategories"
    for number, name, mode in [(1, "ak47", "L"), (2, "american-flag", "RGB"), (3, "backpack", "CMYK")]:
        (categories / f"{number:03d}.{name}").mkdir(parents=True)
        # torchvision rebuilds file names as <position of the folder>_<item>.jpg, so numbering must have no gaps
        for i in (1, 2):
            photo("chelsea").convert(mode).save(categories / f"{number:03d}.{name}" / f"{number:03d}_{i:04d}.jpg")
    dataset = caltech256(root=tmp_path, transform=ToTensor())
    assert no_network == [] and dataset.classes == ["ak47", "american flag", "backpack"]
    assert targets_of(dataset) == [0, 0, 1, 1, 2, 2] == [label for _, label in dataset]
    assert all(image.shape == (3, 48, 48) for image, _ in dataset)
    assert caltech256(root=tmp_path)[0][0].mode == "RGB"


def test_cifar10_from_disk_needs_no_network(tmp_path, no_network, monkeypatch):
    # Real CIFAR files are checked by md5; a fake copy in the same format only passes with the check disabled.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        (batches / name).write_bytes(pickle.dumps(batch))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    dataset = cifar10(root=tmp_path, train=False)
    assert no_network == [] and len(dataset) == 4
    assert targets_of(dataset) == [label for _, label in dataset]
    assert dataset[0][0].mode == "RGB" and dataset[0][0].size == (32, 32)


# ---------------------------------------------------------------- bad folders, files and class names

from clip_helpers.images import to_rgb  # noqa: E402


def test_16_bit_grayscale_is_scaled_not_clipped_to_white(tmp_path):
    """PIL's convert("RGB") clips 16-bit values at 255: a 0..65535 gradient came out almost all white."""
    gradient = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    expected = np.round(gradient / 257).astype(np.uint8)  # 65535 -> 255, by hand
    Image.fromarray(gradient).save(tmp_path / "gradient.png")
    with Image.open(tmp_path / "gradient.png") as image:
        assert image.mode.startswith("I")
        rgb = to_rgb(image)
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), np.repeat(expected[..., None], 3, axis=2))
    for values in (gradient.astype(">u2"), gradient.astype(np.int32)):  # modes I;16B and I
        assert np.array_equal(np.asarray(to_rgb(Image.fromarray(values)))[..., 0], expected)


@pytest.fixture
def messy(tmp_path, monkeypatch):
    """Class folders with a link to another class folder, broken links, a loose image, a hidden image, an
    empty class folder and an image over PIL's size limit."""
    root = tmp_path / "images"
    cat, dog, empty = root / "001.cat", root / "002.dog", root / "004.empty"
    for d in (cat, dog, empty):
        d.mkdir(parents=True)
    noise(0).save(cat / "a.png")
    noise(1, size=32).save(cat / "big.png")  # 1024 pixels, over the limit set below
    noise(2).save(cat / ".hidden.png")
    (cat / "gone.jpg").symlink_to(cat / "missing.jpg")
    noise(3).save(dog / "b.png")
    noise(4).save(dog / "c.png")
    (root / "000.alias").symlink_to(dog, target_is_directory=True)  # sorts first, yet the real folder keeps the files
    noise(5).save(root / "loose.png")
    (root / "ghost").symlink_to(root / "nowhere")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # PIL refuses images over twice this
    return root


def test_every_file_left_out_is_counted_with_its_reason(messy):
    dataset, messages = load(messy)
    assert dataset.classes == ["alias", "cat", "dog", "empty"]  # labels follow the folders, empty ones too
    assert dataset.samples == [(str(messy / "001.cat" / "a.png"), 1), (str(messy / "002.dog" / "b.png"), 2),
                               (str(messy / "002.dog" / "c.png"), 2)]
    reasons = dataset.skip_reasons
    assert sorted(reasons) == dataset.skipped == sorted(str(p) for p in [
        messy / "000.alias" / "b.png", messy / "000.alias" / "c.png", messy / "001.cat" / "big.png",
        messy / "001.cat" / "gone.jpg", messy / "loose.png", messy / "ghost"])
    assert reasons[str(messy / "000.alias" / "b.png")].startswith(f"duplicate of {messy / '002.dog' / 'b.png'}")
    assert reasons[str(messy / "001.cat" / "big.png")].startswith("too large for PIL")
    assert reasons[str(messy / "001.cat" / "gone.jpg")] == reasons[str(messy / "ghost")] == "broken link"
    assert reasons[str(messy / "loose.png")] == "not in a class folder"
    assert ".hidden" not in str(dataset.samples) + str(dataset.skipped)
    (skipped,) = [m for m in messages if "skipped" in m]
    assert "skipped 6 file(s)" in skipped and "2 duplicate" in skipped and "2 broken link" in skipped
    (empty,) = [m for m in messages if "no usable image" in m]
    assert "000.alias" in empty and "004.empty" in empty


def test_folders_that_give_the_same_class_name_are_refused_by_name(tmp_path):
    for folder in ("001.good", "009.good", "010.bad"):
        (tmp_path / folder).mkdir()
        noise(0).save(tmp_path / folder / "x.png")
    with pytest.raises(ValueError, match=r"'good': \['001.good', '009.good'\].*Rename or merge those folders"):
        ImageFolderCaptions(tmp_path)
