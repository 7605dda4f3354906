"""Per-step overhead of AFSNotify in real training loops: Lightning, HF Trainer, Keras.

For each framework the same tiny model trains for thousands of steps, side by side:

* no callback (twice: the second run shows the measurement's noise floor),
* an empty ``Callback`` (what any callback costs: the framework's dispatch),
* ``AFSNotify`` with a capturing channel (the library's own work),
* ``AFSNotify`` with a webhook channel to a loopback receiver (plus real delivery).

The per-step time is read between training forwards, away from the start and end of the
run (a trimmed mean: see ``_loops.Run``). Variants run in rounds, in a rotating order, and
each round's figure is compared with the same round's no-callback run: the overhead is the
median of those paired differences. One more, instrumented run times AFSNotify's per-step
hooks themselves ("in hooks"), a figure the machine's noise does not blur.
Targets (issue #7): AFSNotify adds no more than an empty callback does, within 2× of it,
and under 1 % of the step time of the tiny model.

    python benchmarks/bench_step_overhead.py [--quick] [--frameworks lightning,keras]
    python benchmarks/bench_step_overhead.py --device cuda      # the GPU variant
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from _common import Report, fresh_state_dir, median, parse_args, percentile
from _loops import FRAMEWORKS, HookClock, afs_callback, available, empty_callback, fit, quiet

from afs_callbacks import Settings
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import CapturingHandler, LoopbackReceiver

NONE, AGAIN, EMPTY, CAPTURE, WEBHOOK = (
    "no callback",
    "no callback (again)",
    "empty Callback",
    "AFSNotify + capture",
    "AFSNotify + webhook",
)
VARIANTS = (NONE, AGAIN, EMPTY, CAPTURE, WEBHOOK)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--rounds", type=int, help="runs of each variant")


def _variant(name: str, framework: str, receiver: LoopbackReceiver) -> tuple[list[Any], Callable[[], int]]:
    """The callbacks of one variant, and a function counting the messages it delivered."""
    if name in (NONE, AGAIN):
        return [], lambda: 0
    if name == EMPTY:
        return [empty_callback(framework)], lambda: 0
    settings = Settings(state_dir=fresh_state_dir())
    if name == CAPTURE:
        handler = CapturingHandler()
        manager = NotificationManager({"capture": handler}, settings=settings)

        def captured() -> int:
            manager.close()
            return len(handler.events)

        return [afs_callback(framework, manager)], captured
    before = len(receiver.requests)
    manager = NotificationManager({"webhook": WebhookNotifier(receiver.url("/hook"))}, settings=settings)

    def delivered() -> int:
        manager.close()
        return len(receiver.requests) - before

    return [afs_callback(framework, manager)], delivered


def measure(framework: str, *, steps: int, rounds: int, device: str) -> dict[str, Any]:
    """Per-step seconds of every variant, per round; messages delivered; in-hook time."""
    skip = max(10, steps // 10)
    per_step: dict[str, list[float]] = {name: [] for name in VARIANTS}
    messages: dict[str, int] = {name: 0 for name in VARIANTS}
    in_hooks: dict[str, float] = {}
    with LoopbackReceiver() as receiver:
        fit(framework, [], steps_per_epoch=min(steps, 50), device=device)  # one-time costs
        for round_ in range(rounds):
            shift = round_ % len(VARIANTS)
            for name in VARIANTS[shift:] + VARIANTS[:shift]:
                callbacks, count = _variant(name, framework, receiver)
                run = fit(framework, callbacks, steps_per_epoch=steps, device=device)
                per_step[name].append(run.per_step_s(skip))
                messages[name] = count()
        for name in (CAPTURE, WEBHOOK):
            callbacks, count = _variant(name, framework, receiver)
            clock = HookClock(callbacks[0], framework)
            fit(framework, callbacks, steps_per_epoch=steps, device=device)
            count()
            in_hooks[name] = clock.per_step_s(steps)
    return {"per_step": per_step, "messages": messages, "in_hooks": in_hooks}


def summarise(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Median step time; median and quartiles of the paired differences with no callback."""
    per_step = result["per_step"]
    base = per_step[NONE]
    out = {}
    for name, values in per_step.items():
        diffs = [v - b for v, b in zip(values, base, strict=True)]
        out[name] = {
            "step_us": median(values) * 1e6,
            "over_us": median(diffs) * 1e6,
            "low_us": percentile(diffs, 0.25) * 1e6,
            "high_us": percentile(diffs, 0.75) * 1e6,
            "in_hooks_us": result["in_hooks"].get(name, 0.0) * 1e6,
        }
    return out


def main() -> None:
    args = parse_args(__doc__ or "", _options)
    quiet()
    report = Report("step_overhead", args)
    steps = args.steps or (60 if args.quick else 1500)
    rounds = args.rounds or (1 if args.quick else 8)
    figures: dict[str, Any] = {}
    for framework in [f.strip() for f in args.frameworks.split(",") if f.strip()]:
        missing = available(framework)
        if missing is not None:
            report.table(f"{framework}: skipped", ("reason",), [(missing,)])
            continue
        result = measure(framework, steps=steps, rounds=rounds, device=args.device)
        stats = summarise(result)
        figures[framework] = {"stats": stats, "messages": result["messages"]}
        _tables(report, framework, stats, result["messages"], steps=steps, rounds=rounds, device=args.device)
    report.finish(steps=steps, rounds=rounds, device=args.device, frameworks=figures)


def _tables(
    report: Report,
    framework: str,
    stats: dict[str, dict[str, float]],
    messages: dict[str, int],
    *,
    steps: int,
    rounds: int,
    device: str,
) -> None:
    step = stats[NONE]["step_us"]
    empty = stats[EMPTY]["over_us"]
    rows = []
    for name in VARIANTS:
        s = stats[name]
        paired, notify = name != NONE, name in (CAPTURE, WEBHOOK)
        rows.append(
            (
                name,
                s["step_us"],
                s["over_us"] if paired else "-",
                f"{s['low_us']:.1f} .. {s['high_us']:.1f}" if paired else "-",
                f"{s['over_us'] / step * 100:.2f} %" if paired else "-",
                _ratio(s["over_us"], empty) if notify else "-",
                s["in_hooks_us"] if notify else "-",
                messages[name] if notify else "-",
            )
        )
    report.table(
        f"{framework} on {device}: {steps:,} steps per run, {rounds} round(s); medians over rounds",
        (
            "variant",
            "µs/step",
            "overhead µs",
            "quartiles µs",
            "% of step",
            "× empty",
            "in hooks µs",
            "messages",
        ),
        rows,
    )
    # The noise floor: how far apart two identical runs without a callback land, or how
    # widely any variant's paired differences spread, whichever is larger. A difference
    # smaller than that is not a finding either way.
    spread = max((stats[name]["high_us"] - stats[name]["low_us"]) / 2 for name in VARIANTS[1:])
    noise = max(abs(stats[AGAIN]["over_us"]), spread)
    worst = max((CAPTURE, WEBHOOK), key=lambda n: stats[n]["over_us"])
    afs = stats[worst]["over_us"]
    # An empty callback whose cost is lost in the noise gives no yardstick: no verdict.
    measurable = empty > noise
    report.target(
        f"{framework}: AFSNotify overhead vs empty Callback",
        "≤ 2× empty",
        f"{afs:.1f} µs vs {empty:.1f} µs ({_ratio(afs, empty)})",
        _judge(afs, 2 * empty, noise) if measurable else None,
        f"noise ±{noise:.0f} µs" + ("" if measurable else "; the empty Callback's cost is within it"),
    )
    report.target(
        f"{framework}: AFSNotify share of step time",
        "< 1 %",
        f"{afs / step * 100:.2f} % of {step:.0f} µs",
        _judge(afs, step / 100, noise),
        f"noise ±{noise:.0f} µs",
    )
    hooks = stats[worst]["in_hooks_us"]
    report.target(
        f"{framework}: AFSNotify per-step hooks, timed in the loop",
        "< 1 % of step",
        f"{hooks:.1f} µs = {hooks / step * 100:.2f} %",
        hooks / step < 0.01,
    )


def _judge(value: float, limit: float, noise: float) -> bool | None:
    """Met, missed, or None when the value is within ``noise`` of the limit either way."""
    if value <= limit:
        return True
    return False if value - limit > noise else None


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}×" if reference > 0 else "no ratio: empty ≤ 0"


if __name__ == "__main__":
    main()
