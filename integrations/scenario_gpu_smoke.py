"""GPU smoke scenario: real NVML readings, a real CUDA OOM, and the NaN check's device syncs.

For a machine with an NVIDIA GPU; skipped everywhere else. One command (the test conftest
hides GPUs unless ``CUDA_VISIBLE_DEVICES`` is set, so name the GPU)::

    CUDA_VISIBLE_DEVICES=0 python -m pytest integrations/scenario_gpu_smoke.py -v -s
    # or: python integrations/scenario_gpu_smoke.py

What it checks, and the figures it prints (``FIGURE ...`` lines) for the record:

1. The GPU monitor reads the real device through NVML (memory, utilisation, temperature,
   power), finds the GPU torch uses by UUID, sees a 1 GiB allocation, and alerts when memory
   crosses a threshold set just under it. Printed: the readings and the cost of one poll.
2. A tiny Lightning run that asks CUDA for a petabyte raises a real
   ``torch.OutOfMemoryError``; ``AFSNotify`` reports it as OUT_OF_MEMORY with the device's
   memory figures.
3. A tiny Lightning run with a NaN injected at a known step, counted with
   ``torch.cuda.set_sync_debug_mode("warn")``: the callback adds about one device sync per
   ``nan_check_every`` steps, not one per step, and reports the NaN once.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs an NVIDIA GPU (the test conftest hides GPUs: run with CUDA_VISIBLE_DEVICES=0)",
    ),
]

from afs_callbacks import EventType  # noqa: E402 - after the skip decision
from afs_callbacks.monitors import GPUMonitor  # noqa: E402
from afs_callbacks.testing import capturing_manager  # noqa: E402

GIB = 2**30
STEPS = 200
NAN_CHECK_EVERY = 50
NAN_AT = 120


def figure(name: str, value: Any) -> None:
    """One measured fact, printed for the closing note."""
    print(f"FIGURE {name}: {value}")


def lightning_parts() -> tuple[Any, Any]:
    """Lightning's Trainer and the AFSNotify callback, or a skip naming what is missing."""
    pl = pytest.importorskip("lightning.pytorch")
    notify = pytest.importorskip("afs_callbacks.integrations.lightning")
    return pl, notify.AFSNotify


def tiny_module(pl: Any, *, oom_at: int | None = None, nan_at: int | None = None) -> Any:
    """A two-layer regression on random data; optionally OOM or NaN at a given step."""

    class Tiny(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if oom_at is not None and batch_idx == oom_at:
                torch.empty(1 << 50, dtype=torch.uint8, device=self.device)  # a petabyte
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            if nan_at is not None and self.global_step == nan_at:
                loss = loss * float("nan")
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self) -> Any:
            data = torch.utils.data.TensorDataset(torch.randn(STEPS * 8, 32), torch.randn(STEPS * 8, 1))
            return torch.utils.data.DataLoader(data, batch_size=8)

    return Tiny()


def trainer(pl: Any, callbacks: list[Any], root: Path) -> Any:
    return pl.Trainer(
        accelerator="gpu",
        devices=1,
        max_steps=STEPS,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )


def test_real_nvml_readings_and_a_memory_alert(tmp_path: Path) -> None:
    manager, captured = capturing_manager(tmp_path / "state", dedup_window=0)
    torch.cuda.init()  # the monitor then maps torch's devices to NVML's by UUID
    cuda_uuid = str(torch.cuda.get_device_properties(0).uuid).lower().removeprefix("gpu-")
    probe = GPUMonitor(manager, util_floor=None)
    probe.poll_once()
    status = probe.status()
    assert status.active, status.reason
    [(label, before)] = list(probe.readings.items())
    assert before.uuid.lower().endswith(cuda_uuid), (before.uuid, cuda_uuid)
    assert before.memory_total > GIB
    figure("device", f"{label} {before.name} {before.uuid}")
    figure("reading", before)
    figure("status", status.reason)
    started = time.perf_counter()
    for _ in range(20):
        probe.poll_once()
    figure("one poll (all queries of one GPU)", f"{(time.perf_counter() - started) / 20 * 1e3:.3f} ms")
    probe.stop()

    # A warning threshold just under what a 1 GiB tensor brings: a real crossing, real figures.
    threshold = (before.memory_used + GIB / 2) / before.memory_total
    watcher = GPUMonitor(manager, util_floor=None, memory_warning=threshold, memory_critical=1.0)
    watcher.poll_once()
    block = torch.empty(GIB, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    watcher.poll_once()
    after = watcher.readings[label]
    figure("memory used before/after a 1 GiB tensor", f"{before.memory_used} / {after.memory_used}")
    assert after.memory_used - before.memory_used >= 0.9 * GIB
    assert watcher.peaks[label].used >= after.memory_used
    del block
    manager.flush(10)
    alerts = [e for e in captured.events if e.event_type == EventType.GPU_MEMORY]
    assert len(alerts) == 1 and alerts[0].context["gpu_uuid"] == before.uuid
    figure("alert", alerts[0].title)
    watcher.stop()
    manager.close(timeout=1)
    torch.cuda.empty_cache()


def test_a_real_cuda_oom_in_lightning_is_reported(tmp_path: Path) -> None:
    pl, AFSNotify = lightning_parts()
    manager, captured = capturing_manager(tmp_path / "state")
    callback = AFSNotify(manager, chart=False, monitors=False, stall_timeout=None)
    with pytest.raises(torch.OutOfMemoryError):
        trainer(pl, [callback], tmp_path).fit(tiny_module(pl, oom_at=3))
    [event] = captured.wait_for(lambda e: e.event_type == EventType.OUT_OF_MEMORY, timeout=15)
    figure("OOM message title", event.title)
    figure("OOM context", {k: v for k, v in event.context.items() if "memory" in k or k == "device"})
    assert str(event.context.get("device", "")).startswith(("cuda", "GPU "))  # torch names "GPU 0"
    assert event.context.get("memory_total_mb", 0) > 0
    manager.close(timeout=1)
    torch.cuda.empty_cache()


def count_syncs(run: Any) -> int:
    """Device syncs ``run()`` performs, as ``set_sync_debug_mode("warn")`` reports them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_the_nan_check_syncs_once_per_check_not_per_step(tmp_path: Path) -> None:
    pl, AFSNotify = lightning_parts()
    trainer(pl, [], tmp_path / "warmup").fit(tiny_module(pl))  # CUDA/cuBLAS set-up, uncounted
    baseline = count_syncs(lambda: trainer(pl, [], tmp_path / "a").fit(tiny_module(pl, nan_at=NAN_AT)))
    manager, captured = capturing_manager(tmp_path / "state")
    callback = AFSNotify(
        manager, chart=False, monitors=False, stall_timeout=None, nan_check_every=NAN_CHECK_EVERY
    )
    started = time.perf_counter()
    with_callback = count_syncs(
        lambda: trainer(pl, [callback], tmp_path / "b").fit(tiny_module(pl, nan_at=NAN_AT))
    )
    figure("steps", STEPS)
    figure("syncs without / with AFSNotify", f"{baseline} / {with_callback}")
    figure("extra syncs per 100 steps", f"{(with_callback - baseline) / STEPS * 100:.1f}")
    figure("run with callback, wall time", f"{time.perf_counter() - started:.2f} s")
    assert with_callback - baseline <= STEPS // NAN_CHECK_EVERY + 10
    nans = captured.wait_for(lambda e: e.event_type == EventType.NAN_DETECTED, timeout=15)
    assert len(nans) == 1
    figure("NaN injected at / reported at step", f"{NAN_AT} / {nans[0].context.get('step')}")
    assert NAN_AT <= int(nans[0].context["step"]) <= NAN_AT + NAN_CHECK_EVERY
    manager.close(timeout=1)


if __name__ == "__main__":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")  # the conftest hides GPUs otherwise
    sys.exit(pytest.main([__file__, "-v", "-s", "-p", "no:cacheprovider"]))
