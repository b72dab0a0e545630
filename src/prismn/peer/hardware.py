"""What this machine offers: GPU name and free VRAM (NVML when present), else the CPU and free RAM."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Hardware:
    gpu: str
    free_vram_gb: float
    how: str


def detect() -> Hardware:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            free = pynvml.nvmlDeviceGetMemoryInfo(h).free / 1024**3
            return Hardware(name, round(free, 2), "NVML")
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library, no driver or no GPU: fall back to the CPU
        pass
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3
    except (ValueError, OSError):
        free = 1.0
    return Hardware("CPU", round(free * 0.5, 2), "half of the free RAM (no GPU found)")
