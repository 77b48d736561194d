"""The device's physical limits, measured in the same run as a benchmark: copy bandwidth and GEMM rates.

    python benchmarks/roofline.py --device cuda

The GPU benchmarks (``--device cuda`` of empirical.py, infinite.py, linearize.py) print this line first, so that
their ratios can be read against what the device itself reaches at that moment: the bandwidth of a device-to-device
copy of 1 GiB (bytes read + bytes written per second) and the rates of square float32 and float64 matrix products
(n = 8192 on CUDA, 1024 on CPU; TF32 off, so float32 is true float32). Each is the best of five synchronised runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable


def best_seconds(fn: Callable[[], object], device: str, repeats: int = 5) -> float:
    """Fastest of ``repeats`` synchronised runs of ``fn`` (after one warm-up run)."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _copy_rate(device: str, words: int) -> float:
    """Bytes read plus written per second by a device-to-device copy of ``words`` float32 entries."""
    import torch

    src = torch.ones(words, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * words * 4 / best_seconds(lambda: dst.copy_(src), device)


def roofline(device: str) -> dict[str, float]:
    """{'copy_GBps', 'gemm32_TFLOPs', 'gemm64_TFLOPs'} measured on ``device``."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
    result = {"copy_GBps": _copy_rate(device, (2**30 if cuda else 2**26) // 4) / 1e9}
    n = 8192 if cuda else 1024
    for dtype, name in ((torch.float32, "gemm32_TFLOPs"), (torch.float64, "gemm64_TFLOPs")):
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        seconds = best_seconds(lambda a=a, b=b: a @ b, device)
        result[name] = 2 * n**3 / seconds / 1e12
    return result


def describe(device: str) -> str:
    """One line: the device's name and its measured limits."""
    import torch

    limits = roofline(device)
    cuda = device.startswith("cuda")
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    return (
        f"roofline ({name}, measured now): copy {limits['copy_GBps']:.0f} GB/s, GEMM float32 "
        f"{limits['gemm32_TFLOPs']:.3g} TFLOP/s, float64 {limits['gemm64_TFLOPs']:.3g} TFLOP/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    print(describe(parser.parse_args().device))


if __name__ == "__main__":
    main()
