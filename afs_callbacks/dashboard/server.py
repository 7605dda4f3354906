"""The dashboard's HTTP server: standard library only (``http.server``), one thread per
request, pages and JSON over the outbox, opened read-only for each request.

Who may use it:
- Bound to loopback, only requests whose ``Host`` is a loopback name are answered, so a
  site that rebinds its DNS name to 127.0.0.1 cannot read the pages.
- With a token (required for any other address), every request needs it: ``?token=`` once
  (answered with an HttpOnly, SameSite=Strict cookie and a redirect that drops it from the
  address bar), the cookie, or ``Authorization: Bearer``. Anything else gets 401.
- ``afs-notify dashboard`` asks for a token on every address by default, as Jupyter does
  (the printed URL carries it; ``--no-token`` is for a single-user machine): on a shared
  node, loopback is every user's.
- The writes (a retry; a run's Stop and Checkpoint, ``afs_callbacks.control``) are POSTs
  that must carry the page's CSRF token in a header and, when the browser sends an Origin,
  come from this origin: another site's page can neither read the token nor set the header
  without a CORS preflight this server never grants. A stop waits for its confirmation
  (a second POST), and every command, refused ones too, is stored with who asked.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from afs_callbacks._log import get_logger
from afs_callbacks.control.commands import cancel, confirm, issue
from afs_callbacks.control.policy import DASHBOARD, ControlPolicy
from afs_callbacks.dashboard import api, pages, static
from afs_callbacks.dashboard.api import RunFilter
from afs_callbacks.delivery.faults import history_fault
from afs_callbacks.delivery.outbox import Command, Outbox, OutboxUnavailable
from afs_callbacks.redaction import redact
from afs_callbacks.tracking.asks import STOP

log = get_logger(__name__)

COOKIE = "afs_dashboard_token"
CSRF_HEADER = "X-AFS-CSRF"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class DashboardConfig:
    """What the server serves and who may see it.

    Args:
        path: the outbox file (read-only except for retries).
        token: required on every request when set (always set for a non-loopback bind).
        channels: rows of ``afs-notify status`` (channel, state, detail) with secrets masked.
        loopback: whether the server listens on a loopback address (the Host check).
        policy: who may command runs (``AFS_CONTROL`` must name ``dashboard`` for the Stop
            and Checkpoint buttons to work; default: off).
    """

    path: str
    token: str | None = None
    channels: Sequence[Mapping[str, str]] = ()
    loopback: bool = True
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    policy: ControlPolicy = field(default_factory=ControlPolicy)

    def __post_init__(self) -> None:
        self.path = str(Path(self.path).expanduser().absolute())

    def version(self) -> str:
        """Changes whenever anything is written: the sizes and modification times of the
        file and its WAL (every commit appends to the WAL; a checkpoint writes the file)."""
        parts = []
        for name in (self.path, self.path + "-wal"):
            try:
                stat = os.stat(name)
            except OSError:
                parts.append("-")
                continue
            parts.append(f"{stat.st_mtime_ns:x}.{stat.st_size:x}")
        return "-".join(parts)


class DashboardServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer carrying the dashboard's configuration."""

    daemon_threads = True
    config: DashboardConfig

    @property
    def url(self) -> str:
        """The address to open (with the token, when one is set)."""
        host, port = str(self.server_address[0]), self.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        if shown in ("0.0.0.0", "[::]"):
            shown = "127.0.0.1"  # any-address binds are reachable locally through loopback
        base = f"http://{shown}:{port}/"
        return f"{base}?token={self.config.token}" if self.config.token else base


def make_server(host: str, port: int, config: DashboardConfig) -> DashboardServer:
    """Bind (port 0 picks a free one) without serving yet; call ``serve_forever``."""
    server = DashboardServer((host, port), Handler)
    server.config = config
    return server


def serve_in_thread(server: DashboardServer) -> threading.Thread:
    """Serve from a daemon thread (tests, benchmarks); ``server.shutdown()`` stops it."""
    thread = threading.Thread(target=server.serve_forever, name="afs-dashboard", daemon=True)
    thread.start()
    return thread


class Handler(BaseHTTPRequestHandler):
    """One request: check who asks, then route to a page, a static file or the JSON API."""

    server: DashboardServer
    server_version = "afs-dashboard"
    sys_version = ""

    @property
    def config(self) -> DashboardConfig:
        """The server's configuration."""
        return self.server.config

    def log_message(self, format: str, *args: Any) -> None:
        """Request lines at debug level only, redacted (a ``?token=`` is in them)."""
        log.debug("afs-callbacks dashboard: %s", redact(format % args))

    # Entry points -------------------------------------------------------------------

    def do_GET(self) -> None:
        """Pages, static files and the read endpoints."""
        self._guarded(self._get)

    def do_POST(self) -> None:
        """The retry endpoint."""
        self._guarded(self._post)

    def _guarded(self, route: Callable[[str, dict[str, list[str]]], None]) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        try:
            if not self._host_allowed():
                self._send_text(HTTPStatus.MISDIRECTED_REQUEST, "unknown host name for this dashboard\n")
            elif self._token_in_query(query):
                return
            elif not self._authorized():
                self._send_html(HTTPStatus.UNAUTHORIZED, pages.unauthorized_page())
            else:
                route(parts.path, query)
        except OutboxUnavailable as problem:
            self._store_problem(parts.path, problem)
        except sqlite3.DatabaseError as error:  # damaged beyond what opening it showed
            detail = f"the history database cannot be read ({error})"
            self._store_problem(parts.path, OutboxUnavailable(self.config.path, "unreadable", detail, error))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-answer
        except Exception as error:  # never a traceback page
            log.warning("afs-callbacks dashboard: %s failed: %s", parts.path, redact(error))
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {redact(error)}"})

    # Who may ask --------------------------------------------------------------------

    def _host_allowed(self) -> bool:
        if not self.config.loopback or self.config.token:
            return True  # a token protects it; names other than loopback are expected
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.lower() in LOOPBACK_NAMES

    def _token_in_query(self, query: dict[str, list[str]]) -> bool:
        """Trade a correct ``?token=`` for a cookie and a clean address; True when answered."""
        given = query.get("token", [""])[0]
        if not given or not self.config.token or not hmac.compare_digest(given, self.config.token):
            return False
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", urlsplit(self.path).path or "/")
        self.send_header("Set-Cookie", f"{COOKIE}={self.config.token}; HttpOnly; SameSite=Strict; Path=/")
        self._end_headers(0)
        return True

    def _authorized(self) -> bool:
        token = self.config.token
        if not token:
            return True
        bearer = self.headers.get("Authorization", "")
        if bearer.startswith("Bearer ") and hmac.compare_digest(bearer[7:].strip(), token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:  # a malformed cookie header is just no token
            return False
        morsel = cookie.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value, token)

    def _same_origin_post(self) -> bool:
        sent = self.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent, self.config.csrf):
            return False
        origin = self.headers.get("Origin")
        if origin is None:
            return True  # non-browser clients send none; the CSRF header already proved the page
        return urlsplit(origin).netloc == (self.headers.get("Host") or "")

    # Routes -------------------------------------------------------------------------

    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        if path.startswith("/static/"):
            self._send_static(path.removeprefix("/static/"))
        elif path.startswith("/api/"):
            # An open tab asks every second; while nothing was written, "not modified" costs
            # no query at all (the browser revalidates: Cache-Control no-cache + ETag).
            tag = f'"{self.config.csrf[:8]}-{self.config.version()}"'
            if tag in self.headers.get("If-None-Match", ""):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.send_header("ETag", tag)
                self._end_headers(None, cache="no-cache")
                return
            self._send_json(HTTPStatus.OK, self._api(path.removeprefix("/api/"), query), etag=tag)
        elif path in ("/", "/runs", "/outbox") or path.startswith("/run/"):
            Outbox(self.config.path, read_only=True).close()  # a missing/corrupt file gets its own page now
            self._send_html(HTTPStatus.OK, pages.shell(csrf=self.config.csrf, store=self.config.path))
        else:
            self._send_text(HTTPStatus.NOT_FOUND, "not found\n")

    def _api(self, endpoint: str, query: dict[str, list[str]]) -> Any:
        # Its own read-only connection per request: under WAL a reader never blocks the
        # training process's writers, and a bug here cannot change the history.
        with Outbox(self.config.path, read_only=True) as outbox:
            if endpoint == "runs":
                where = RunFilter(
                    status=_one(query, "status"), model=_one(query, "model"), search=_one(query, "q")
                )
                return api.runs_payload(outbox, where)
            if endpoint.startswith("run/"):
                run_id = unquote(endpoint.removeprefix("run/"))
                payload = api.run_payload(outbox, run_id)
                return payload if payload is not None else _NotFound(f"no run {run_id!r} in the history")
            if endpoint == "events":
                limit = _limit(_one(query, "limit"))
                return api.events_payload(outbox, run_id=_one(query, "run") or None, limit=limit)
            if endpoint == "outbox":
                return api.outbox_payload(outbox, self.config.channels)
            if endpoint == "health":
                return {"ok": True, "store": self.config.path}
        return _NotFound(f"no endpoint /api/{endpoint}")

    def _post(self, path: str, query: dict[str, list[str]]) -> None:
        if path not in ("/api/retry", *_COMMAND_PATHS):
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        length = min(int(self.headers.get("Content-Length") or 0), 10_000)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = None
        if not self._same_origin_post():
            if path == "/api/command" and isinstance(body, dict):
                self._command(
                    body, refusal="refused: the request did not come from the dashboard's page (CSRF)"
                )
            self._send_json(HTTPStatus.FORBIDDEN, {"error": "cross-site request refused"})
            return
        if not isinstance(body, dict):
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "expected a JSON object"})
            return
        if path in _COMMAND_PATHS:
            answer = self._command(body) if path == "/api/command" else self._confirmation(path, body)
            self._send_json(HTTPStatus.OK if "error" not in answer else HTTPStatus.BAD_REQUEST, answer)
            return
        channel, event_id = body.get("channel") or None, body.get("event_id") or None
        if not os.path.isfile(self.config.path):
            raise OutboxUnavailable(self.config.path, "missing", "no history database yet")
        # A writer for one statement, as `afs-notify retry` is: the same outbox method.
        with Outbox(self.config.path) as outbox:
            count = outbox.requeue_dead([str(channel)] if channel else None, event_id=event_id)
        self._send_json(HTTPStatus.OK, {"requeued": count, "channel": channel, "event_id": event_id})

    def _command(self, body: Mapping[str, Any], refusal: str | None = None) -> dict[str, Any]:
        """``POST /api/command {"run_id", "action"}``: the one path of every surface
        (``control.issue``); a stop waits for ``/api/command/confirm``."""
        run_id, action = str(body.get("run_id") or "")[:300], str(body.get("action") or "")[:20]
        if not run_id or not os.path.isfile(self.config.path):
            return {"error": "expected a run_id of this dashboard's history"}
        with Outbox(self.config.path) as outbox:
            command = issue(
                outbox,
                run_id,
                action,
                source=DASHBOARD,
                actor=self._actor(),
                policy=self.config.policy,
                confirmed=action != STOP,
                refusal=refusal,
            )
        return {"command": _command_json(command)}

    def _confirmation(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /api/command/confirm`` or ``/cancel`` ``{"id"}``: a stop's second tap."""
        command_id = str(body.get("id") or "")[:64]
        with Outbox(self.config.path) as outbox:
            if path.endswith("/confirm"):
                command = confirm(outbox, command_id, actor=self._actor(), policy=self.config.policy)
            else:
                command = cancel(outbox, command_id, actor=self._actor())
        if command is None:
            return {"error": "no such command"}
        return {"command": _command_json(command)}

    def _actor(self) -> str:
        """Who asks: the holder of the dashboard's token, from this address."""
        return f"dashboard user at {self.client_address[0]}"

    # Answers ------------------------------------------------------------------------

    def _store_problem(self, path: str, problem: OutboxUnavailable) -> None:
        if path.startswith("/api/"):
            self._send_json(
                HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": str(problem), "store": problem.path, "reason": problem.reason},
            )
            return
        if problem.reason == "missing":
            title, hint = (
                "No history yet",
                "Nothing has been recorded in this state directory. Start a training with"
                " AFSNotify (or any afs-notify command) using the same AFS_STATE_DIR, or pass"
                " --state-dir to afs-notify dashboard.",
            )
        else:
            # The sentence `afs-notify status` and `afs-notify test` say about the same file.
            sentence = history_fault(problem.path, problem.error or problem)
            title, hint = "The history database cannot be read", sentence[:1].upper() + sentence[1:] + "."
        self._send_html(
            HTTPStatus.SERVICE_UNAVAILABLE,
            pages.error_page(title=title, detail=problem.detail, path=problem.path, hint=hint),
        )

    def _send_static(self, name: str) -> None:
        found = static.read(name)
        if found is None:
            self._send_text(HTTPStatus.NOT_FOUND, "not found\n")
            return
        body, content_type = found
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self._end_headers(len(body))
        self.wfile.write(body)

    def _send_json(self, status: HTTPStatus, data: Any, *, etag: str | None = None) -> None:
        if isinstance(data, _NotFound):
            status, data = HTTPStatus.NOT_FOUND, {"error": data.message}
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if etag is not None and status == HTTPStatus.OK:
            self.send_header("ETag", etag)
            self._end_headers(len(body), cache="no-cache")
        else:
            self._end_headers(len(body))
        self.wfile.write(body)

    def _send_html(self, status: HTTPStatus, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self._end_headers(len(body))
        self.wfile.write(body)

    def _send_text(self, status: HTTPStatus, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self._end_headers(len(body))
        self.wfile.write(body)

    def _end_headers(self, length: int | None, *, cache: str = "no-store") -> None:
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", cache)
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()


@dataclass(frozen=True)
class _NotFound:
    message: str


_COMMAND_PATHS = ("/api/command", "/api/command/confirm", "/api/command/cancel")


def _command_json(command: Command) -> dict[str, Any]:
    return {
        "id": command.id,
        "run_id": command.run_id,
        "action": command.action,
        "state": command.state,
        "detail": redact(command.detail),
        "actor": redact(command.actor),
    }


def _one(query: dict[str, list[str]], name: str) -> str:
    return query.get(name, [""])[0].strip()


def _limit(text: str, default: int = 100) -> int:
    """``?limit=`` as a number between 1 and 1,000 (the default when absent or garbled)."""
    return min(1000, max(1, int(text))) if text.isdigit() else default
