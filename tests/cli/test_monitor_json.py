"""``afs-notify monitor --json``: one JSON object per line, as a script or log shipper reads
them, while the alerts still reach the channels and the history. A real subprocess, real
disk and cost readings, a real webhook receiver on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from afs_callbacks.testing import LoopbackReceiver
from cli.helpers import afs_notify, cli_env, history


def test_monitor_json_prints_status_readings_alerts_and_summary_one_per_line(
    tmp_path: Path, isolated_env: Path, receiver: LoopbackReceiver
) -> None:
    secret_url = receiver.url("/hook/s3cr3t-token-value")
    result = afs_notify(
        "monitor", "--json", "--duration", "1.5", "--interval", "0.4", "--path", str(tmp_path),
        "--model", "standalone",
        env=cli_env(AFS_HOURLY_COST="7200", COST_ALERT_THRESHOLD_1="1", WEBHOOK_URL=secret_url),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]  # every line is JSON
    kinds = [obj["type"] for obj in objects]
    assert kinds[0] == "status" and kinds[-1] == "summary"
    assert {m["name"] for m in objects[0]["monitors"]} >= {"gpu", "system", "cost"}
    readings = [obj for obj in objects if obj["type"] == "reading"]
    assert len(readings) >= 2
    assert readings[-1]["cost"]["cost"] > readings[0]["cost"]["cost"]  # the bill grows
    assert any(key.startswith("disk_free:") for key in readings[0]["system"])
    [alert] = [obj for obj in objects if obj["type"] == "alert"]
    assert alert["event_type"] == "cost_threshold" and alert["context"]["model"] == "standalone"
    assert objects[-1]["cost"] >= 1 and objects[-1]["lines"][0].startswith("Cost: $")
    assert "s3cr3t-token-value" not in result.stdout + result.stderr
    # The alert was not only printed: it went to the channel and into the history.
    receiver.wait_for(predicate=lambda r: r.json()["event_type"] == "cost_threshold")
    assert len(history(isolated_env, event_type="cost_threshold")) == 1


def test_monitor_refuses_an_interval_that_would_spin() -> None:
    result = afs_notify("monitor", "--json", "--interval", "0")

    assert result.returncode == 2
    assert "--interval must be at least 0.1 seconds, got 0" in result.stderr and result.stdout == ""
