import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from clip_helpers.models import build_random_clip  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load_tool(name, folder="tools"):
    """The project's script <folder>/<name>.py as a module (tools/ and benchmarks/ are no packages)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark():
    """benchmarks/finetune_speed.py as a module."""
    return load_tool("finetune_speed", "benchmarks")


@pytest.fixture(scope="session")
def mini():
    """A randomly initialised mini-CLIP; tests must not train it in place (copy it first)."""
    return build_random_clip("mini", seed=0)


@pytest.fixture(scope="session")
def vit_b32():
    """ViT-B/32 with random weights: the real architecture without the download."""
    return build_random_clip("ViT-B/32", seed=0)


@pytest.fixture(scope="session")
def tiny_data():
    """24 train and 8 val random 32-px images of 4 classes: enough for the training loop's mechanics."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(32, 3, 32, 32, generator=generator)
    labels = torch.arange(32) % 4
    return TensorDataset(images[:24], labels[:24]), TensorDataset(images[24:], labels[24:])


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
