import torch
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers.features import encode_images


def test_features_equal_encode_image_and_are_cached(mini, generator, tmp_path, monkeypatch):
    images = torch.randn(6, 3, 32, 32, generator=generator)
    loader = DataLoader(TensorDataset(images, torch.arange(6)), batch_size=4)
    image_features, labels = encode_images(mini, loader, cache_dir=tmp_path, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(image_features, mini.encode_image(images), atol=1e-5, rtol=1e-4)
    assert labels.tolist() == list(range(6))
    assert len(list(tmp_path.glob("*.pt"))) == 1

    monkeypatch.setattr(mini, "encode_image", lambda images: (_ for _ in ()).throw(AssertionError("not cached")))
    cached_features, cached_labels = encode_images(mini, loader, cache_dir=tmp_path, progress=False)
    assert torch.equal(cached_features, image_features) and torch.equal(cached_labels, labels)


def test_cache_key_changes_with_the_model(mini, generator, tmp_path):
    from clip_helpers.models import build_random_clip
    loader = DataLoader(TensorDataset(torch.randn(2, 3, 32, 32, generator=generator), torch.arange(2)), batch_size=2)
    first, _ = encode_images(mini, loader, cache_dir=tmp_path, progress=False)
    second, _ = encode_images(build_random_clip("mini", seed=3), loader, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.pt"))) == 2 and not torch.allclose(first, second)
