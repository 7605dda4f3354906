"""SMS channel: a short text to each phone number through Twilio's Messages API.

One ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` per recipient (basic auth with
the Account SID and auth token; form fields ``To``, ``From``, ``Body``). Twilio's answers:
201 with a message ``sid`` is delivered; 400 with error 21211 (invalid number), 21608
(unverified number on a trial account), 21610 (the recipient replied STOP) or 21614 (not a
mobile number) refuses that one recipient for good, and the others keep getting messages;
401 (error 20003) means the credentials are wrong and disables the channel; 429 and 5xx are
retried. A retry goes only to the recipients that do not have the event yet.

SMS costs money per segment, so only ERROR and CRITICAL events are sent by default
(``SMS_MIN_LEVEL`` to change), and the text is cut to one segment (:func:`sms_text`). The
end of a run is sent by its outcome's level (:func:`~afs_callbacks.channels.base.routed_level`):
a run stopped on a NaN/Inf texts, one that completed with warnings does not.
"""

from __future__ import annotations

import base64
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from afs_callbacks._log import get_logger
from afs_callbacks.channels._http import HttpChannel, json_object, short_body
from afs_callbacks.channels.base import DeliveryResult, Outcome, routed_level
from afs_callbacks.channels.hosts import check_host
from afs_callbacks.config import Env, Settings, channel_settings, validate_url
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import lead_of, unmarked_title
from afs_callbacks.redaction import register_secret

if TYPE_CHECKING:
    import requests

log = get_logger(__name__)

DEFAULT_API_URL = "https://api.twilio.com"
#: Twilio error codes that refuse one recipient, not the message or the channel.
RECIPIENT_ERRORS = {
    21211: "invalid number",
    21608: "unverified number (trial account)",
    21610: "the recipient replied STOP",
    21614: "not a mobile number",
}
#: Twilio error codes that no message can get past: the credentials or the sender.
CHANNEL_ERRORS = {
    20003: "authentication failed (check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)",
    20404: "the account does not exist",
    21212: "TWILIO_FROM_NUMBER is not a valid number",
    21606: "TWILIO_FROM_NUMBER cannot send SMS from this account",
    21659: "TWILIO_FROM_NUMBER is not a Twilio number",
}

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_AUTH_TOKEN = re.compile(r"^[A-Za-z0-9]{16,64}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_MAX_REMEMBERED = 1000


def mask_number(number: str) -> str:
    """``+447700900123`` -> ``+44…123``: enough to tell numbers apart in a log."""
    return f"{number[:3]}…{number[-3:]}" if len(number) > 7 else "***"


def check_number(number: str, variable: str) -> str:
    """An E.164 number (``+`` then 7-15 digits), spaces and dashes removed.

    Raises:
        ConfigurationError: naming ``variable``; the number is shown masked.
    """
    cleaned = re.sub(r"[\s().-]", "", number)
    if not _E164.match(cleaned):
        raise ConfigurationError(
            variable,
            f"{mask_number(cleaned)!s} is not an E.164 number like +14155550123 (+, country code, number)",
        )
    return cleaned


class SmsNotifier(HttpChannel):
    """Text each recipient through Twilio.

    Args:
        account_sid: the Account SID (``AC`` + 32 hex digits).
        auth_token: the account's auth token (a secret).
        from_number: a Twilio number of the account, E.164.
        to_numbers: recipients, E.164.
        api_url: Twilio's API base (a loopback server in tests).
        min_level: the lowest level sent (ERROR by default: SMS costs money). Test
            messages (``afs-notify test``) are always sent.
        timeout: seconds for connecting and for reading the answer (each).
        allow_http: accept a plain-http ``api_url`` to a non-loopback host.

    Raises:
        ConfigurationError: a malformed SID, token or number (the token never shown).
    """

    name: ClassVar[str] = "sms"
    variables: ClassVar[tuple[str, ...]] = (
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM_NUMBER",
        "SMS_TO_NUMBERS",
        "TWILIO_API_URL",
    )
    variable_aliases: ClassVar[dict[str, str]] = {
        "TWILIO_SID": "TWILIO_ACCOUNT_SID",
        "TWILIO_TOKEN": "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM": "TWILIO_FROM_NUMBER",
        "SMS_TO": "SMS_TO_NUMBERS",
    }
    own_prefixes: ClassVar[tuple[str, ...]] = ("TWILIO_", "SMS_")
    #: SMS costs money: errors and worse only, unless ``SMS_MIN_LEVEL`` says otherwise.
    default_min_level: ClassVar[str] = "error"
    listing_order: ClassVar[int] = 90
    hosts: ClassVar[tuple[str, ...]] = ("api.twilio.com",)
    #: Twilio sends about one message per second from a long-code number.
    min_interval: ClassVar[float] = 1.0
    disabling_statuses: ClassVar[frozenset[int]] = frozenset({401, 403})

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        to_numbers: Iterable[str],
        *,
        api_url: str = DEFAULT_API_URL,
        min_level: NotificationLevel = NotificationLevel.ERROR,
        timeout: float = 10.0,
        allow_http: bool = False,
    ) -> None:
        super().__init__(timeout=timeout)
        register_secret(auth_token)
        if not _ACCOUNT_SID.match(account_sid):
            raise ConfigurationError("TWILIO_ACCOUNT_SID", "must be AC followed by 32 hex digits")
        if not _AUTH_TOKEN.match(auth_token):
            raise ConfigurationError("TWILIO_AUTH_TOKEN", "does not look like a Twilio auth token")
        self.account_sid = account_sid
        self.from_number = check_number(from_number, "TWILIO_FROM_NUMBER")
        numbers = [check_number(number, "SMS_TO_NUMBERS") for number in to_numbers]
        self.to_numbers = list(dict.fromkeys(numbers))
        if not self.to_numbers:
            raise ConfigurationError("SMS_TO_NUMBERS", "must name at least one number")
        self.api_url = validate_url(
            api_url.rstrip("/"), "TWILIO_API_URL", allow_http=allow_http, secret=False
        )
        self.min_level = min_level
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode("ascii")
        self._auth = f"Basic {credentials}"
        register_secret(self._auth)
        #: Recipients refused for good (number -> reason): never texted again by this process.
        self.refused: dict[str, str] = {}
        # event id -> recipients that already have it (a retry skips them).
        self._done: OrderedDict[str, set[str]] = OrderedDict()

    @property
    def messages_url(self) -> str:
        """Where messages are created."""
        return f"{self.api_url}/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    def body(self, event: NotificationEvent) -> str:
        """One segment: ``ERROR: <title> - <lead>``, cut to fit. The lead is the message's
        first paragraph: a failure's error and where it happened, never its frames."""
        # The level says what the outcome's icon would; an emoji would make it UCS-2.
        title = unmarked_title(event.title.strip()) or event.event_type.value.replace("_", " ")
        text = f"{routed_level(event).value.upper()}: {title}"
        message = lead_of(event.message)
        if message and message != title:
            text += f" - {message}"
        return sms_text(text)

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Text every recipient that does not have the event yet; see the module doc."""
        if routed_level(event) < self.min_level and event.event_type is not EventType.TEST:
            return DeliveryResult.delivered(f"not sent: below SMS_MIN_LEVEL ({self.min_level.value})")
        done = self._remembered(event.id)
        body = self.body(event)
        results: list[DeliveryResult] = []
        for number in self.to_numbers:
            if number in done or number in self.refused:
                continue
            result = self._send_one(number, body)
            if result.ok:
                done.add(number)
            results.append(result)
        return self._combine(event.id, results, done)

    def _remembered(self, event_id: str) -> set[str]:
        done = self._done.setdefault(event_id, set())
        self._done.move_to_end(event_id)
        while len(self._done) > _MAX_REMEMBERED:
            self._done.popitem(last=False)
        return done

    def _send_one(self, number: str, body: str) -> DeliveryResult:
        form = {"To": number, "From": self.from_number, "Body": body}
        response = self.post(self.messages_url, data=form, headers={"Authorization": self._auth})
        if isinstance(response, DeliveryResult):
            return response
        return self.classify_for(number, response)

    def classify_for(self, number: str, response: requests.Response) -> DeliveryResult:
        """Twilio's answer for one recipient (the recipient's own refusals noted in
        :attr:`refused`)."""
        status = response.status_code
        answer = json_object(response)
        code = answer.get("code") if isinstance(answer.get("code"), int) else None
        if 200 <= status < 300:
            return DeliveryResult.delivered(f"{mask_number(number)} {answer.get('sid', '')}".strip())
        if code in RECIPIENT_ERRORS:
            self.refused[number] = f"{code} {RECIPIENT_ERRORS[code]}"
            log.warning(
                "afs-callbacks: sms to %s refused for good: %s", mask_number(number), self.refused[number]
            )
            return DeliveryResult.permanent(f"{mask_number(number)}: {self.refused[number]}")
        if code in CHANNEL_ERRORS or status in self.disabling_statuses:
            reason = CHANNEL_ERRORS.get(code or 0, f"HTTP {status}")
            return DeliveryResult.permanent(f"twilio error {code or status}: {reason}", disable_channel=True)
        if status in self.retry_statuses or status >= 500:
            return DeliveryResult.retry(f"HTTP {status}: {short_body(response)}", self.retry_hint(response))
        return DeliveryResult.permanent(f"HTTP {status}: {short_body(response)}")

    def _combine(self, event_id: str, results: list[DeliveryResult], done: set[str]) -> DeliveryResult:
        """One result for the event from the recipients' results."""
        channel_down = [r for r in results if r.disable_channel]
        if channel_down:
            return channel_down[0]
        retries = [r for r in results if r.outcome is Outcome.RETRY]
        if retries:
            hints = [r.retry_after for r in retries if r.retry_after is not None]
            return DeliveryResult.retry("; ".join(r.detail for r in retries), max(hints) if hints else None)
        self._done.pop(event_id, None)
        failures = [r.detail for r in results if r.outcome is Outcome.PERMANENT]
        if not done:
            everyone_refused = all(number in self.refused for number in self.to_numbers)
            detail = "; ".join(failures) or "every recipient is refused"
            return DeliveryResult.permanent(detail, disable_channel=everyone_refused)
        sent = f"sent to {len(done)} of {len(self.to_numbers)} number(s)"
        return DeliveryResult.delivered(f"{sent}; {'; '.join(failures)}" if failures else sent)

    def check(self) -> DeliveryResult:
        """Fetch the account (``GET .../Accounts/{sid}.json``): the credentials work; no SMS."""
        url = f"{self.api_url}/2010-04-01/Accounts/{self.account_sid}.json"
        try:
            response = self.session.get(
                url, headers={"Authorization": self._auth}, timeout=(self.timeout, self.timeout)
            )
        except Exception as error:
            return DeliveryResult.retry(f"{type(error).__name__}: could not reach {self.api_url}")
        if response.status_code == 200:
            state = str(json_object(response).get("status", "active"))
            if state != "active":
                return DeliveryResult.permanent(f"the Twilio account is {state}")
            return DeliveryResult.delivered("credentials work; account active")
        return self.classify_for("", response)

    def describe(self) -> str:
        """Sender and recipients, numbers shortened; never the token."""
        numbers = ", ".join(mask_number(number) for number in self.to_numbers)
        refused = f"; {len(self.refused)} refused" if self.refused else ""
        return f"sms from {mask_number(self.from_number)} to {numbers} ({self.min_level.value}+{refused})"

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> SmsNotifier | None:
        """``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``, ``TWILIO_FROM_NUMBER``,
        ``SMS_TO_NUMBERS`` (all needed), ``TWILIO_API_URL`` and ``SMS_MIN_LEVEL``; None
        when none of the four is set.

        Raises:
            ConfigurationError: one of the four is missing, or a value is malformed.
        """
        settings = channel_settings(env, settings)
        token = env.text("TWILIO_AUTH_TOKEN")
        register_secret(token)
        names = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER", "SMS_TO_NUMBERS")
        values = {name: env.text(name) for name in names}
        if not any(values.values()):
            return None
        missing = [name for name, value in values.items() if not value]
        if missing:
            given = ", ".join(name for name in names if values[name])
            raise ConfigurationError(missing[0], f"is needed when {given} is set")
        api_url = env.url("TWILIO_API_URL", secret=False, allow_http=settings.allow_http) or DEFAULT_API_URL
        check_host(api_url, "TWILIO_API_URL", ("api.twilio.com",), "Twilio")
        return cls(
            str(values["TWILIO_ACCOUNT_SID"]),
            str(token),
            str(values["TWILIO_FROM_NUMBER"]),
            env.items_list("SMS_TO_NUMBERS"),
            api_url=api_url,
            min_level=env.level("SMS_MIN_LEVEL", NotificationLevel.ERROR) or NotificationLevel.ERROR,
            timeout=settings.send_timeout,
            allow_http=settings.allow_http,
        )


# One segment ------------------------------------------------------------------------------
# A carrier bills per segment. A text of GSM-7 characters fits 160 of them in one segment
# (the extension characters ``^{}\\[~]|€`` count twice); one character outside that alphabet
# (an emoji, a CJK model name, a curly quote) turns the whole text into UCS-2, 70 characters
# a segment. Typographic punctuation is replaced by its ASCII twin first, so the usual text
# stays GSM-7.

GSM7_SEGMENT = 160
UCS2_SEGMENT = 70

_GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ ÆæßÉ!\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = set("^{}\\[~]|€\f")
# Look-alikes that would otherwise force UCS-2 for one character.
_ASCII_TWINS = str.maketrans(
    {
        "‘": "'",
        "’": "'",
        "‚": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "–": "-",
        "—": "-",
        "−": "-",
        "…": "...",
        "\u00a0": " ",
        "\t": " ",
        "•": "*",
        "·": "-",
        "×": "x",
    }
)


def gsm7_length(text: str) -> int | None:
    """Septets ``text`` takes in GSM-7, or None when it holds a character outside it."""
    length = 0
    for ch in text:
        if ch in _GSM7_BASIC:
            length += 1
        elif ch in _GSM7_EXTENSION:
            length += 2
        else:
            return None
    return length


def _cut_gsm7(text: str, limit: int) -> str:
    if (gsm7_length(text) or 0) <= limit:
        return text
    out, used = [], 0
    budget = limit - 3  # room for "..."
    for ch in text:
        cost = 2 if ch in _GSM7_EXTENSION else 1
        if used + cost > budget:
            break
        out.append(ch)
        used += cost
    return "".join(out).rstrip() + "..."


def sms_text(text: str, *, ucs2_limit: int = UCS2_SEGMENT) -> str:
    """``text`` made to fit one segment: 160 GSM-7 septets, else ``ucs2_limit`` characters
    (70 by default: one UCS-2 segment). Line breaks and runs of spaces become one space."""
    text = " ".join(text.translate(_ASCII_TWINS).split())
    if gsm7_length(text) is not None:
        return _cut_gsm7(text, GSM7_SEGMENT)
    if len(text) <= ucs2_limit:
        return text
    return text[: ucs2_limit - 1].rstrip() + "…"
