import torch

from clip_helpers import device


def test_get_device_follows_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.get_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.get_device() == "cuda"


def test_autocast_dtype_choices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert device.autocast_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert device.autocast_dtype("cuda:0") == torch.float16
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert device.autocast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert device.autocast_dtype("cpu") is None


def test_autocast_context_really_casts(monkeypatch):
    a = torch.randn(4, 4)
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    with device.autocast("cpu"):
        assert (a @ a).dtype == torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    with device.autocast("cpu"):
        assert (a @ a).dtype == torch.float32
    with device.autocast("cpu", enabled=False):
        assert (a @ a).dtype == torch.float32


def test_autocast_takes_an_explicit_dtype(monkeypatch):
    a = torch.randn(4, 4)
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    with device.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with device.autocast("cpu", enabled=False, dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.float32
