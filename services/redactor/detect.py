"""Sensitive-data class detection over content, before the content is dropped.

Only class labels and counts leave this module: never the matched text, never offsets.
One compiled alternation is scanned once per text (the ``re`` engine walks the text a
single time instead of once per class); candidates with a checksum (cards: Luhn, IBAN:
mod-97) are confirmed before they count, so random digit runs are not reported as cards.
"""

from __future__ import annotations

import re
from collections import Counter

CLASSES = (
    "payment_card",
    "iban",
    "us_ssn",
    "email",
    "phone",
    "ip_address",
    "secret",
    "bulk_personal_data",
)

# Bulk pastes: this many e-mail addresses, or this many record-like lines, in one text.
BULK_EMAILS = 10
BULK_RECORD_LINES = 20

_PATTERNS: list[tuple[str, str]] = [
    # Secrets first: a token can contain digit runs that would otherwise look like a card.
    ("secret_pem", r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY(?: BLOCK)?-----"),
    ("secret_aws", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
    ("secret_github", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
    ("secret_slack", r"\bxox[abprs]-[A-Za-z0-9-]{10,200}"),
    ("secret_openai", r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,200}"),
    ("secret_jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    ("email", r"\b[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b"),
    ("iban", r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
    ("payment_card", r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])"),
    ("us_ssn", r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"),
    (
        "ip_address",
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])",
    ),
    (
        "phone",
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w-])",
    ),
]

_COMBINED = re.compile("|".join(f"(?P<{name}>{pat})" for name, pat in _PATTERNS))
_RECORD_LINE = re.compile(r"^[^\n]*(?:[,;\t|][^\n,;\t|]*){3,}$", re.MULTILINE)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    try:
        num = int("".join(str(int(c, 36)) for c in rearranged))
    except ValueError:
        return False
    return num % 97 == 1


def _card_ok(match: str) -> bool:
    digits = match.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and digits[0] in "3456" and luhn_ok(digits)


def scan(text: str) -> Counter[str]:
    """Count sensitive-data classes in ``text``. Returns class -> count (no text, no offsets)."""
    found: Counter[str] = Counter()
    if not text:
        return found
    for m in _COMBINED.finditer(text):
        kind = m.lastgroup
        if kind is None:
            continue
        if kind.startswith("secret_"):
            found["secret"] += 1
        elif kind == "payment_card":
            if _card_ok(m.group()):
                found["payment_card"] += 1
        elif kind == "iban":
            if iban_ok(m.group()):
                found["iban"] += 1
        else:
            found[kind] += 1
    if found["email"] >= BULK_EMAILS or (
        text.count("\n") >= BULK_RECORD_LINES
        and len(_RECORD_LINE.findall(text)) >= BULK_RECORD_LINES
    ):
        found["bulk_personal_data"] += 1
    return found


def scan_all(*texts: str | None) -> dict[str, int]:
    total: Counter[str] = Counter()
    for t in texts:
        if t:
            total.update(scan(t))
    return {k: v for k, v in total.items() if v}
