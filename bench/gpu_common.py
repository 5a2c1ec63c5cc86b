"""What both GPU benchmarks share: a device sync and the bf16 matmul peak they divide by."""

import time

import torch


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_peak(dev: torch.device, dtype: torch.dtype, n: int, iters: int) -> float:
    """Achieved FLOP/s of an n x n x n matmul in ``dtype`` on ``dev``, measured in this run (3 warm-up
    products, then ``iters`` timed): the denominator of every utilisation figure the benchmarks print."""
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(dev)
    return 2 * n**3 * iters / (time.perf_counter() - t0)
