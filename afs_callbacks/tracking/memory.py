"""Device memory figures for an out-of-memory report, without initialising CUDA.

torch is consulted only if the program already imported it and CUDA is already
initialised: touching CUDA first in a process that forks DDP workers breaks them.
"""

from __future__ import annotations

import sys
from typing import Any

from afs_callbacks._log import get_logger

log = get_logger(__name__)

_MIB = 2**20


def cuda_memory_figures(device: str | None = None) -> dict[str, Any]:
    """Allocated, reserved, peak, free and total memory (MiB) of the current CUDA device."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return {}
        index = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return {
            "device": device or f"cuda:{index}",
            "memory_allocated_mb": round(torch.cuda.memory_allocated(index) / _MIB, 1),
            "memory_reserved_mb": round(torch.cuda.memory_reserved(index) / _MIB, 1),
            "peak_allocated_mb": round(torch.cuda.max_memory_allocated(index) / _MIB, 1),
            "memory_free_mb": round(free / _MIB, 1),
            "memory_total_mb": round(total / _MIB, 1),
        }
    except Exception:
        log.debug("afs-callbacks: no CUDA memory figures", exc_info=True)
        return {}
