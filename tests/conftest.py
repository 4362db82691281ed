import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from clip_helpers.models import build_random_clip  # noqa: E402


@pytest.fixture(scope="session")
def mini():
    """A randomly initialised mini-CLIP; tests must not train it in place (copy it first)."""
    return build_random_clip("mini", seed=0)


@pytest.fixture(scope="session")
def vit_b32():
    """ViT-B/32 with random weights: the real architecture without the download."""
    return build_random_clip("ViT-B/32", seed=0)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
