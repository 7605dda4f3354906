"""Cost monitor: what the run has cost so far, from an hourly price, with threshold alerts.

The price is per hour for the whole run (``AFS_HOURLY_COST``) or per GPU
(``AFS_GPU_HOURLY_COST`` × the GPU count). Every threshold (``COST_ALERT_THRESHOLD``,
``COST_ALERT_THRESHOLD_1``, ``_2``, ... any number) alerts once, through the manager's
``notify_cost_alert``, which also stays the manual path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from afs_callbacks._log import get_logger
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.monitors._poller import MIN_INTERVAL, MonitorStatus, Poller

if TYPE_CHECKING:
    from afs_callbacks.config import Env
    from afs_callbacks.manager import NotificationManager

log = get_logger(__name__)

_THRESHOLD_NAME = re.compile(r"^COST_ALERT_THRESHOLD(_\d+)?$")


class CostMonitor(Poller):
    """Accrues the run's cost from elapsed time and alerts at each threshold, once.

    Time counts from :meth:`start` (or the first :meth:`poll_once`) until :meth:`stop`.
    When a reading finds several thresholds passed at once (a resumed run, a suspended
    machine), one alert names the highest and the lower ones count as told.

    Args:
        manager: where alerts go.
        hourly_cost: price per hour of the whole run.
        per_gpu_hourly: price per GPU-hour, multiplied by ``gpu_count``.
        gpu_count: GPUs paid for, or a function giving it (the GPU monitor's count, known
            only after its first reading); ignored with ``hourly_cost``.
        thresholds: costs at which to alert, in the price's currency.
        interval: longest wait between readings; the monitor wakes right at a threshold.
        clock: monotonic time source (tests pass a fake one).
        run_id, model, context: fields added to every alert.

    Raises:
        ConfigurationError: no price, a negative price, or a threshold that is not > 0.

    Example::

        with CostMonitor(manager, per_gpu_hourly=2.5, gpu_count=8, thresholds=[100, 500]) as cost:
            train()
        print(f"${cost.current_cost():.2f}")
    """

    name: ClassVar[str] = "cost"

    def __init__(
        self,
        manager: NotificationManager,
        *,
        hourly_cost: float | None = None,
        per_gpu_hourly: float | None = None,
        gpu_count: int | Callable[[], int | None] | None = None,
        thresholds: Iterable[float] = (),
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        run_id: str | None = None,
        model: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(manager, interval=interval, run_id=run_id, model=model, context=context)
        if hourly_cost is None and per_gpu_hourly is None:
            raise ConfigurationError("CostMonitor()", "needs hourly_cost or per_gpu_hourly")
        for label, price in (("hourly_cost", hourly_cost), ("per_gpu_hourly", per_gpu_hourly)):
            if price is not None and not price >= 0:
                raise ConfigurationError(f"CostMonitor({label}={price!r})", "must be a price >= 0")
        levels = sorted({float(t) for t in thresholds})
        if any(not t > 0 for t in levels):
            raise ConfigurationError(
                f"CostMonitor(thresholds={list(thresholds)!r})", "every threshold must be > 0"
            )
        self.hourly_cost = hourly_cost
        self.per_gpu_hourly = per_gpu_hourly
        self.gpu_count = gpu_count
        self.thresholds = levels
        self._clock = clock
        self._elapsed = 0.0  # seconds accrued before the current stretch
        self._since: float | None = None  # when the current stretch began
        self._told: set[float] = set()
        self._warned_no_gpus = False

    @classmethod
    def from_env(cls, manager: NotificationManager, env: Env, **kwargs: Any) -> CostMonitor | None:
        """A monitor from ``AFS_HOURLY_COST``/``AFS_GPU_HOURLY_COST`` and ``COST_ALERT_THRESHOLD*``;
        None when no price is set. ``kwargs`` win over the variables.

        Raises:
            ConfigurationError: a variable has a bad value.
        """
        options: dict[str, Any] = {
            "hourly_cost": env.number("AFS_HOURLY_COST", None, minimum=0.0),
            "per_gpu_hourly": env.number("AFS_GPU_HOURLY_COST", None, minimum=0.0),
            "gpu_count": env.integer("AFS_GPU_COUNT", None, minimum=0),
            "thresholds": thresholds_from_env(env),
        }
        options.update({key: value for key, value in kwargs.items() if value is not None})
        if options["hourly_cost"] is None and options["per_gpu_hourly"] is None:
            if options["thresholds"]:
                log.warning(
                    "afs-callbacks: COST_ALERT_THRESHOLD is set but no price: set AFS_HOURLY_COST "
                    "or AFS_GPU_HOURLY_COST for cost alerts"
                )
            return None
        return cls(manager, **options)

    # What the monitor knows ----------------------------------------------------------

    @property
    def hourly_rate(self) -> float:
        """The current price per hour of the run."""
        if self.hourly_cost is not None:
            return self.hourly_cost
        count = self.gpu_count() if callable(self.gpu_count) else self.gpu_count
        # None: not known yet (the GPU monitor's first reading is still to come); 0: no GPU.
        if count == 0 and not self._warned_no_gpus:
            self._warned_no_gpus = True
            log.warning(
                "afs-callbacks: a per-GPU price is set but no GPU was found: the cost counts 0 GPUs "
                "(set AFS_GPU_COUNT to the GPUs the run pays for)"
            )
        return (self.per_gpu_hourly or 0.0) * (count or 0)

    def elapsed(self) -> float:
        """Seconds accrued so far."""
        with self._lock:
            running = 0.0 if self._since is None else self._clock() - self._since
            return self._elapsed + max(running, 0.0)

    def current_cost(self) -> float:
        """The run's cost so far, in the price's currency."""
        return self.hourly_rate * self.elapsed() / 3600.0

    def summary(self) -> dict[str, Any]:
        """Cost, rate and elapsed time as JSON-safe values, for the training summary."""
        return {
            "cost": round(self.current_cost(), 4),
            "hourly_rate": self.hourly_rate,
            "elapsed_s": self.elapsed(),
        }

    def status(self) -> MonitorStatus:
        """The price and the thresholds still ahead."""
        ahead = [t for t in self.thresholds if t not in self._told]
        alerts = f", alerts at {', '.join(f'{t:g}' for t in ahead)}" if ahead else ""
        return MonitorStatus(
            self.name,
            self._since is not None,
            f"${self.current_cost():,.2f} so far at ${self.hourly_rate:,.2f}/h{alerts}",
        )

    def state_dict(self) -> dict[str, Any]:
        """Elapsed time and thresholds already told, so a resumed run continues the bill."""
        return {"elapsed": self.elapsed(), "told": sorted(self._told)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of an earlier run (adds its elapsed time)."""
        with self._lock:
            self._elapsed += float(state.get("elapsed", 0.0))
            self._told.update(float(t) for t in state.get("told", ()))

    # Polling --------------------------------------------------------------------------

    def _begin(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = self._clock()

    def _poll(self) -> None:
        self._begin()
        cost = self.current_cost()
        passed = [t for t in self.thresholds if t <= cost and t not in self._told]
        if not passed:
            return
        self._told.update(passed)
        highest = passed[-1]
        self.manager.notify_cost_alert(
            cost,
            highest,
            model_name=self.context.get("model"),
            **{key: value for key, value in self.context.items() if key != "model"},
            key=f"cost:{highest:g}",
            hourly_rate=self.hourly_rate,
            duration=self.elapsed(),
        )

    def _done(self) -> bool:
        # The bill runs on the clock, not on the thread: with no alert ahead, nothing to poll.
        return all(t in self._told for t in self.thresholds)

    def _next_wait(self) -> float:
        # Wake right when the next threshold is due instead of up to `interval` later.
        rate = self.hourly_rate
        ahead = [t for t in self.thresholds if t not in self._told]
        if rate <= 0 or not ahead:
            return self.interval
        due = (ahead[0] - self.current_cost()) / rate * 3600.0
        return min(self.interval, max(due, MIN_INTERVAL))

    def _release(self) -> None:
        # Stopping freezes the bill: time after stop() is not the run's.
        if self._since is not None:
            self._elapsed += max(self._clock() - self._since, 0.0)
            self._since = None


def thresholds_from_env(env: Env) -> list[float]:
    """Every ``COST_ALERT_THRESHOLD`` and ``COST_ALERT_THRESHOLD_<n>`` value, sorted.

    Raises:
        ConfigurationError: one is not a number > 0.
    """
    values = set()
    for name in env:
        if _THRESHOLD_NAME.match(name):
            value = env.number(name, minimum=0.0)
            if value is not None:
                if value <= 0:
                    raise ConfigurationError(name, f"must be > 0, got {value:g}")
                values.add(value)
    return sorted(values)
