"""SMS text that fits one segment: GSM-7 (160 characters) when it can, UCS-2 (70) otherwise.

A carrier bills per segment. A text of GSM-7 characters fits 160 of them in one segment
(the extension characters ``^{}\\[~]|€`` count twice); one character outside that alphabet
(an emoji, a CJK model name, a curly quote) turns the whole text into UCS-2, 70 characters
a segment. Typographic punctuation is replaced by its ASCII twin first, so the usual text
stays GSM-7.
"""

from __future__ import annotations

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
