"""What the run tracker reports and how often: :class:`TrackerConfig` and its cadence rule."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrackerConfig:
    """What the tracker reports and how often.

    Args:
        model_name: shown in every message (default: the adapter's guess, e.g. the class).
        run_id: identifies the run (default: generated; adapters may share one across ranks).
        monitor: metric whose improvement/degradation is reported (default: the first of
            val_loss, eval_loss, valid_loss, loss, train_loss that appears).
        mode: ``"min"`` or ``"max"``: which direction is better for ``monitor``.
        min_delta: smallest change that counts as an improvement.
        patience: epochs/evaluations without improvement before LOSS_DEGRADED.
        epoch_every: EPOCH_COMPLETED every N epochs (default: about 10 messages per run).
        batch_every: BATCH_PROCESSED every N steps (0: off).
        nan_check_every: steps between reads of the device-side NaN flag (one sync each).
        stop_on_nan: ask the framework to stop training at the first NaN/Inf.
        stall_timeout: seconds without a step before TRAINING_STALLED (None: off).
        monitors: start the GPU/system/cost monitors for the run.
        chart: attach a loss-curve PNG to the summary (needs the ``charts`` extra).
        flush_timeout: seconds to wait for delivery when the run fails or is interrupted
            (the process is likely about to exit); a completed run never waits.

    Raises:
        ValueError: a value out of range; the message quotes the bad argument.
    """

    model_name: str | None = None
    run_id: str | None = None
    monitor: str | None = None
    mode: str = "min"
    min_delta: float = 0.0
    patience: int = 3
    epoch_every: int | None = None
    batch_every: int = 0
    nan_check_every: int = 50
    stop_on_nan: bool = False
    stall_timeout: float | None = 1800.0
    monitors: bool = True
    chart: bool = True
    flush_timeout: float = 5.0

    def __post_init__(self) -> None:
        check_settings(
            "TrackerConfig",
            mode=self.mode,
            patience=self.patience,
            batch_every=self.batch_every,
            nan_check_every=self.nan_check_every,
            epoch_every=self.epoch_every,
            stall_timeout=self.stall_timeout,
            flush_timeout=self.flush_timeout,
            min_delta=self.min_delta,
        )


def check_settings(owner: str, **values: Any) -> None:
    """Check the tracker settings in ``values`` (absent or None ones are skipped where
    None means "default"); errors name ``owner`` and the argument as the caller wrote it:
    ``AFSNotify(patience=-1) must be >= 0``.

    Raises:
        ValueError: a value out of range.
    """

    def bad(name: str, rule: str) -> ValueError:
        return ValueError(f"{owner}({name}={values[name]!r}) {rule}")

    if "mode" in values and values["mode"] is not None and values["mode"] not in ("min", "max"):
        raise bad("mode", "must be 'min' or 'max'")
    for name in ("patience", "batch_every", "min_delta"):
        value = values.get(name)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise bad(name, "must be >= 0")
    for name in ("nan_check_every", "epoch_every"):
        value = values.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise bad(name, "must be an integer >= 1")
    for name in ("stall_timeout", "flush_timeout"):
        value = values.get(name)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise bad(name, "must be > 0" + (" (None turns it off)" if name == "stall_timeout" else ""))


def cadence_hit(count: int, planned: int | None, every: int | None) -> bool:
    """Whether the ``count``-th epoch is reported: every ``every``, or about ten per run."""
    if every is None:
        every = max(1, planned // 10) if planned else (1 if count <= 10 else 10)
    return count % every == 0 or count == 1 or (planned is not None and count == planned)


def new_run_id(model: str | None) -> str:
    """A readable, unique run id: ``<model>-<yyyymmdd-hhmmss>-<6 hex>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in (model or "run"))[:40]
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:6]}"
