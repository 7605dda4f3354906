"""Delivery through the outbox to a real loopback HTTP receiver.

1. Latency from ``notify()`` to the receiver's handler (p50/p99; target p50 under 20 ms).
2. Sustained events/s through the outbox to a fast receiver.
3. The receiver down (503) for a while, then back: nothing lost, backlog drained.

    python benchmarks/bench_delivery.py [--quick]
"""

from __future__ import annotations

import time

from _common import Report, fresh_state_dir, parse_args, percentile

from afs_callbacks import EventType, Settings
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply


def _manager(url: str, **settings: float) -> NotificationManager:
    # The channel budget off (burst=0): this measures the pipeline, not the budget's folding.
    config = Settings(state_dir=fresh_state_dir(), dedup_window=0, burst=0, **settings)  # type: ignore[arg-type]
    return NotificationManager({"webhook": WebhookNotifier(url)}, settings=config)


def latency(samples: int) -> dict[str, float]:
    """notify() → receiver, one message at a time."""
    arrivals: dict[str, float] = {}

    def stamp(request: ReceivedRequest) -> None:
        arrivals[request.json()["id"]] = time.perf_counter()

    with LoopbackReceiver(responder=lambda r: stamp(r)) as receiver:
        manager = _manager(receiver.url("/hook"))
        delays = []
        for n in range(samples):
            sent = time.perf_counter()
            event = manager.notify(f"latency {n}", "", EventType.CUSTOM)
            assert event is not None
            receiver.wait_for(n + 1)
            delays.append(arrivals[event.id] - sent)
        manager.close()
    return {"p50_ms": percentile(delays, 0.5) * 1000, "p99_ms": percentile(delays, 0.99) * 1000}


def throughput(count: int) -> dict[str, float]:
    """A burst of ``count`` events: caller time and time until all arrived."""
    with LoopbackReceiver() as receiver:
        manager = _manager(receiver.url("/hook"))
        start = time.perf_counter()
        for n in range(count):
            manager.notify(f"burst {n}", "", EventType.CUSTOM)
        accepted = time.perf_counter() - start
        receiver.wait_for(count, timeout=300)
        drained = time.perf_counter() - start
        manager.close()
    return {
        "events": count,
        "caller_us_per_event": accepted / count * 1e6,
        "delivered_per_s": count / drained,
    }


def outage(count: int, down_for: float) -> dict[str, float]:
    """Receiver answers 503 for ``down_for`` seconds, then 200: everything arrives once."""
    down_until = time.monotonic() + down_for

    def answer(request: ReceivedRequest) -> Reply | None:
        return Reply(503, "down") if time.monotonic() < down_until else None

    with LoopbackReceiver(responder=answer) as receiver:
        manager = _manager(receiver.url("/hook"), retry_base=0.5, retry_cap=5.0, max_attempts=50)
        sent_ids = set()
        for n in range(count):
            event = manager.notify(f"outage {n}", "", EventType.CUSTOM)
            assert event is not None
            sent_ids.add(event.id)
        receiver.wait_for(count, predicate=lambda r: r.status == 200, timeout=down_for + 120)
        delivered_at = time.monotonic()
        manager.flush(30)
        report = manager.outbox.counts()
        manager.close()
    received = {r.json()["id"] for r in receiver.requests if r.status == 200}
    return {
        "events": count,
        "down_s": down_for,
        "lost": len(sent_ids - received),
        "drained_after_back_s": delivered_at - down_until,
        "delivered_rows": report.get("webhook", {}).get("delivered", 0),
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    lat = latency(30 if args.quick else 300)
    thr = throughput(200 if args.quick else 5000)
    out = outage(20 if args.quick else 200, 3.0 if args.quick else 30.0)
    report = Report("delivery", args)
    report.table(
        "Latency notify() → loopback receiver", ("p50 ms", "p99 ms"), [(lat["p50_ms"], lat["p99_ms"])]
    )
    report.table(
        "Sustained burst through the outbox",
        ("events", "caller µs/event", "delivered/s"),
        [(thr["events"], thr["caller_us_per_event"], thr["delivered_per_s"])],
    )
    report.table(
        "Receiver down, then back",
        ("events", "down s", "lost", "drained after back s", "delivered rows"),
        [(out["events"], out["down_s"], out["lost"], out["drained_after_back_s"], out["delivered_rows"])],
    )
    report.target("latency p50", "< 20 ms", f"{lat['p50_ms']:.1f} ms", lat["p50_ms"] < 20)
    report.target(
        "receiver down then back",
        "nothing lost, backlog drained",
        f"{out['lost']:g} lost, {out['delivered_rows']:g}/{out['events']:g} delivered",
        out["lost"] == 0 and out["delivered_rows"] == out["events"],
    )
    report.finish(latency=lat, throughput=thr, outage=out)


if __name__ == "__main__":
    main()
