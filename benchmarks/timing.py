"""How the benchmarks time work and count it: wall time that waits for the GPU, rounds in which the compared
functions alternate, the matrix-product rate (the ceiling), and a step's floating-point operations."""
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def seconds(fn, device):
    """Wall time of fn(), waiting for the GPU to finish so queued kernels are counted."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_seconds(fns, device, rounds, warmup):
    """Seconds each of `fns` took over `rounds` timed rounds after `warmup` untimed ones.

    They alternate within every round, so a slowdown of the machine hits all of them alike.
    """
    times = [0.0] * len(fns)
    for round_ in range(warmup + rounds):
        for i, fn in enumerate(fns):
            elapsed = seconds(fn, device)
            if round_ >= warmup:
                times[i] += elapsed
    return times


def matmul_probe(device, size, dtype):
    """(fn, gflop): ten `dtype` products of two size x size matrices, the work one call of fn does."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    return (lambda: [a @ b for _ in range(10)]), 2 * size ** 3 * 10 / 1e9


def matmul_gflop_per_s(device, size=2048, repeats=10, dtype=torch.float32):
    """The `dtype` matrix-product rate this device sustains (GFLOP/s): the ceiling for a ViT's training step."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b
    elapsed = seconds(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size ** 3 * repeats / elapsed / 1e9


def step_gflop(step):
    """Floating-point operations of one call of `step` (GFLOP), counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9
