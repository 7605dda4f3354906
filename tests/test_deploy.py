"""What deploy/ ships is valid for the tools that load it: the rules (``promtool check
rules``, and their unit tests with ``promtool test rules``), the example Prometheus and
Alertmanager configurations, and the Grafana board's shape. Each panel's query is run
against a real Prometheus in tests/prometheus/test_fleet.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (CI: apt-get install {package})")
    return found


@pytest.mark.parametrize(
    ("command", "path"),
    [
        (("check", "rules"), "prometheus/afs-callbacks.rules.yml"),
        (("test", "rules"), "prometheus/afs-callbacks.rules.test.yml"),
        (("check", "config"), "prometheus/prometheus.yml"),
    ],
)
def test_promtool_accepts(command: tuple[str, ...], path: str) -> None:
    promtool = tool("promtool", "prometheus")
    done = subprocess.run([promtool, *command, path], cwd=DEPLOY, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_amtool_accepts_the_alertmanager_example() -> None:
    amtool = tool("amtool", "prometheus-alertmanager")
    done = subprocess.run(
        [amtool, "check-config", "alertmanager/alertmanager.yml"], cwd=DEPLOY, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_grafana_board_is_well_formed() -> None:
    board = json.loads((DEPLOY / "grafana" / "afs-callbacks.json").read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "host", "run_id"} <= variables
    panels = [panel for panel in board["panels"] if panel["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for series in ("afs_run_info", "afs_run_metric", "afs_outbox_deliveries", "afs_outbox_retrying"):
        assert series in exprs
