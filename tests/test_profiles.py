import json
import socket
import time

import pytest
import torch

from clip_helpers import course, downloads, photos, profiles, sources
from clip_helpers.data import ImageFolderCaptions, classes_of, per_class_subset, targets_of
from clip_helpers.downloads import weights_file
from clip_helpers.shapes import ShapesDataset


@pytest.mark.parametrize("name", ["smoke", "offline", "quick", "full"])
def test_named_profiles_come_back_with_a_reason(name, tmp_path):
    profile, reason = profiles.get_profile(name, tmp_path)
    assert profile.name == name
    assert name in reason
    assert profile.model in ("mini", "ViT-B/32")
    assert name in profiles.describe(profile, reason) and profile.meaning in profiles.describe(profile, reason)


def test_only_the_pretrained_profiles_need_the_network():
    assert {name for name, p in profiles.PROFILES.items() if p.pretrained} == {"quick", "full"}
    assert all(p.zeroshot_source == "shapes" for p in profiles.PROFILES.values() if not p.pretrained)


def test_unknown_profile_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="smoke.*offline.*quick.*full"):
        profiles.get_profile("fast", tmp_path)


def test_auto_picks_quick_when_the_weights_are_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "can_reach", lambda *args, **kwargs: pytest.fail("no network check needed"))
    path = weights_file("ViT-B/32", tmp_path / "weights")
    path.parent.mkdir(parents=True)
    torch.save({"x": torch.zeros(1)}, path)  # a complete archive, as torch and TorchScript write them
    profile, reason = profiles.get_profile("auto", tmp_path)
    assert profile.name == "quick"
    assert str(path) in reason


@pytest.mark.parametrize("reachable, expected", [(True, "quick"), (False, "offline")])
def test_auto_without_cached_weights_asks_the_network(tmp_path, monkeypatch, reachable, expected):
    asked = []
    monkeypatch.setattr(profiles, "can_reach", lambda host, **kwargs: asked.append(host) or reachable)
    profile, reason = profiles.get_profile("auto", tmp_path)
    assert profile.name == expected
    assert asked == ["openaipublic.azureedge.net"]
    assert "auto" in reason and asked[0] in reason


def test_can_reach_a_listening_socket_and_not_a_closed_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        assert downloads.can_reach("127.0.0.1", port, timeout=2)
    finally:
        server.close()
    assert not downloads.can_reach("127.0.0.1", port, timeout=2)


def test_can_reach_gives_up_within_its_timeout(monkeypatch):
    def hangs_then_times_out(*args, **kwargs):  # like a DNS lookup that never answers
        time.sleep(5)
        raise socket.timeout("monkeypatched")

    monkeypatch.setattr(socket, "create_connection", hangs_then_times_out)
    start = time.time()
    assert not downloads.can_reach("example.org", timeout=0.2)
    assert time.time() - start < 2


def test_write_photos_makes_an_image_folder_of_the_eight_photos(tmp_path):
    root = photos.write_photos(tmp_path)
    dataset = ImageFolderCaptions(root)
    assert dataset.classes == [class_name for class_name, _ in photos.PHOTOS.values()]
    assert len(dataset) == 8 and not dataset.skipped
    image, label = dataset[1]
    assert image.mode == "RGB" and dataset.classes[label] == "cat"
    assert len(photos.photo_descriptions()) == 8
    modified = sorted(p.stat().st_mtime_ns for p in root.rglob("*.png"))
    photos.write_photos(tmp_path)  # a second call leaves the files alone
    assert sorted(p.stat().st_mtime_ns for p in root.rglob("*.png")) == modified


def test_per_class_subset_takes_n_of_each_class():
    dataset = ShapesDataset("train", n_per_class=5)
    subset = per_class_subset(dataset, 2, seed=0)
    labels = targets_of(subset)
    assert len(labels) == 2 * len(set(targets_of(dataset)))
    assert all(labels.count(label) == 2 for label in set(labels))
    assert subset.indices == sorted(subset.indices)
    assert per_class_subset(dataset, 2, seed=0).indices == subset.indices
    assert classes_of(subset) == dataset.classes


def test_examples_are_one_image_of_each_of_n_classes():
    images, labels, class_names = sources.examples("shapes", 6, seed=1)
    assert len(images) == len(set(labels)) == 6
    assert len(class_names) == 36


def test_project_path_resolves_from_the_notebooks_folder(tmp_path, monkeypatch):
    (tmp_path / "clip_helpers").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert course.project_path("data") == tmp_path / "data"
    assert course.project_path(tmp_path / "x") == tmp_path / "x"
    monkeypatch.chdir(tmp_path)
    assert course.project_path("data").resolve() == tmp_path / "data"


def test_save_metrics_writes_the_key_number(tmp_path):
    course.save_metrics(tmp_path, "07_zero_shot", "top-1 (%)", 91.25, profile="quick")
    record = json.loads((tmp_path / "metrics" / "07_zero_shot.json").read_text())
    assert record == {"notebook": "07_zero_shot", "key": "top-1 (%)", "value": 91.25, "profile": "quick"}


@pytest.mark.parametrize("damage", ["empty", "truncated"])
@pytest.mark.parametrize("reachable, expected", [(True, "quick"), (False, "offline")])
def test_auto_does_not_trust_a_damaged_cached_file(tmp_path, monkeypatch, damage, reachable, expected):
    """A zero-byte or truncated ViT-B-32.pt used to count as cached: "quick", then a crash offline."""
    monkeypatch.setattr(profiles, "can_reach", lambda host, **kwargs: reachable)
    path = weights_file("ViT-B/32", tmp_path / "weights")
    path.parent.mkdir(parents=True)
    torch.save({"x": torch.zeros(1000)}, path)
    path.write_bytes(b"" if damage == "empty" else path.read_bytes()[:2000])
    profile, reason = profiles.get_profile("auto", tmp_path)
    assert profile.name == expected
    assert f"the cached {path} is unusable" in reason and ("empty" in reason or "truncated" in reason)


def test_a_lessons_zero_shot_test_sets_are_the_profiles_images_drawn_with_seed_plus_one(tmp_path):
    lesson = course.start("07_zero_shot", "smoke", data_dir=tmp_path, out_dir=tmp_path / "out", seed=4,
                          interactive=False)
    test_sets, class_names, templates = lesson.zero_shot_test_sets(preprocess=None)
    direct = sources.zero_shot_test_sets("shapes", lesson.profile.test_per_class, seed=5)
    assert list(test_sets) == ["seen pairs", "held-out pairs"] and class_names == direct.class_names
    for name, dataset in test_sets.items():
        ours, theirs = dataset[0][0], direct.datasets[name][0][0]  # PIL images: the same pixels
        assert len(dataset) == len(direct.datasets[name]) and list(ours.getdata()) == list(theirs.getdata())
    other_seed = sources.zero_shot_test_sets("shapes", lesson.profile.test_per_class, seed=4)
    assert list(other_seed.datasets["seen pairs"][0][0].getdata()) != list(test_sets["seen pairs"][0][0].getdata())
