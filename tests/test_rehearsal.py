"""The online path (quick, full, make reproduce) runs end to end on the rehearsal's stand-ins, at smoke sizes.

The stand-ins are written once per session under pytest's tmp dir (the ViT-B/32 archive is ~350 MB).
"""
import importlib.util
import json
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image

from clip_helpers import downloads
from clip_helpers.replication import rehearsal, reproduce
from clip_helpers.data import caltech256, cifar10
from clip_helpers.downloads import weights_file
from clip_helpers.models import load_clip

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_notebooks)

# 08_mini_clip never touches the online path (the mini-CLIP on shapes in every profile; test_notebooks runs it),
# and under quick it trains the default mini-CLIP recipe for minutes; `make rehearse` runs it.
# full differs from quick only where it opens Caltech-256 (01, 05, and 11's batch of fine-tuning images) or sizes
# its test sets (04, 07; 09 and 10 size theirs the same way as 07, and 12 takes at most 30 images a class of
# either, so quick covers them).
ONLINE_NOTEBOOKS = {"quick": ["01", "02", "03", "04", "05", "06", "07", "09", "10", "11", "12"],
                    "full": ["01", "04", "05", "07", "11"]}
SMOKE_SIZES = {"quick": "quick:train_per_class=1,val_per_class=1,test_per_class=2,batch_size=8,num_epochs=1",
               "full": "full:train_per_class=1,val_per_class=1,test_per_class=2,batch_size=8,num_epochs=1"}


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    return rehearsal.build(tmp_path_factory.mktemp("rehearsal-data"), sizes="smoke")


@pytest.fixture(scope="session")
def stand_in_datasets(tmp_path_factory):
    """Only the CIFAR-10 and Caltech-256 stand-ins (no ViT-B/32 archive): what the dataset tests read."""
    root = tmp_path_factory.mktemp("rehearsal-datasets")
    sizes = rehearsal.SIZES["smoke"]
    rehearsal.write_cifar10(root, sizes["cifar_train_per_class"], sizes["cifar_test_per_class"])
    rehearsal.write_caltech256(root, sizes["caltech_per_class"], sizes["caltech_classes"])
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Downloads fail as they do offline."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def switch_on(monkeypatch):
    monkeypatch.setenv(downloads.SKIP_CHECKSUMS, "1")


@pytest.mark.slow
def test_stand_in_weights_load_through_clip_load_only_with_the_switch(stand_ins, no_network, monkeypatch):
    path = weights_file("ViT-B/32", stand_ins / "weights")
    archive = torch.jit.load(str(path), map_location="cpu")  # a TorchScript archive, as OpenAI ships
    assert {t.dtype for t in archive.state_dict().values() if t.is_floating_point()} >= {torch.float16}
    monkeypatch.delenv(downloads.SKIP_CHECKSUMS, raising=False)
    with pytest.raises(RuntimeError) as error:  # switch off: the SHA256 differs, clip.load re-downloads, fails
        load_clip("ViT-B/32", device="cpu", download_root=stand_ins / "weights")
    message = str(error.value)
    assert "openaipublic.azureedge.net" in message and str(path) in message and "offline" in message.lower()
    monkeypatch.setenv(downloads.SKIP_CHECKSUMS, "1")
    model, preprocess = load_clip("ViT-B/32", device="cpu", download_root=stand_ins / "weights")
    assert sum(p.numel() for p in model.parameters()) == 151_277_313
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp16 on disk, fp32 out
    fp16 = archive.state_dict()["visual.conv1.weight"]
    assert torch.equal(model.visual.conv1.weight, fp16.float())  # the very tensors of the archive


def test_without_the_switch_cifar10_stand_in_datasets_fail_like_a_missing_download(stand_in_datasets, no_network, monkeypatch):
    monkeypatch.delenv(downloads.SKIP_CHECKSUMS, raising=False)
    with pytest.raises(RuntimeError, match="cs.toronto.edu.*PROFILE=offline"):
        cifar10(stand_in_datasets, train=False)


def test_cifar10_stand_in_datasets_are_torchvision_files(stand_in_datasets, switch_on, no_network):
    test = cifar10(stand_in_datasets, train=False)
    assert test.classes == rehearsal.CIFAR10_LABEL_NAMES and len(test) == 20
    with open(stand_in_datasets / "cifar-10-batches-py" / "test_batch", "rb") as file:
        entry = pickle.load(file, encoding="latin1")
    assert entry["data"].dtype == np.uint8 and entry["data"].shape == (20, 3072)
    first = np.asarray(test[0][0])  # torchvision's image is the row reshaped CHW -> HWC
    assert np.array_equal(first, entry["data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert test.targets == entry["labels"] and len(cifar10(stand_in_datasets, train=True)) == 20


def test_caltech256_stand_in_datasets_have_the_real_folders_and_skip_the_truncated_jpeg(stand_in_datasets, no_network):
    folders = sorted(p.name for p in (stand_in_datasets / "caltech256" / "256_ObjectCategories").iterdir())
    assert len(folders) == 257 and folders[0] == "001.ak47" and folders[-1] == "257.clutter"
    assert "251.airplanes-101" in folders and sum(name.endswith("-101") for name in folders) == 30
    with pytest.warns(UserWarning, match="unreadable"):
        dataset = caltech256(stand_in_datasets)
    assert [Path(p).name for p in dataset.skipped] == ["001_0002.jpg"]
    assert len(dataset.classes) == 257 and dataset.classes[250] == "airplanes"
    with Image.open(stand_in_datasets / "caltech256" / "256_ObjectCategories" / "002.american-flag" / "002_0001.jpg") as image:
        assert image.mode == "L"  # stored grayscale, comes out RGB
    assert all(dataset[i][0].mode == "RGB" for i in range(len(dataset)))


def test_stamp_figure_adds_a_band_once(tmp_path):
    path = tmp_path / "figure.png"
    Image.new("RGB", (400, 100), "white").save(path)
    assert rehearsal.stamp_figure(path)
    with Image.open(path) as image:
        assert image.height > 100 and image.getpixel((2, 2)) == (200, 0, 0) and image.info["clip-kit"] == "rehearsal"
        height = image.height
    assert not rehearsal.stamp_figure(path)
    with Image.open(path) as image:
        assert image.height == height


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["quick", "full"])
def test_notebooks_run_in_the_rehearsal(profile, stand_ins, tmp_path):
    out = tmp_path / "out"
    args = ["--rehearsal", "--profile", SMOKE_SIZES[profile], "--data-dir", str(stand_ins), "--out", str(out),
            "--no-progress"] + [arg for prefix in ONLINE_NOTEBOOKS[profile] for arg in ("--only", prefix)]
    assert run_notebooks.main(args) == 0
    for path in sorted((out / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        assert "REHEARSAL" in notebook.cells[0].source, path.name
        printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
        assert f"Profile: {profile} (REHEARSAL" in printed
        assert json.loads((out / "metrics" / f"{path.stem}.json").read_text())["profile"] == profile
    assert len(list((out / "notebooks").glob("*.ipynb"))) == len(ONLINE_NOTEBOOKS[profile])
    figures = sorted((out / "figures").glob("*.png"))
    assert figures and all(Image.open(f).info.get("clip-kit") == "rehearsal" for f in figures)
    finetuned = json.loads((out / "metrics" / "05_fine_tune.json").read_text())
    assert len(finetuned["history"]) == 1  # the sizes reached the notebook: num_epochs=1, not the profile's
    printed = "".join(o.get("text", "") for c in nbformat.read(out / "notebooks" / "05_fine_tune.ipynb", as_version=4).cells
                      if c.cell_type == "code" for o in c.outputs)
    assert "batch size 8" in printed and "SIZES CHANGED" in printed


@pytest.mark.slow
def test_reproduce_runs_in_the_rehearsal_and_says_so(stand_ins, tmp_path):
    out = tmp_path / "outputs"
    reproduce.main(["--rehearsal", "--data-dir", str(stand_ins), "--out-dir", str(out), "--device", "cpu",
                    "--epochs", "1", "--batch-size", "4", "--train-size", "4", "--val-size", "4"])
    results = (out / "results.md").read_text()
    assert results.startswith("# clip-kit reproduction of the report's results - REHEARSAL")
    assert "| Model printout: params | 151,277,313 |" in results and "| 1 |" in results
    assert all(Image.open(out / "figures" / f"{name}.png").info.get("clip-kit") == "rehearsal"
               for name in ("fig10_training", "fig12_similarity"))


@pytest.mark.parametrize("switch", [None, "1"])
def test_a_missing_download_fails_at_once_naming_url_file_folder_and_offline_way(switch, tmp_path, no_network,
                                                                                  monkeypatch):
    monkeypatch.delenv(downloads.SKIP_CHECKSUMS, raising=False)
    if switch:
        monkeypatch.setenv(downloads.SKIP_CHECKSUMS, switch)  # the switch skips checksums, never a download
    with pytest.raises(RuntimeError) as error:
        load_clip("ViT-B/32", device="cpu", download_root=tmp_path / "weights")
    message = str(error.value)
    assert "https://openaipublic.azureedge.net/" in message and str(weights_file("ViT-B/32", tmp_path / "weights")) in message
    assert f"cache folder {tmp_path / 'weights'}" in message and "PROFILE=offline" in message
    with pytest.raises(RuntimeError, match=r"cs\.toronto\.edu.*PROFILE=offline"):
        cifar10(tmp_path, train=False)


def test_a_sized_profile_changes_only_the_sizes_and_says_so(tmp_path):
    from clip_helpers.profiles import PROFILES, get_profile

    profile, reason = get_profile("full:test_per_class=30,num_epochs=1", tmp_path)
    full = PROFILES["full"]
    assert (profile.name, profile.test_per_class, profile.num_epochs) == ("full", 30, 1)
    assert (profile.train_per_class, profile.finetune_source, profile.lr) == (full.train_per_class, full.finetune_source, full.lr)
    assert "SIZES CHANGED (test_per_class=30, num_epochs=1)" in profile.meaning and "test_per_class=30" in reason
    for bad in ("full:lr=1", "full:test_per_class=0", "full:test_per_class"):
        with pytest.raises(ValueError, match="size=positive integer"):
            get_profile(bad, tmp_path)
