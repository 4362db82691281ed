import contextlib
import builtins
import io

import pytest
import torch

from clip_helpers import device

CPUINFO = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nbugs\t\t: spectre_v1\n\n"


@pytest.fixture
def cpuinfo(monkeypatch):
    """Sets what reading /proc/cpuinfo returns (a text, or an OSError); other files open as usual."""
    real_open, contents = builtins.open, {}

    def fake_open(path, *args, **kwargs):
        if str(path) != "/proc/cpuinfo":
            return real_open(path, *args, **kwargs)
        if isinstance(contents["text"], Exception):
            raise contents["text"]
        return io.StringIO(contents["text"])

    monkeypatch.setattr(builtins, "open", fake_open)
    return lambda text: contents.update(text=text)


@pytest.mark.parametrize("extra, expected", [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512_vnni", False),
                                             ("", False)])
def test_cpu_has_bf16_reads_the_cpus_flags(cpuinfo, extra, expected):
    cpuinfo(CPUINFO.format(extra=extra))
    assert device.cpu_has_bf16() is expected


def test_no_cpuinfo_means_no_bf16(cpuinfo):
    cpuinfo(PermissionError(13, "Permission denied", "/proc/cpuinfo"))  # e.g. a sandbox, or not Linux
    assert device.cpu_has_bf16() is False


def test_get_device_follows_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.get_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.get_device() == "cuda"


def test_the_cpu_autocasts_to_bf16_only_where_its_flags_say_so(cpuinfo, mini, generator):
    a = torch.randn(4, 4, generator=generator)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    cpuinfo(CPUINFO.format(extra="avx512_bf16"))
    assert device.autocast_dtype("cpu") == torch.bfloat16
    with torch.no_grad(), device.autocast("cpu"):
        assert (a @ a).dtype == torch.bfloat16
        assert mini.encode_image(images).dtype == torch.bfloat16  # the model's own forward, not only a matmul
    cpuinfo(CPUINFO.format(extra=""))
    assert device.autocast_dtype("cpu") is None
    with torch.no_grad(), device.autocast("cpu"):
        assert (a @ a).dtype == torch.float32
        assert mini.encode_image(images).dtype == torch.float32
    with device.autocast("cpu", enabled=False):
        assert (a @ a).dtype == torch.float32


def test_bf16_autocast_stays_close_to_fp32(mini, generator):
    """What the choice costs: bf16 keeps 8 bits of mantissa, so features agree to about 1e-2, not exactly."""
    images = torch.randn(4, 3, 32, 32, generator=generator)
    with torch.no_grad():
        fp32 = mini.encode_image(images)
        with device.autocast("cpu", dtype=torch.bfloat16):
            bf16 = mini.encode_image(images).float()
    assert not torch.equal(bf16, fp32)
    assert torch.nn.functional.cosine_similarity(bf16, fp32).min() > 0.99


def test_cuda_gets_bf16_where_supported_else_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert device.autocast_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert device.autocast_dtype("cuda:0") == torch.float16  # a device index still counts as CUDA


def test_autocast_takes_an_explicit_dtype(cpuinfo, generator):
    a = torch.randn(4, 4, generator=generator)
    cpuinfo(CPUINFO.format(extra=""))
    with device.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with device.autocast("cpu", enabled=False, dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.float32


def test_get_device_picks_mps_on_apple_silicon_when_there_is_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.get_device() == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.get_device() == "cuda"  # a CUDA GPU wins over mps
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device.get_device() == "cpu"


def test_mps_autocasts_to_fp16_with_a_scaler_and_never_to_bf16(monkeypatch):
    monkeypatch.setattr(device, "mps_autocasts_fp16", lambda: True)
    assert device.autocast_dtype("mps") == torch.float16
    assert device.amp_dtype("mps", "auto") == torch.float16
    assert device.make_scaler("mps", "auto").is_enabled()  # fp16's small range needs the scaler
    assert not device.make_scaler("mps", None).is_enabled()
    monkeypatch.setattr(device, "mps_autocasts_fp16", lambda: False)  # a torch without mps autocast: fp32
    assert device.autocast_dtype("mps") is None
    assert isinstance(device.autocast("mps"), contextlib.nullcontext)
