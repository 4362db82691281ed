"""Image inputs a teacher or a phone hands the kit: look-alike class folders, dotted names, folders named like a
source, rotated and float images, absurd shapes, other file types, and temporary files of killed writes."""
import os
import subprocess
import sys
import time
import warnings

import clip
import numpy as np
import pytest
import torch
from PIL import Image

from clip_helpers import features, files, photos
from clip_helpers.data import ImageFolderCaptions, caltech256, class_name
from clip_helpers.images import to_rgb
from clip_helpers.sources import open_source
from clip_helpers.zeroshot import check_classes_and_templates


def square(path, colour="red", size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def load(root):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = ImageFolderCaptions(root)
    return dataset, [str(w.message) for w in caught]


# ---------------------------------------------------------------- names CLIP's tokenizer reads alike

def test_class_folders_that_clip_reads_as_one_name_are_refused_by_folder(tmp_path):
    for folder in ("cat", "Cat", "cat_", "dog"):
        square(tmp_path / folder / "1.png")
    captions = [f"a photo of a {name}." for name in ("cat", "Cat", "cat ")]
    assert len({tuple(row.tolist()) for row in clip.tokenize(captions)}) == 1  # the premise: one caption to CLIP
    with pytest.raises(ValueError, match=r"\['Cat', 'cat', 'cat_'\].*Rename or merge those folders"):
        ImageFolderCaptions(tmp_path)


def test_zero_shot_refuses_class_names_whose_captions_tokenize_alike():
    with pytest.raises(ValueError, match=r"repeats \['Dog', 'dog'\]"):
        check_classes_and_templates(["Dog", "cat", "dog"], ["a photo of a {}.", "a drawing of the {}."])
    assert check_classes_and_templates(["hot dog", "dog"], ["a photo of a {}."])[0] == ["hot dog", "dog"]


# ---------------------------------------------------------------- class names from folder names

@pytest.mark.parametrize("folder, expected", [
    ("St. Bernard", "St. Bernard"), ("Washington D.C.", "Washington D.C."), ("cat.", "cat."),
    ("001.ak47", "ak47"), ("101.St. Bernard", "St. Bernard"), ("1.5 litre bottle", "1.5 litre bottle"),
    ("cat_", "cat"), ("golden__retriever", "golden retriever"),
])
def test_class_name_drops_only_a_leading_number(folder, expected):
    assert class_name(folder) == expected


@pytest.mark.parametrize("folder", ["001.", "___", "-101", "002.-_"])
def test_an_empty_class_name_is_refused(folder):
    with pytest.raises(ValueError, match=f"Folder {folder!r} gives an empty class name.*rename it"):
        class_name(folder)


# ---------------------------------------------------------------- a folder named like a source

@pytest.fixture
def teacher(tmp_path, monkeypatch):
    """A teacher's ./photos/{cat,dog}, in the folder they run from."""
    monkeypatch.chdir(tmp_path)
    for colour, folder in (("red", "cat"), ("blue", "dog")):
        square(tmp_path / "photos" / folder / "1.png", colour)
    return tmp_path


def test_a_source_name_that_is_also_a_folder_here_is_refused_with_both_spellings(teacher):
    with pytest.raises(ValueError, match=r"'photos' is both.*Write \./photos .*for your folder, or kit:photos"):
        open_source("photos", data_dir=teacher / "data")
    assert open_source("./photos").class_names == ["cat", "dog"]  # a path means the folder
    kit = open_source("kit:photos", data_dir=teacher / "data")  # the prefix means the kit's source
    assert kit.class_names == [name for name, _ in photos.PHOTOS.values()]
    assert sorted(os.listdir(teacher / "photos")) == ["cat", "dog"]


def test_the_command_line_refuses_the_ambiguous_name_at_parse_time(teacher, capsys):
    from clip_helpers.training.finetune import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "photos"])
    assert "Write ./photos" in capsys.readouterr().err
    assert parse_args(["--dataset", "kit:photos"]).dataset == "kit:photos"
    assert parse_args(["--dataset", "./photos"]).dataset == "./photos"


def test_write_photos_adds_nothing_to_a_folder_it_did_not_make(tmp_path):
    square(tmp_path / "photos" / "cat" / "1.png")
    with pytest.raises(FileExistsError, match=r"not the kit's photos folder.*give that folder's path"):
        photos.write_photos(tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in sorted((tmp_path / "photos").rglob("*"))] == [
        "photos/cat", "photos/cat/1.png"]


def test_write_photos_completes_a_folder_an_earlier_version_wrote(tmp_path):
    root = photos.write_photos(tmp_path)
    (root / photos.MARKER).unlink()  # as an earlier version left it: no marker, some photos missing
    (root / "002.cat" / "chelsea.png").unlink()
    assert photos.write_photos(tmp_path) == root and len(ImageFolderCaptions(root)) == 8


# ---------------------------------------------------------------- pixels: orientation, float images

def test_exif_orientation_is_applied_when_an_image_is_loaded(tmp_path):
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16, 0] = 255  # left half red, right half blue: a rotation shows
    pixels[:, 16:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a phone held upright writes it
    (tmp_path / "phone").mkdir()
    Image.fromarray(pixels).save(tmp_path / "phone" / "1.png", exif=exif)
    image, _ = ImageFolderCaptions(tmp_path)[0]
    assert np.array_equal(np.asarray(image), np.rot90(pixels, k=-1))  # clockwise, by numpy


def test_float_images_in_0_to_1_are_scaled_like_16_bit_ones(tmp_path):
    gradient = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    expected = np.round(gradient.astype(np.float64) * 255).astype(np.uint8)  # 1.0 -> 255, by hand
    Image.fromarray(gradient).save(tmp_path / "gradient.tif")
    with Image.open(tmp_path / "gradient.tif") as image:
        assert image.mode == "F"
        rgb = to_rgb(image)
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), np.repeat(expected[..., None], 3, axis=2))


def test_a_float_image_with_nan_pixels_is_skipped_with_the_reason(tmp_path):
    square(tmp_path / "cat" / "fine.png")
    pixels = np.full((16, 16), 0.5, dtype=np.float32)
    pixels[3, 4] = np.nan
    Image.fromarray(pixels).save(tmp_path / "cat" / "nan.tif")
    dataset, _ = load(tmp_path)
    assert len(dataset) == 1
    assert dataset.skip_reasons[str(tmp_path / "cat" / "nan.tif")].startswith("non-finite pixels")


# ---------------------------------------------------------------- shapes clip cannot resize cheaply

def test_images_of_an_absurd_aspect_ratio_are_skipped_and_counted_before_resizing(tmp_path):
    square(tmp_path / "cat" / "fine.png")
    Image.new("L", (40000, 1)).save(tmp_path / "cat" / "line.png")  # 8960000x224 after clip's Resize
    Image.new("RGB", (20, 1000)).save(tmp_path / "cat" / "tall.png")  # 50:1
    Image.new("RGB", (400, 20)).save(tmp_path / "cat" / "panorama.png")  # 20:1 stays
    dataset, messages = load(tmp_path)
    assert [os.path.basename(path) for path, _ in dataset.samples] == ["fine.png", "panorama.png"]
    line = str(tmp_path / "cat" / "line.png")
    assert dataset.skip_reasons[line].startswith("extreme aspect ratio (40000x1 pixels")
    assert "8960000x224" in dataset.skip_reasons[line]
    assert any("skipped 2 file(s)" in m and "2 extreme aspect ratio" in m for m in messages), messages


def test_caltech256_skips_images_of_an_absurd_aspect_ratio_with_the_reason(tmp_path):
    folder = tmp_path / "caltech256" / "256_ObjectCategories" / "001.ak47"
    square(folder / "001_0001.jpg")
    Image.new("RGB", (40000, 1)).save(folder / "001_0002.jpg")
    with pytest.warns(UserWarning, match="left out 1 unreadable or unusable"):
        dataset = caltech256(root=tmp_path, download=False)
    assert len(dataset) == 1 and dataset[0][0].size == (16, 16)
    assert list(dataset.skip_reasons) == [str(folder / "001_0002.jpg")]
    assert dataset.skip_reasons[str(folder / "001_0002.jpg")].startswith("extreme aspect ratio (40000x1 pixels")


# ---------------------------------------------------------------- files left out are listed

def test_files_of_other_types_are_listed_with_a_reason_and_jfif_is_read(tmp_path):
    square(tmp_path / "cat" / "1.png")
    Image.new("RGB", (16, 16), "red").save(tmp_path / "cat" / "2.jfif", format="JPEG")
    for name in ("3.heic", "4.svg"):
        (tmp_path / "cat" / name).write_bytes(b"not decoded by PIL")
    (tmp_path / "cat" / "more").mkdir()
    dataset, messages = load(tmp_path)
    assert [os.path.basename(path) for path, _ in dataset.samples] == ["1.png", "2.jfif"]
    reasons = {os.path.basename(path): reason for path, reason in dataset.skip_reasons.items()}
    assert reasons["3.heic"].startswith("not an image type the kit reads (.heic")
    assert reasons["4.svg"].startswith("not an image type the kit reads (.svg")
    assert reasons["more"].startswith("a folder inside a class folder")
    assert any("skipped 3 file(s)" in m for m in messages), messages


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_a_feature_cache_write_removes_only_abandoned_temporaries_of_the_kit(tmp_path):
    hours_ago = time.time() - 2 * 3600
    days_ago = time.time() - 2 * 24 * 3600
    gone = dead_pid()
    kept = {f".a.pt.{os.getpid()}.tmp": hours_ago,  # its writer (this process) still runs
            f".b.pt.{gone}.tmp": time.time(),  # too recent: a writer on another machine may be at work
            "notes.tmp": days_ago}  # not a name the kit writes
    removed = {f".c.pt.{gone}.tmp": hours_ago,  # its writer is gone
               "label-0123456789.ptk2j3h4l5.tmp": days_ago}  # tempfile.mkstemp's name, as the cache used to write
    for name, mtime in {**kept, **removed}.items():
        (tmp_path / name).write_bytes(b"half a file")
        os.utime(tmp_path / name, (mtime, mtime))
    image_features, labels = torch.randn(3, 4), torch.arange(3)
    features.save_cache(tmp_path / "cache.pt", "key", image_features, labels)
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, "cache.pt"])
    assert features.load_cached(tmp_path / "cache.pt", "key", 3, 4)[0].equal(image_features)
    assert files.remove_abandoned_temporaries(tmp_path) == []
