import torch
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers.device import autocast
from clip_helpers.features import encode_datasets, encode_images


def test_features_equal_encode_image_and_are_cached(mini, generator, tmp_path, monkeypatch):
    images = torch.randn(6, 3, 32, 32, generator=generator)
    loader = DataLoader(TensorDataset(images, torch.arange(6)), batch_size=4)
    image_features, labels = encode_images(mini, loader, cache_dir=tmp_path, progress=False)
    with torch.no_grad(), autocast("cpu"):  # bf16 on a CPU that has it, as encode_images does
        torch.testing.assert_close(image_features, mini.encode_image(images).float(), atol=1e-5, rtol=1e-4)
    assert labels.tolist() == list(range(6))
    assert len(list(tmp_path.glob("*.pt"))) == 1

    monkeypatch.setattr(mini, "encode_image", lambda images: (_ for _ in ()).throw(AssertionError("not cached")))
    cached_features, cached_labels = encode_images(mini, loader, cache_dir=tmp_path, progress=False)
    assert torch.equal(cached_features, image_features) and torch.equal(cached_labels, labels)


def test_cache_key_changes_with_the_model(mini, generator, tmp_path):

    loader = DataLoader(TensorDataset(torch.randn(2, 3, 32, 32, generator=generator), torch.arange(2)), batch_size=2)
    first, _ = encode_images(mini, loader, cache_dir=tmp_path, progress=False)
    second, _ = encode_images(build_random_clip("mini", seed=3), loader, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.pt"))) == 2 and not torch.allclose(first, second)


# ---------------------------------------------------------------- the cache key and its checks

import copy  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
from torch.utils.data import Dataset, Subset  # noqa: E402

from clip_helpers.features import fingerprint  # noqa: E402
from clip_helpers.models import build_random_clip, preprocess_for  # noqa: E402
from clip_helpers.shapes import ShapesDataset  # noqa: E402


def shapes(split="train", seed=0, n_per_class=1):
    return ShapesDataset(split, n_per_class=n_per_class, seed=seed, transform=preprocess_for(32))


def fresh(model, dataset):
    """The features without any cache: what a cached call must return."""
    return encode_images(model, DataLoader(dataset, batch_size=64), progress=False)


def cached(model, dataset, cache_dir, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = encode_images(model, DataLoader(dataset, batch_size=64), cache_dir=cache_dir, progress=False, **kwargs)
    return result, [str(w.message) for w in caught]


def assert_same(result, expected):
    assert torch.equal(result[0], expected[0]) and torch.equal(result[1], expected[1])


def test_datasets_of_the_same_type_and_size_get_their_own_features(mini, tmp_path):
    """Shapes seed 0 / seed 1, and two equal-sized subsets, used to share one key and each other's features."""
    pairs = [(shapes(seed=0), shapes(seed=1)),
             (Subset(shapes(n_per_class=2), list(range(0, 60, 2))), Subset(shapes(n_per_class=2), list(range(1, 60, 2))))]
    for first, second in pairs:
        cached(mini, first, tmp_path)
        (result, _), expected = cached(mini, second, tmp_path), fresh(mini, second)
        assert_same(result, expected)
        assert not torch.equal(result[0], fresh(mini, first)[0])


def test_a_change_to_any_image_tower_tensor_changes_the_key(mini, tmp_path):
    dataset = shapes()
    cached(mini, dataset, tmp_path)
    changed = copy.deepcopy(mini)
    with torch.no_grad():  # the last element of the last tensor: the old key sampled 1 tensor in 16, 4 kB of each
        changed.visual.attnpool.c_proj.bias[-1] += 1.0
    (result, _) = cached(changed, dataset, tmp_path)
    assert_same(result, fresh(changed, dataset))
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_an_explicit_label_is_only_part_of_the_file_name(mini, tmp_path):
    """Notebook 07 used to pass a key without the weights: another model got the first one's features."""
    dataset, other = shapes(), build_random_clip("mini", seed=5)
    cached(mini, dataset, tmp_path, cache_label="ViT-B/32 cifar10 test")
    (result, _) = cached(other, dataset, tmp_path, cache_label="ViT-B/32 cifar10 test")
    assert_same(result, fresh(other, dataset))
    assert all(p.name.startswith("ViT-B_32_cifar10_test-") for p in tmp_path.glob("*.pt"))


def corrupt(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        entry = torch.load(path, weights_only=True)
        if how == "changed value":  # what a flipped byte in the data does, with the stored checksum unchanged
            entry["image_features"][0, 0] += 1
        elif how == "wrong shape":
            entry["image_features"] = entry["image_features"][:-1]
        elif how == "nan":
            entry["image_features"][0, 0] = float("nan")
        torch.save(entry, path)


@pytest.mark.parametrize("how", ["truncated", "empty", "changed value", "wrong shape", "nan"])
def test_a_damaged_cache_file_is_recomputed_with_a_warning(mini, tmp_path, how):
    dataset = shapes()
    cached(mini, dataset, tmp_path)
    (path,) = tmp_path.glob("*.pt")
    corrupt(path, how)
    result, messages = cached(mini, dataset, tmp_path)
    assert_same(result, fresh(mini, dataset))
    assert any(str(path) in m and "computing the features again" in m for m in messages), messages
    result, messages = cached(mini, dataset, tmp_path)  # rewritten whole: used again without a word
    assert_same(result, fresh(mini, dataset)) and not messages


def test_a_failed_write_leaves_no_partial_file_and_keeps_the_features(mini, tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")  # the cache is written through files.write_atomically, into an open temporary file
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    dataset = shapes()
    result, messages = cached(mini, dataset, tmp_path)
    assert_same(result, fresh(mini, dataset))
    assert list(tmp_path.iterdir()) == [] and any("No space left" in m for m in messages)


def test_a_dataset_that_cannot_be_identified_is_not_cached(mini, tmp_path):
    class Anonymous(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return torch.full((3, 32, 32), float(index)), index
    result, messages = cached(mini, Anonymous(), tmp_path)
    assert list(tmp_path.iterdir()) == [] and any("not cached" in m for m in messages)
    assert_same(result, fresh(mini, Anonymous()))


def test_the_key_covers_the_transform_and_is_stable_across_copies(mini):
    loader = DataLoader(shapes(), batch_size=64)
    assert fingerprint(mini, loader) == fingerprint(copy.deepcopy(mini), DataLoader(shapes(), batch_size=8))
    other_transform = ShapesDataset("train", n_per_class=1, transform=preprocess_for(40))
    assert fingerprint(mini, loader) != fingerprint(mini, DataLoader(other_transform, batch_size=64))


# ---------------------------------------------------------------- the model's mode is the caller's

def test_encode_images_runs_in_eval_mode_and_gives_the_caller_back_its_mode(mini, generator):
    images = torch.randn(6, 3, 32, 32, generator=generator)
    loader = DataLoader(TensorDataset(images, torch.arange(6)), batch_size=4)
    seen = []
    for training in (True, False):
        model = copy.deepcopy(mini).train(training)
        model.visual.register_forward_pre_hook(lambda module, args: seen.append(module.training))
        running_mean = model.visual.bn1.running_mean.clone()
        encode_images(model, loader, progress=False)
        assert all(module.training == training for module in model.modules())
        assert torch.equal(model.visual.bn1.running_mean, running_mean)  # BatchNorm statistics were not updated
    assert seen == [False] * 4  # two batches per call, each encoded in eval mode


def test_encode_images_gives_back_train_mode_when_a_batch_fails(mini):
    class Broken(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            if index == 2:
                raise OSError("image file is truncated")
            return torch.zeros(3, 32, 32), index
    model = copy.deepcopy(mini).train()
    with pytest.raises(OSError, match="truncated"):
        encode_images(model, DataLoader(Broken(), batch_size=2), progress=False)
    assert all(module.training for module in model.modules())  # a later training step must not run in eval mode


def test_encode_datasets_gives_each_dataset_its_own_features_and_cache_file(mini, generator, tmp_path, capsys):
    images = torch.randn(6, 3, 32, 32, generator=generator)
    datasets = {"seen pairs": TensorDataset(images[:4], torch.tensor([0, 1, 2, 3])),
                "held-out pairs": TensorDataset(images[4:], torch.tensor([5, 5]))}
    features = encode_datasets(mini, datasets, cache_dir=tmp_path, label="mini/0")
    for name, dataset in datasets.items():
        expected, labels = encode_images(mini, DataLoader(dataset, batch_size=128), progress=False)
        torch.testing.assert_close(features[name][0], expected)
        assert torch.equal(features[name][1], labels)
    names = sorted(path.name for path in tmp_path.glob("*.pt"))
    assert len(names) == 2 and all(name.startswith("mini-0-") and "/" not in name and " " not in name for name in names)
    assert "held-out pairs: 2 images of 1 classes" in capsys.readouterr().out
