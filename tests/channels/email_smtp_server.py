"""A real SMTP server on loopback for the email tests: aiosmtpd with STARTTLS or implicit
TLS, AUTH, scripted refusals, and a record of what it accepted."""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

USER = "runs@example.org"
PASSWORD = "Tr0ub4dor&3-horse-battery"


@dataclass
class Received:
    """One accepted message."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    login: str | None


@dataclass
class RecordingHandler:
    """An aiosmtpd handler: refuses the listed recipients, answers DATA as scripted
    (``data_replies``, used first), records every message and every AUTH attempt."""

    refused: dict[str, str] = field(default_factory=dict)
    data_replies: deque[str] = field(default_factory=deque)
    messages: list[Received] = field(default_factory=list)
    auth_attempts: list[tuple[str, str]] = field(default_factory=list)
    password: str = PASSWORD

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refused:
            return self.refused[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.popleft()
        content = envelope.original_content or b""
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        # session.ssl is set after STARTTLS; an implicit-TLS transport is seen via the server.
        tls = session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None
        self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), content, tls, login))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.auth_attempts.append((mechanism, login))
        if login == USER and password == self.password:
            return AuthResult(success=True, auth_data=auth_data)
        # handled=False: aiosmtpd then answers 535 itself (handled=True would answer nothing).
        return AuthResult(success=False, handled=False)


class LoopbackController(Controller):
    """aiosmtpd's Controller on a free port chosen by the OS (``port=0``)."""

    def _trigger_server(self) -> None:
        # The base class connects to self.port to finish starting; with port 0 that must
        # first become the port actually bound.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 and localhost signed by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def start_server(
    handler: RecordingHandler,
    *,
    security: str,
    ca: trustme.CA | None = None,
    auth: bool = True,
    offer_starttls: bool = True,
) -> LoopbackController:
    """Start a server speaking ``security`` (starttls, ssl, none); stop it with ``.stop()``."""
    options: dict[str, Any] = {}
    if auth:
        options.update(authenticator=handler.authenticate, auth_required=True)
    if security == "starttls" and offer_starttls:
        assert ca is not None
        options.update(tls_context=server_tls(ca), require_starttls=True)
    elif security == "ssl":
        assert ca is not None
        options.update(ssl_context=server_tls(ca), auth_require_tls=False)
    else:
        options.update(auth_require_tls=False)
    controller = LoopbackController(handler, hostname="127.0.0.1", port=0, **options)
    controller.start()
    return controller


def recipients(*names: str) -> Iterable[str]:
    """Addresses at example.org."""
    return [f"{name}@example.org" for name in names]
