"""``afs-notify monitor``: the monitors standalone, as a real subprocess.

Real disk and cost readings; the GPU part reports "no GPU stats" here (no NVIDIA driver),
which is itself what a user without a GPU should see.
"""

from __future__ import annotations

from pathlib import Path

from afs_callbacks.events import EventType
from cli.helpers import afs_notify, cli_env, history


def test_monitor_alerts_on_a_cost_threshold_and_prints_the_summary(
    tmp_path: Path, isolated_env: Path
) -> None:
    result = afs_notify(
        "monitor",
        "--duration",
        "1.5",
        "--path",
        str(tmp_path),
        "--model",
        "standalone",
        env=cli_env(AFS_HOURLY_COST="36", COST_ALERT_THRESHOLD_1="0.001", AFS_CONSOLE="always"),
    )
    assert result.returncode == 0, result.stderr
    assert "cost" in result.stdout and "system" in result.stdout
    assert "Cost: $" in result.stdout
    alerts = history(isolated_env, event_type=EventType.COST_THRESHOLD.value)
    assert len(alerts) == 1
    assert alerts[0].event.context["model"] == "standalone"
    assert alerts[0].event.context["threshold"] == 0.001
