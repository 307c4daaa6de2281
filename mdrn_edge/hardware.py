"""Names of the hardware a figure was measured or a model trained on, for checkpoints, cards and reports, and the
memory a run may use and has used."""

from __future__ import annotations

import os
import platform
import resource
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# CPU flags (Linux /proc/cpuinfo names) that decide which kernels a CPU runtime can use; recorded in every
# benchmark report, and read by the backend choice instead of assuming a CPU
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                "amx_bf16", "amx_int8")


def cpu_features() -> list[str]:
    """Which of :data:`CPU_FEATURES` this CPU has (Linux; empty where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))))
    except (OSError, StopIteration):
        return []
    return [name for name in CPU_FEATURES if name in flags]


def device_name(device: "torch.device") -> str:
    """A torch device in words: the GPU's name, or the CPU's with the threads torch uses on it."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} of {os.cpu_count()} threads"


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable, else total physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_rss_mb() -> float:
    """This process's peak RSS. ``VmHWM`` starts afresh at exec; ``ru_maxrss`` would inherit the parent's peak
    through fork (measured: every worker reported the orchestrator's 435 MB)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over ``seconds`` (Linux /proc/stat; None elsewhere). A benchmark records it before
    it starts: on 2 cores, another process at work halves the figures, and a ratio measured then says nothing."""
    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = ticks()
        time.sleep(seconds)
        total1, idle1 = ticks()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)
