"""Debian's Prometheus, node exporter and Alertmanager, started on loopback for a test.

Each ``start_*`` returns a :class:`Service` (its URL, its process, its log) once the
service answers its readiness endpoint; ``Service.stop()`` ends it. A binary that is not
installed skips the test with the apt package to install (CI has it: scripts/install.sh).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy (bounded); return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.1)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def binary(*names: str, package: str) -> str:
    """The first of ``names`` on PATH, or skip naming the apt ``package``."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"{names[0]} is not installed (CI: apt-get install {package})")


@dataclass
class Service:
    """A service process on loopback."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Terminate it (kill after 5 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def get(self, path: str, **params: Any) -> Any:
        """``GET path`` as JSON (raises on an HTTP error)."""
        response = requests.get(self.url + path, params=params, timeout=5)
        response.raise_for_status()
        return response.json()


def _start(name: str, command: Sequence[str], url: str, ready: str, log: Path) -> Service:
    with log.open("wb") as log_file:
        process = subprocess.Popen(list(command), stdout=log_file, stderr=subprocess.STDOUT)
    service = Service(name, url, process, log)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited:\n" + log.read_text())
        try:
            return requests.get(url + ready, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        eventually(answers, 30.0, f"{name} ready")
    except BaseException:
        service.stop()
        raise
    return service


def alertmanager_config(webhook_url: str, *, group_wait: str = "100ms") -> str:
    """Route everything to one webhook receiver, fast, with resolutions."""
    return (
        "route:\n"
        "  receiver: hook\n"
        "  group_by: ['alertname', 'run_id']\n"
        f"  group_wait: {group_wait}\n"
        "  group_interval: 300ms\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: hook\n"
        "    webhook_configs:\n"
        f"      - url: {webhook_url}\n"
        "        send_resolved: true\n"
    )


def start_alertmanager(
    folder: Path,
    webhook_url: str,
    *,
    cluster_port: int | None = None,
    peers: Sequence[int] = (),
    group_wait: str = "100ms",
) -> Service:
    """A real Alertmanager on a free port; with ``cluster_port``, a member of an HA cluster
    gossiping with ``peers`` (their cluster ports)."""
    program = binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "am.yml"
    config.write_text(alertmanager_config(webhook_url, group_wait=group_wait))
    port = free_port()
    command = [
        program,
        f"--config.file={config}",
        f"--storage.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    if cluster_port is None:
        command.append("--cluster.listen-address=")
    else:
        command += [
            f"--cluster.listen-address=127.0.0.1:{cluster_port}",
            f"--cluster.advertise-address=127.0.0.1:{cluster_port}",
            "--cluster.settle-timeout=2s",
            "--cluster.peer-timeout=1s",
            *(f"--cluster.peer=127.0.0.1:{peer}" for peer in peers),
        ]
    return _start("alertmanager", command, f"http://127.0.0.1:{port}", "/-/ready", folder / "am.log")


def start_node_exporter(folder: Path, textfile_dir: Path) -> Service:
    """Node exporter with only its textfile collector, reading ``textfile_dir``."""
    program = binary("prometheus-node-exporter", "node_exporter", package="prometheus-node-exporter")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        program,
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textfile_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return _start("node exporter", command, f"http://127.0.0.1:{port}", "/metrics", folder / "node.log")


def start_prometheus(
    folder: Path,
    *,
    targets: dict[str, str],
    rule_files: Sequence[Path] = (),
    alertmanagers: Sequence[str] = (),
) -> Service:
    """Prometheus scraping ``targets`` (job -> host:port) and evaluating ``rule_files``
    every second, sending alerts to every one of ``alertmanagers`` (host:port)."""
    program = binary("prometheus", package="prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["global:", "  scrape_interval: 1s", "  evaluation_interval: 1s", "scrape_configs:"]
    for job, target in targets.items():
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{target}']"]
    if rule_files:
        lines += ["rule_files:", *(f"  - {path}" for path in rule_files)]
    if alertmanagers:
        listed = ", ".join(f"'{target}'" for target in alertmanagers)
        lines += ["alerting:", "  alertmanagers:", "    - static_configs:", f"        - targets: [{listed}]"]
    config = folder / "prometheus.yml"
    config.write_text("\n".join(lines) + "\n")
    port = free_port()
    command = [
        program,
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    return _start("prometheus", command, f"http://127.0.0.1:{port}", "/-/ready", folder / "prometheus.log")


def query(prometheus: Service, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector (raises on a query error)."""
    body = prometheus.get("/api/v1/query", query=expr)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result
