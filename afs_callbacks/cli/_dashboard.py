"""``afs-notify dashboard``: serve the live web dashboard over the history and print its URL.

Bound to 127.0.0.1 by default, and, as Jupyter does, it asks for a token on every address:
one is generated and the printed URL carries it (``--token`` sets it). On a shared node
loopback is every user's, and the pages show run names, hosts and errors, and can stop
runs. ``--no-token`` drops it, on a loopback address only, for a single-user machine.
"""

from __future__ import annotations

import argparse
import re
import secrets
import webbrowser
from contextlib import suppress

from afs_callbacks.cli._common import EXIT_OK, UsageError, open_session, release, say_off, switch_of
from afs_callbacks.cli._output import Output
from afs_callbacks.cli._store_check import history_path
from afs_callbacks.config import off_line, open_env, read_settings
from afs_callbacks.control.policy import DASHBOARD, ControlPolicy
from afs_callbacks.urls import is_loopback


def command_dashboard(args: argparse.Namespace, output: Output) -> int:
    """Serve until interrupted (Ctrl-C ends it with exit code 0)."""
    # Imported here: http.server and the pages cost every other subcommand's start-up.
    from afs_callbacks.dashboard import DashboardConfig, make_server

    loopback = is_loopback(args.host)
    if args.no_token and args.token:
        raise UsageError("--no-token and --token contradict each other; choose one")
    if args.no_token and not loopback:
        raise UsageError("--no-token is for a loopback address only: other machines must need the token")
    token = None if args.no_token else (args.token or secrets.token_urlsafe(18))
    if args.token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{8,}", args.token):
        raise UsageError(
            "--token must be at least 8 letters, digits or . _ ~ - (it goes in a URL and a cookie)"
        )
    env = open_env(None, getattr(args, "env_file", None))
    config = DashboardConfig(
        path=str(history_path(args.state_dir)),
        token=token,
        channels=channel_rows(args),
        loopback=loopback,
        policy=ControlPolicy.from_settings(read_settings(env), env),
    )
    try:
        server = make_server(args.host, args.port, config)
    except OSError as error:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from None
    # The URL goes to stdout even with --quiet: it is what the command is for.
    print(f"afs-notify dashboard: {server.url}", flush=True)
    output.note(f"history: {config.path}")
    switch = switch_of(args)
    if switch is not None:
        say_off(output, switch, "runs started while it is set are not shown here", stored=True)
    if token and not args.token:
        output.note("open the URL above: it carries the access token (--no-token on a single-user machine)")
    if not loopback:
        output.note("anyone who can reach this address and has the URL can see and retry messages")
    if DASHBOARD in config.policy.surfaces:
        output.note("runs that take dashboard commands (AFS_CONTROL) get Stop and Checkpoint buttons")
    output.note("press Ctrl-C to stop")
    if args.open:
        with suppress(Exception):  # no browser here is not an error: the URL is printed
            webbrowser.open(server.url)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


def channel_rows(args: argparse.Namespace) -> list[dict[str, str]]:
    """Each configured channel and where it sends, masked as ``afs-notify status`` shows it.

    The settings come from this shell's environment and .env; a problem there costs the
    table, never the dashboard.
    """
    from afs_callbacks.cli._status import channel_rows as status_rows

    try:
        session = open_session(args)
    except Exception:
        return []
    try:
        rows = status_rows(session, None)
        # What `afs-notify status` says above and below its table, said here too.
        notices = []
        if session.off is not None:
            notices.append(
                {"channel": "settings", "state": "off", "detail": off_line(session.off, stored=True)}
            )
        notices += [{"channel": "settings", "state": "warning", "detail": str(u)} for u in session.unknown]
        return notices + [
            {"channel": row.channel, "state": row.state, "detail": row.detail}
            for row in rows
            if row.state not in ("not set up", "off")
        ]
    finally:
        release(session.manager, store=False)  # a reader: it must not create the history
