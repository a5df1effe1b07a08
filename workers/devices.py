"""Device discovery and a device self-check. Runs inside Celery workers; plain data in, plain data out.

GPU memory is read through NVML (or nvidia-smi), never through torch.cuda, so the worker's parent process
does not create a CUDA context that its forked children could not use.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable

MB = 1024 * 1024


def _cuda_devices_nvml() -> list[dict] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            devices.append(
                {
                    "index": index,
                    "kind": "cuda",
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "total_mb": memory.total // MB,
                    "free_mb": memory.free // MB,
                }
            )
        return devices
    finally:
        pynvml.nvmlShutdown()


def _cuda_devices_smi() -> list[dict] | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    devices = []
    for line in out.strip().splitlines():
        index, name, total, free = (part.strip() for part in line.split(","))
        devices.append(
            {"index": int(index), "kind": "cuda", "name": name, "total_mb": int(total), "free_mb": int(free)}
        )
    return devices


def _cpu_device() -> dict:
    import psutil

    memory = psutil.virtual_memory()
    return {
        "index": 0,
        "kind": "cpu",
        "name": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "total_mb": memory.total // MB,
        "free_mb": memory.available // MB,
    }


def discover_devices() -> list[dict]:
    """CUDA devices with total and free memory, or the CPU when there is no GPU."""
    return _cuda_devices_nvml() or _cuda_devices_smi() or [_cpu_device()]


def device_check(*, size: int = 1024, iterations: int = 20, progress: Callable[[int, str], None] | None = None) -> dict:
    """Multiply two size×size matrices on the best device and report throughput: proof the device computes."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    started = time.perf_counter()
    for i in range(iterations):
        c = torch.matmul(a, b)
        if progress:
            progress(int(100 * (i + 1) / iterations), f"matmul {i + 1}/{iterations} on {device.type}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    flops = 2 * size**3 * iterations
    return {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "device_type": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "iterations": iterations,
        "seconds": round(elapsed, 4),
        "gflops": round(flops / elapsed / 1e9, 2),
        "checksum_finite": bool(torch.isfinite(c).all().item()),
    }
