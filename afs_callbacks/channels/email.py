"""Email channel: one message per event through an SMTP server, TLS always verified.

``smtplib.SMTP.starttls()`` and ``smtplib.SMTP_SSL`` verify nothing unless given an SSL
context, so one built by :func:`ssl.create_default_context` (optionally trusting the CA file
the user names) is always passed: a relay with a bad certificate is refused, never used.
Plain SMTP (``security="none"``) is allowed only to a relay on this machine.

Each message is ``multipart/alternative``: plain text, then HTML (every piece of run text
HTML-escaped) inside ``multipart/related`` with charts as inline ``cid:`` images. The
Message-ID comes from the event id, so a retried message is recognisably the same one.

Login is tried once, with one mechanism: ``smtplib.SMTP.login`` would try every mechanism
the server offers in turn, and repeated failed logins get mail accounts locked. A refused
login disables the channel for the process instead of failing every later message again.
"""

from __future__ import annotations

import html
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from afs_callbacks._log import get_logger
from afs_callbacks.channels.base import DeliveryResult, NotificationHandler
from afs_callbacks.config import Settings, channel_settings, is_loopback
from afs_callbacks.events import EventType
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import context_fields, format_value, level_hex, plain_text, truncate
from afs_callbacks.outcome import Outcome
from afs_callbacks.redaction import basic_credentials, redact, register_secret

if TYPE_CHECKING:
    from afs_callbacks.config import Env
    from afs_callbacks.events import NotificationEvent

log = get_logger(__name__)

SUBJECT_CHARS = 200
# A traceback can be long; mail servers refuse huge messages and nobody reads past this.
BODY_CHARS = 100_000

#: The default port of each ``SMTP_SECURITY`` mode.
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
# Mechanisms in the order tried; CRAM-MD5 is left out (it needs the server to keep the
# password in clear, and over TLS it protects nothing PLAIN does not).
_MECHANISMS = ("PLAIN", "LOGIN")


class EmailNotifier(NotificationHandler):
    """Send each event as an email (text + HTML, charts inline).

    Args:
        host: the SMTP server.
        recipients: addresses to send to.
        sender: the ``From`` address, optionally with a name: ``Training bot <bot@example.org>``.
        port: default 587 for ``starttls``, 465 for ``ssl``, 25 for ``none``.
        username: login name; no login when None.
        password: the login password (required with ``username``).
        security: ``starttls`` (upgrade a plain connection), ``ssl`` (TLS from the first
            byte) or ``none`` (loopback relays only).
        ca_file: a PEM file of CA certificates to trust instead of the system's (a private
            relay's CA). The server's certificate is verified either way.
        timeout: seconds for connecting and for each server answer.

    Raises:
        ConfigurationError: an unknown security mode, ``none`` to a remote host, a bad
            address, a missing password or an unreadable CA file.

    Example::

        EmailNotifier("smtp.example.org", ["me@example.org"], "runs@example.org",
                      username="runs@example.org", password="app-password")
    """

    name: ClassVar[str] = "email"
    variables: ClassVar[tuple[str, ...]] = (
        "SMTP_HOST",
        "TO_EMAILS",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "FROM_EMAIL",
        "SMTP_SECURITY",
        "SMTP_PORT",
        "SMTP_CA_FILE",
    )
    variable_aliases: ClassVar[dict[str, str]] = {
        "SMTP_SERVER": "SMTP_HOST",
        "SMTP_PASS": "SMTP_PASSWORD",
        "SMTP_USERNAME": "SMTP_USER",
        "EMAIL_TO": "TO_EMAILS",
        "EMAIL_FROM": "FROM_EMAIL",
        "TO_EMAIL": "TO_EMAILS",
    }
    listing_order: ClassVar[int] = 20
    min_interval: ClassVar[float] = 0.5
    supports_images: ClassVar[bool] = True

    def __init__(
        self,
        host: str,
        recipients: list[str] | tuple[str, ...],
        sender: str,
        *,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        security: str = "starttls",
        ca_file: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        # The password travels base64-encoded in AUTH PLAIN and AUTH LOGIN; a server's 535
        # may quote what it got.
        register_secret(password, *(basic_credentials(username, password) if password else ()))
        security = security.strip().lower()
        if security not in DEFAULT_PORTS:
            raise ConfigurationError("SMTP_SECURITY", f"must be starttls, ssl or none, got {security!r}")
        if security == "none" and not is_loopback(host):
            raise ConfigurationError(
                "SMTP_SECURITY",
                f"'none' would send mail (and any password) in clear text to {host}; it is "
                "allowed only for a relay on this machine (localhost, 127.0.0.1). Use "
                "starttls (port 587) or ssl (port 465)",
            )
        if not recipients:
            raise ConfigurationError("TO_EMAILS", "must name at least one address")
        for address in recipients:
            _check_address("TO_EMAILS", address)
        display_name, sender_address = parseaddr(sender)
        _check_address("FROM_EMAIL", sender_address)
        if username and not password:
            raise ConfigurationError("SMTP_PASSWORD", "must be set when SMTP_USER is")
        if password and not username:
            raise ConfigurationError("SMTP_USER", "must be set when SMTP_PASSWORD is")
        self.host = host
        self.port = port or DEFAULT_PORTS[security]
        self.recipients = tuple(recipients)
        #: The From header (a display name is kept) and the bare envelope address.
        self.sender = formataddr((display_name, sender_address)) if display_name else sender_address
        self.sender_address = sender_address
        self.username = username
        self._password = password
        self.security = security
        self.ca_file = ca_file
        self.timeout = timeout
        self._tls = _tls_context(ca_file)

    # Sending ---------------------------------------------------------------------------

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Connect, log in once, send, quit; classify whatever the server or network says."""
        try:
            message = self.compose(event)
        except (ValueError, TypeError) as error:  # an attachment no mail can carry
            return DeliveryResult.permanent(f"cannot build the message: {_text(error)}")
        try:
            with self._session() as smtp:
                refused = smtp.send_message(message, self.sender_address, list(self.recipients))
        except Exception as error:  # every failure becomes a result; send never raises
            if event.attachments and _too_big(error):
                # The relay's size limit: the chart made the message too big. Without it
                # the message fits; the sender sends it again so (DeliveryResult contract).
                return DeliveryResult.refused_attachment(classify_error(error, self).detail)
            return classify_error(error, self)
        if refused:
            # The others got it: retrying would send them a second copy.
            detail = (
                f"delivered to {len(self.recipients) - len(refused)} of {len(self.recipients)} "
                f"recipients; {len(refused)} refused: {_describe_refused(refused)}"
            )
            log.warning("afs-callbacks: email %s", detail)
            return DeliveryResult.delivered(detail)
        return DeliveryResult.delivered(f"{len(self.recipients)} recipient(s)")

    def check(self) -> DeliveryResult:
        """Connect, negotiate TLS and log in, then quit without sending anything."""
        try:
            with self._session() as smtp:
                code, _ = smtp.noop()
        except Exception as error:
            return classify_error(error, self)
        return DeliveryResult.delivered(f"{self.host}:{self.port} accepted the connection (NOOP {code})")

    def _session(self) -> smtplib.SMTP:
        """A connected, encrypted and logged-in SMTP client (a context manager)."""
        # An explicit local name: smtplib's default is socket.getfqdn(), a DNS lookup
        # that takes seconds on a cluster node with broken reverse DNS.
        local = socket.gethostname() or "localhost"
        smtp: smtplib.SMTP
        if self.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, local_hostname=local, timeout=self.timeout, context=self._tls
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, local_hostname=local, timeout=self.timeout)
        try:
            smtp.ehlo()
            if self.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise _NoStartTLS
                smtp.starttls(context=self._tls)
                smtp.ehlo()
            if self.username:
                self._login(smtp)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _login(self, smtp: smtplib.SMTP) -> None:
        offered = (smtp.esmtp_features.get("auth") or "").upper().split()
        mechanism = next((m for m in _MECHANISMS if m in offered), None)
        if mechanism is None:
            raise _NoAuth(offered)
        smtp.user, smtp.password = self.username or "", self._password or ""
        authobject = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        smtp.auth(mechanism, authobject)

    # Formatting ------------------------------------------------------------------------

    def compose(self, event: NotificationEvent) -> EmailMessage:
        """The whole message: headers, text and HTML alternatives, charts inline."""
        return build_message(event, self.sender, self.sender_address, self.recipients)

    # Description -----------------------------------------------------------------------

    def describe(self) -> str:
        """Server, security mode, login name and recipients; never the password."""
        login = f" as {self.username}" if self.username else ""
        return f"email {self.host}:{self.port} ({self.security}){login} -> " + ", ".join(self.recipients)

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> EmailNotifier | None:
        """``SMTP_HOST``, ``TO_EMAILS``, ``FROM_EMAIL`` (default ``SMTP_USER`` when it is an
        address), ``SMTP_PORT``, ``SMTP_USER``, ``SMTP_PASSWORD``, ``SMTP_SECURITY``,
        ``SMTP_CA_FILE``. None when neither ``SMTP_HOST`` nor ``TO_EMAILS`` is set.

        Raises:
            ConfigurationError: one is set without the other, or a value is wrong.
        """
        settings = channel_settings(env, settings)
        host = env.text("SMTP_HOST")
        recipients = env.items_list("TO_EMAILS")
        if host is None and not recipients:
            return None
        if host is None:
            raise ConfigurationError("SMTP_HOST", "must be set when TO_EMAILS is")
        if not recipients:
            raise ConfigurationError("TO_EMAILS", "must be set when SMTP_HOST is")
        username = env.text("SMTP_USER")
        sender = env.text("FROM_EMAIL") or (username if username and "@" in username else None)
        if sender is None:
            raise ConfigurationError("FROM_EMAIL", "must be set (or SMTP_USER must be an address)")
        return cls(
            host,
            recipients,
            sender,
            port=env.port("SMTP_PORT"),
            username=username,
            # Only line ends are stripped (a secret mounted from a file has one); a
            # password may end in a space.
            password=(env.get("SMTP_PASSWORD") or "").rstrip("\r\n") or None,
            security=env.text("SMTP_SECURITY", "starttls") or "starttls",
            ca_file=env.text("SMTP_CA_FILE"),
            timeout=settings.send_timeout,
        )


# Classifying failures -----------------------------------------------------------------


class _NoStartTLS(smtplib.SMTPException):
    """The server does not offer STARTTLS (never fall back to plain text)."""


class _NoAuth(smtplib.SMTPException):
    """The server offers no login mechanism this client uses."""

    def __init__(self, offered: list[str]) -> None:
        super().__init__(" ".join(offered) or "none")


def classify_error(error: BaseException, channel: EmailNotifier) -> DeliveryResult:
    """Turn an ``smtplib``/``ssl``/socket exception into a delivery result.

    4xx answers and network trouble are retried; 5xx answers are permanent; a refused
    login also disables the channel (repeated failed logins get accounts locked).
    """
    where = f"{channel.host}:{channel.port}"
    if isinstance(error, ssl.SSLCertVerificationError):
        trust = f"the CA in SMTP_CA_FILE ({channel.ca_file})" if channel.ca_file else "the system's CAs"
        return DeliveryResult.permanent(
            f"TLS certificate of {where} did not verify against {trust}: "
            f"{error.verify_message or error.reason}; nothing was sent. Fix the server's "
            "certificate, or set SMTP_CA_FILE to the CA of a private relay"
        )
    if isinstance(error, ssl.SSLError):
        hint = (
            " (SMTP_SECURITY=ssl expects TLS from the first byte, usually port 465; port 587 needs starttls)"
            if channel.security == "ssl"
            else ""
        )
        return DeliveryResult.permanent(f"TLS with {where} failed: {_text(error)}{hint}")
    if isinstance(error, _NoStartTLS):
        return DeliveryResult.permanent(
            f"{where} does not offer STARTTLS; refusing to send in clear text (use "
            "SMTP_SECURITY=ssl for port 465)",
            disable_channel=True,
        )
    if isinstance(error, _NoAuth):
        return DeliveryResult.permanent(
            f"{where} offers no PLAIN or LOGIN authentication (offers: {error})", disable_channel=True
        )
    if isinstance(error, smtplib.SMTPAuthenticationError):
        reply = f"{error.smtp_code} {_reply(error.smtp_error)}"
        if error.smtp_code < 500:
            return DeliveryResult.retry(f"{where} could not check the login now: {reply}")
        return DeliveryResult.permanent(
            f"{where} refused the login of {channel.username!r} ({reply}); check SMTP_USER "
            "and SMTP_PASSWORD (many providers want an app password). Channel disabled so "
            "repeated failures do not lock the account",
            disable_channel=True,
        )
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        refused = error.recipients
        detail = f"all {len(refused)} recipient(s) refused: {_describe_refused(refused)}"
        if any(code < 500 for code, _ in refused.values()):
            return DeliveryResult.retry(detail)
        return DeliveryResult.permanent(detail)
    if isinstance(error, smtplib.SMTPResponseException):
        what = "sender refused" if isinstance(error, smtplib.SMTPSenderRefused) else "server said"
        detail = f"{where} {what}: {error.smtp_code} {_reply(error.smtp_error)}"
        if 400 <= error.smtp_code < 500:
            return DeliveryResult.retry(detail)
        return DeliveryResult.permanent(detail)
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return DeliveryResult.permanent(f"{where}: {_text(error)}")
    if isinstance(error, (OSError, smtplib.SMTPException)):
        # Refused or reset connections, timeouts, DNS failures, disconnects: transient.
        hint = ""
        if channel.security == "starttls" and channel.port == 465:
            hint = " (port 465 usually speaks TLS from the first byte: set SMTP_SECURITY=ssl)"
        return DeliveryResult.retry(f"cannot reach {where}: {type(error).__name__}: {_text(error)}{hint}")
    return DeliveryResult.retry(f"{type(error).__name__}: {_text(error)}")


def _too_big(error: BaseException) -> bool:
    """The server refused the message for its size: 552 (RFC 5321: exceeded storage
    allocation, what relays answer over ``message_size_limit``) or enhanced code 5.3.4."""
    if not isinstance(error, smtplib.SMTPResponseException):
        return False
    reply = _reply(error.smtp_error)
    return error.smtp_code == 552 or reply.startswith("5.3.4")


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    if ca_file is None:
        return ssl.create_default_context()
    path = Path(ca_file).expanduser()
    if not path.is_file():
        raise ConfigurationError("SMTP_CA_FILE", f"no such file: {path}")
    try:
        return ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as error:
        raise ConfigurationError("SMTP_CA_FILE", f"not a PEM CA certificate file ({error}): {path}") from None


def _check_address(variable: str, address: str) -> None:
    # CR/LF would inject headers; a missing @ is a typo caught now rather than at 3 a.m.
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c in address for c in "\r\n,;<> "):
        raise ConfigurationError(variable, f"is not an email address: {address!r}")


def _describe_refused(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{address} ({code} {_reply(reply)})" for address, (code, reply) in refused.items())


def _reply(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return truncate(" ".join(text.split()), 200)


def _text(error: BaseException) -> str:
    # Server replies can be echoed in exception text; never the password, but redact anyway.
    return truncate(redact(str(error) or type(error).__name__), 300)


# The message (no network here) ---------------------------------------------------------

#: The most characters of a failure's subject: the error after "❌ resnet failed: " is cut.
FAILURE_SUBJECT_CHARS = 120
_FAILURE_TYPES = frozenset({EventType.TRAINING_FAILED, EventType.OUT_OF_MEMORY})


def build_message(
    event: NotificationEvent, sender: str, sender_address: str, recipients: tuple[str, ...]
) -> EmailMessage:
    """The whole message: headers, text and HTML alternatives, charts inline."""
    message = EmailMessage()
    message["Subject"] = subject(event)
    message["From"] = sender
    # Angle brackets, as mail programs write a bare address: a To without them beside an
    # HTML image is a spam sign (spamassassin's TO_NO_BRKTS_HTML_IMG).
    message["To"] = ", ".join(f"<{address}>" for address in recipients)
    message["Date"] = format_datetime(event.timestamp)
    domain = sender_address.rpartition("@")[2]
    message["Message-ID"] = f"<{event.id}.afs@{domain}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message["X-AFS-Event"] = event.event_type.value
    # Quoted-printable keeps the message 7-bit clean for relays without 8BITMIME.
    message.set_content(text_body(event), cte="quoted-printable")
    images = [a for a in event.attachments if a.content_type.startswith("image/")]
    cids = [make_msgid(domain=domain) for _ in images]
    page = html_body(event, [cid[1:-1] for cid in cids])
    message.add_alternative(page, subtype="html", cte="quoted-printable")
    # The HTML alternative becomes multipart/related once an image is added to it; the
    # image is inline (shown where the HTML refers to it by cid:), not listed as a file.
    html_part = message.get_body(("html",))
    assert html_part is not None  # just added
    for attachment, cid in zip(images, cids, strict=True):
        maintype, _, subtype = attachment.content_type.partition("/")
        html_part.add_related(
            attachment.data, maintype, subtype, cid=cid, filename=attachment.filename, disposition="inline"
        )
    for attachment in event.attachments:
        if attachment not in images:
            maintype, _, subtype = attachment.content_type.partition("/")
            message.add_attachment(
                attachment.data, maintype, subtype or "octet-stream", filename=attachment.filename
            )
    return message


def subject(event: NotificationEvent) -> str:
    """``[LEVEL] title``; a failure names its error: ``❌ resnet failed: RuntimeError: CUDA
    error…``, so the inbox line alone says what happened. Never a line break (it would
    start a new header)."""
    error = event.context.get("error")
    outcome = Outcome.of_event(event)
    if event.event_type in _FAILURE_TYPES and error and outcome in (None, Outcome.FAILED):
        who = " ".join(str(event.model or "training").split())
        text = f"{Outcome.FAILED.icon} {who} failed: {' '.join(str(error).split())}"
        return truncate(text, FAILURE_SUBJECT_CHARS, mark="…")
    title = " ".join(event.title.split()) or event.event_type.value
    return truncate(f"[{event.level.value.upper()}] {title}", SUBJECT_CHARS)


def text_body(event: NotificationEvent) -> str:
    """The text/plain alternative: level and title, the message, the run's details, the
    metrics, a failure's full traceback, then the footer."""
    text = truncate(plain_text(event), BODY_CHARS)
    full = _traceback(event)
    if full:
        text += "\n\nFull traceback:\n" + truncate(full, BODY_CHARS)
    return text + footer(event)


def html_body(event: NotificationEvent, image_cids: list[str]) -> str:
    """The HTML alternative: a card of the level's colour with the title, the message (its
    first line in bold: a failure's error, then where it happened), the run's details and metrics,
    the chart inline, a failure's full traceback, and why the mail came. Every piece of
    run text is escaped; styles are inline, as mail programs drop style sheets."""
    esc = html.escape
    color = level_hex(event.level)
    cell = 'style="padding:3px 16px 3px 0;vertical-align:top;color:#374151"'
    rows = "".join(
        f'<tr><th align="left" {cell}>{esc(label)}</th><td style="padding:3px 0">{esc(value)}</td></tr>'
        for label, value in context_fields(event)
    )
    metrics = "".join(
        f"<tr><td {cell}>{esc(str(name))}</td>"
        f'<td style="padding:3px 0;font-family:Menlo,Consolas,monospace">{esc(format_value(value))}</td></tr>'
        for name, value in event.metrics.items()
    )
    section = 'style="padding:8px 24px"'
    heading = 'style="margin:0 0 6px 0;font-size:15px;color:#111827"'
    kind = event.event_type.value.replace("_", " ")
    parts = [
        f'<tr><td style="padding:20px 24px 4px 24px"><p style="margin:0;color:{color};font-weight:bold;'
        f'font-size:13px;letter-spacing:0.04em">{esc(event.level.value.upper())} · {esc(kind)}</p>'
        f'<h1 style="margin:6px 0 4px 0;font-size:20px;line-height:1.3;color:#111827">{esc(event.title)}</h1>'
        "</td></tr>",
    ]
    message = truncate(event.message.strip(), BODY_CHARS)
    if message:
        lead, _, rest = message.partition("\n\n")
        first, _, more = lead.partition("\n")
        parts.append(
            f'<tr><td {section}><p style="margin:0;font-size:15px;line-height:1.5;white-space:pre-wrap;'
            f'color:#111827"><strong>{esc(first)}</strong>'
            + (f"\n{esc(more)}" if more else "")
            + "</p>"
            + (
                f'<pre style="margin:10px 0 0 0;white-space:pre-wrap;font-size:13px;color:#374151;'
                f'font-family:Menlo,Consolas,monospace">{esc(rest)}</pre>'
                if rest.strip()
                else ""
            )
            + "</td></tr>"
        )
    if rows:
        parts.append(
            f'<tr><td {section}><h2 {heading}>Run</h2><table role="presentation" cellpadding="0"'
            f' cellspacing="0" style="font-size:14px">{rows}</table></td></tr>'
        )
    if metrics:
        parts.append(
            f'<tr><td {section}><h2 {heading}>Metrics</h2><table role="presentation" cellpadding="0"'
            f' cellspacing="0" style="font-size:14px">{metrics}</table></td></tr>'
        )
    images = [a for a in event.attachments if a.content_type.startswith("image/")]
    for attachment, cid in zip(images, image_cids, strict=False):
        name = esc(attachment.filename or "chart")
        parts.append(
            f'<tr><td {section}><h2 {heading}>Chart</h2><img src="cid:{esc(cid)}" alt="{name}: the run\'s'
            f' curves" width="560" style="display:block;max-width:100%;height:auto;border:1px solid #e5e7eb">'
            f'<p style="margin:4px 0 0 0;font-size:12px;color:#6b7280">{name}, drawn when the run'
            " ended; every point is also in the run&#39;s history.</p></td></tr>"
        )
    full = _traceback(event)
    if full:
        parts.append(
            f'<tr><td {section}><h2 {heading}>Full traceback</h2><pre style="margin:0;white-space:pre-wrap;'
            f'font-size:12px;color:#374151;font-family:Menlo,Consolas,monospace">'
            f"{esc(truncate(full, BODY_CHARS))}</pre></td></tr>"
        )
    parts.append(
        '<tr><td style="padding:12px 24px 20px 24px;border-top:1px solid #e5e7eb;font-size:12px;'
        f'line-height:1.5;color:#6b7280">{esc(_origin(event))}<br>{esc(_why(event))}</td></tr>'
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(event.title)}</title><style>{_STYLE}</style></head>"
        '<body style="margin:0;padding:0;background:#f3f4f6">'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0"'
        ' style="background:#f3f4f6"><tr><td align="center" style="padding:24px 12px">'
        '<table role="presentation" class="card" width="600" cellpadding="0" cellspacing="0"'
        ' style="max-width:600px;'
        f"width:100%;background:#ffffff;border-top:6px solid {color};border-radius:6px;"
        'font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;text-align:left">\n'
        + "\n".join(parts)
        + "\n</table></td></tr></table></body></html>"
    )


# Inline styles do the layout (mail programs drop style sheets); this adds what only a
# style sheet can say, for the programs that read one: small screens and dark mode.
_STYLE = (
    "@media (max-width:620px){.card{border-radius:0 !important}.card td{padding-left:14px !important;"
    "padding-right:14px !important}h1{font-size:18px !important}}"
    "@media (prefers-color-scheme:dark){body,.card{background:#111827 !important}"
    ".card,.card h1,.card h2,.card p,.card th,.card td{color:#f3f4f6 !important}"
    ".card pre{color:#d1d5db !important}.card img{background:#ffffff}}"
)


def footer(event: NotificationEvent) -> str:
    """The plain-text signature: where and when the event came from, its id, and why the
    mail came."""
    return f"\n\n-- \n{_origin(event)}\n{_why(event)}"


def _origin(event: NotificationEvent) -> str:
    host = event.context.get("host")
    where = f" on {host}" if host else ""
    return f"afs-callbacks{where}, {event.timestamp:%Y-%m-%d %H:%M:%S} UTC, event {event.id}"


def _why(event: NotificationEvent) -> str:
    run = event.run_id
    history = (
        f"`afs-notify history --run {run}` lists the run's messages, and `afs-notify dashboard`"
        " shows its curves. "
        if run
        else ""
    )
    return (
        f"An automatic message about a training run. {history}This address gets them because"
        " TO_EMAILS names it in the run's afs-callbacks settings; EMAIL_MIN_LEVEL and"
        " EMAIL_EVENTS choose which ones, and removing it from TO_EMAILS stops them."
    )


def _traceback(event: NotificationEvent) -> str:
    """A failure's full traceback (``context["traceback"]``), when it carries one."""
    value = event.context.get("traceback")
    return value.strip() if isinstance(value, str) else ""
