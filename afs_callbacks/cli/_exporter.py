"""``afs-notify exporter``: serve ``/metrics`` for Prometheus from the history, for every
run on the host (see :mod:`afs_callbacks.exporter` and docs/fleet.md).

Bound to 127.0.0.1:9464 by default; ``--listen :9464`` (all interfaces) is for a
Prometheus on another machine: the series name runs, models and hosts, nothing secret.
"""

from __future__ import annotations

import argparse
from typing import Any

from afs_callbacks.cli._common import EXIT_OK, UsageError
from afs_callbacks.cli._output import Output
from afs_callbacks.cli._store_check import history_path
from afs_callbacks.config import Env, Settings
from afs_callbacks.urls import is_loopback

#: ``--listen``'s default.
DEFAULT_LISTEN = "127.0.0.1:9464"


def add_exporter_command(add: Any) -> None:
    """The subcommand's options (``add`` is the parser's own ``add``)."""
    exporter = add(
        "exporter",
        command_exporter,
        "serve /metrics for Prometheus: every run on this host and each channel's deliveries",
        json=False,
        timeout=None,
    )
    exporter.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}; :9464 for every interface)",
    )
    exporter.add_argument("--state-dir", metavar="DIR", help="the history's folder (default: AFS_STATE_DIR)")
    exporter.add_argument(
        "--keep",
        type=float,
        metavar="SECONDS",
        help="how long an ended run stays in the output (default: AFS_PROMETHEUS_KEEP, 3600)",
    )


def command_exporter(args: argparse.Namespace, output: Output) -> int:
    """Serve until interrupted (Ctrl-C ends it with exit code 0)."""
    try:
        from afs_callbacks.exporter import make_exporter
    except ImportError:
        from afs_callbacks.prometheus import INSTALL_HINT

        raise UsageError(f"the exporter needs prometheus_client: {INSTALL_HINT}") from None
    host, port = parse_listen(args.listen)
    keep = args.keep
    if keep is None:
        keep = Settings.from_env(Env(env_file=args.env_file), on_error=lambda error: None).prometheus_keep
    if not keep >= 60:
        raise UsageError(f"--keep must be at least 60 seconds, got {keep:g}")
    path = history_path(args.state_dir)
    try:
        server, collector = make_exporter(host, port, path.parent, keep=keep)
    except OSError as error:
        raise UsageError(f"cannot listen on {args.listen}: {error.strerror or error}") from None
    # The URL goes to stdout even with --quiet: it is what the command is for.
    print(f"afs-notify exporter: {server.url}", flush=True)
    output.note(f"history: {path}")
    if not is_loopback(host):
        output.note("other machines can read the run names, models and hosts it serves")
    output.note("press Ctrl-C to stop")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        collector.close()
    return EXIT_OK


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` -> ``("127.0.0.1", 9464)``; ``":9464"`` listens everywhere;
    ``"[::1]:9464"`` for IPv6.

    Raises:
        UsageError: not ``HOST:PORT`` with a port 0-65535.
    """
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--listen must be HOST:PORT, e.g. {DEFAULT_LISTEN}, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)
