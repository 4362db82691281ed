import urllib.error

import pytest
import torch

from clip_helpers import downloads, models
from clip_helpers.models import build_random_clip, load_clip, model_summary


def test_vit_b32_summary_matches_the_report(vit_b32):
    # The report prints these for the pretrained ViT-B/32; the architecture alone fixes them.
    assert model_summary(vit_b32) == {"params": 151_277_313, "input_resolution": 224,
                                      "context_length": 77, "vocab_size": 49408}


def test_mini_is_small_fp32_and_deterministic():
    model, preprocess = load_clip("mini", device="cpu")
    summary = model_summary(model)
    assert summary["input_resolution"] == 32 and summary["context_length"] == models.MINI_CLIP["context_length"]
    assert summary["params"] < 6_000_000
    assert all(p.dtype == torch.float32 for p in model.parameters())
    again = build_random_clip("mini")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(build_random_clip("mini", seed=1).text_projection, model.text_projection)


def test_preprocess_gives_model_sized_tensors():
    from skimage import data
    from PIL import Image
    model, preprocess = load_clip("mini", device="cpu")
    image = preprocess(Image.fromarray(data.astronaut()))
    assert image.shape == (3, 32, 32)
    assert model.encode_image(image[None]).shape == (1, models.MINI_CLIP["embed_dim"])


def test_state_dict_checkpoint_round_trip(tmp_path, mini):
    """openai-clip's own loader fails on a plain state dict (EOFError); ours loads it exactly, in fp32."""
    path = tmp_path / "mini.pt"
    torch.save(mini.state_dict(), path)
    loaded, preprocess = load_clip(str(path), device="cpu")
    for key, value in mini.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key  # exact: no fp16 rounding on the way
    assert loaded.visual.input_resolution == 32


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_jit_archive_loads_like_openais_files(tmp_path, mini, generator):
    """OpenAI ships traced (JIT) archives; a traced mini-CLIP stands in for one."""
    images = torch.randn(2, 3, 32, 32, generator=generator)
    from clip_helpers.text import tokenize
    tokens = tokenize(mini, ["a red circle", "a blue star"])
    path = tmp_path / "mini-jit.pt"
    torch.jit.save(torch.jit.trace(mini, (images, tokens)), str(path))
    loaded, _ = load_clip(str(path), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, tokens)[0], mini(images, tokens)[0])


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="ViT-B/32") as error:
        load_clip("ViT-B/33")
    assert "mini" in str(error.value)


def test_failed_download_names_url_file_and_offline_alternative(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(RuntimeError) as error:
        load_clip("ViT-B/32", device="cpu", download_root=tmp_path / "weights")
    message = str(error.value)
    assert "https://openaipublic.azureedge.net/clip/models/" in message
    assert str(tmp_path / "weights" / "ViT-B-32.pt") in message
    assert "offline" in message and "mini" in message


def test_weights_file_and_cache_check(tmp_path):
    assert downloads.weights_file("ViT-B/32", tmp_path).name == "ViT-B-32.pt"
    assert not downloads.weights_cached("ViT-B/32", tmp_path)
    (tmp_path / "ViT-B-32.pt").write_bytes(b"x")
    assert downloads.weights_cached("ViT-B/32", tmp_path)
    assert not downloads.weights_cached("mini", tmp_path)


# ---------------------------------------------------------------- what a wrong file is

import numpy as np  # noqa: E402
import torchvision  # noqa: E402


def refusal(path):
    with pytest.raises(ValueError) as error:
        load_clip(str(path), device="cpu")
    return str(error.value)


def test_wrong_files_get_a_message_that_says_what_they_are(tmp_path, mini):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "empty (0 bytes)" in refusal(empty)

    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4000))
    message = refusal(noise)
    assert "not a model file" in message and "weights_only=False" not in message

    truncated = tmp_path / "truncated.pt"
    torch.save(mini.state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100_000])
    assert "truncated or damaged" in refusal(truncated)

    resnet = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    message = refusal(resnet)
    assert "not those of a CLIP model" in message and "conv1.weight" in message

    history = tmp_path / "history.csv"
    history.write_text("epoch,train_loss,val_loss\n1,2.3,2.1\n")
    message = refusal(history)
    assert "text file starting 'epoch,train_loss,val_loss'" in message and "history.csv the metrics" in message


def test_a_training_checkpoint_points_to_model_pt(tmp_path, mini):
    """The kit's own checkpoint.pt: the model's weights plus the optimizer's state (and, today, numpy's RNG)."""
    plain = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "model": mini.state_dict(), "optimizer": {"state": {}, "param_groups": []}}, plain)
    message = refusal(plain)
    assert "training checkpoint (epoch 3" in message and "model.pt" in message and "'model' entry" in message
    with_objects = tmp_path / "checkpoint-rng.pt"
    torch.save({"epoch": 3, "model": mini.state_dict(), "rng": np.random.get_state()}, with_objects)
    message = refusal(with_objects)
    assert "tensors only" in message and "model.pt holds the weights" in message


def test_archive_problem_reads_only_the_zip_directory(tmp_path, mini):
    path = tmp_path / "ViT-B-32.pt"
    torch.save({"x": torch.zeros(3)}, path)
    assert downloads.archive_problem(path) is None
    whole = path.read_bytes()
    path.write_bytes(whole[:-30])
    assert "truncated" in downloads.archive_problem(path)
    path.write_bytes(b"")
    assert "empty" in downloads.archive_problem(path)
