"""Sensitive-data class detection over content, before the content is dropped.

Only class labels and counts leave this module: never the matched text, never offsets.

Precision: cards need an issuer prefix and length of a real scheme plus Luhn; IBANs the
country's length plus mod-97; SSNs the ranges the SSA issues; e-mail a known TLD (so
``icon@2x.png`` or ``q@k.transpose`` is not an address); a dotted quad after "version",
"section", "==" and the like is not an IP address; phone formats that are only digit groups
count next to a phone word or in a table with a phone column; lookarounds keep one class
from matching inside another (a card group inside an IBAN, a phone inside a card).

Speed, pure ``re``: every pattern starts on a literal or a narrow character class and checks
what lies before it in a lookbehind *after* that first character, so the engine skips most
of the text in C (an SSN is found from its first dash, an IPv4 address from its first dot, a
secret from the rare letter of its prefix). A pattern that starts with ``\\b`` or a lookbehind
gives the engine nothing to skip to and measured 5-20x slower. Matches are counted with
``findall`` where the match is the answer; Python runs per candidate only for the checks
above.

Speed, optional Hyperscan: when the ``hyperscan`` package is installed, one Hyperscan pass
over the text tells which passes have a candidate at all and where the first one is (each
gate pattern matches a prefix of everything its ``re`` pattern can match, so results are
identical), and only those ``re`` passes run, from there (the e-mail pass needs no gate: it
starts on the first "@", which ``str.find`` gives). Without it every pass runs from the
start; ``set_engine("re")`` forces that path. Per text, Python work is kept to a
few calls: most of the time goes to Hyperscan and to ``re`` in C (measured in
benchmarks/detect_bench.py). Patterns are bounded so that no
input makes them backtrack for long (content comes from users).
"""

from __future__ import annotations

import re
import string
import threading
from collections.abc import Callable
from itertools import islice
from typing import Any, cast

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

# Bulk pastes: this many e-mail addresses, or this many record-like lines about people
# (a header naming personal columns, or identifiers in the rows), in one text.
BULK_EMAILS = 10
BULK_RECORD_LINES = 20

# ---- secrets ---------------------------------------------------------------------------
_SECRET = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"|A(?<!\wA)(?:KIA|SIA|GPA|IDA|ROA|IPA|NPA|NVA|PKA)[0-9A-Z]{16}\b"
    r"|_(?<=(?<!\w)gh[pousr]_)[A-Za-z0-9]{36,255}\b"
    r"|_(?<=(?<!\w)github_)pat_[A-Za-z0-9_]{22,255}"
    r"|x(?<!\wx)ox[abeprs]-[0-9A-Za-z-]{10,250}"
    r"|\.slack\.com/services/T[A-Z0-9]{6,12}/B[A-Z0-9]{6,12}/[A-Za-z0-9]{20,40}"
    # OpenAI / Anthropic style: a typed prefix, or a bare sk- with a long random body
    # (kebab-case names such as sk-learn-... have dashes and are not matched).
    r"|k-(?<=(?<!\w)sk-)"
    r"(?:(?:proj|ant|svcacct|admin)-[A-Za-z0-9_-]{20,300}|[A-Za-z0-9]{32,200}\b)"
    r"|J(?<=(?<!\w)eyJ)[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|_(?<=(?i:aws)_)(?i:secret_access_key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{40}"
    r"(?![A-Za-z0-9/+])",
    re.ASCII,
)

# Every _SECRET match starts at or after one of these literals: (literal, whether ASCII case
# is ignored, whether a word character may stand right before it). The native core looks for
# them first in text that has no digit. Kept in step with _SECRET by tests/unit/test_detect.py.
_SECRET_LITERALS = (
    ("-----BEGIN ", False, True), (".slack.com/services/", False, True),
    ("aws_secret_access_key", True, True), ("github_pat_", False, False), ("sk-", False, False),
    ("eyJ", False, False), *((f"gh{c}_", False, False) for c in "pousr"),
    *((f"xox{c}-", False, False) for c in "abeprs"),
    *((f"A{p}", False, False)
      for p in ("KIA", "SIA", "GPA", "IDA", "ROA", "IPA", "NPA", "NVA", "PKA")),
)  # fmt: skip

# ---- e-mail ----------------------------------------------------------------------------
# Generic TLDs seen in practice plus every two-letter country code except file extensions
# that appear after an ``@`` in code (js, ts, md, py). An allow-list rather than "any
# letters": ``X@W.shape``, ``icon@2x.png`` and ``q@k.transpose(...)`` are not addresses.
_GTLDS = (
    "com|org|net|edu|gov|mil|int|info|biz|name|pro|mobi|aero|coop|museum|jobs|travel"
    "|io|ai|app|dev|co|me|tv|cc|ly|gg|sh|so|fm|to|vc|ws"
    "|tech|cloud|online|site|website|xyz|email|mail|web|blog|news|media|shop|store"
    "|agency|company|solutions|services|digital|global|group|systems|software|network"
    "|design|studio|academy|health|finance|bank|insurance|law|legal|team|world|life|live"
    "|today|work|works|zone|space|page|run|tools|support|consulting|capital|ventures"
    "|partners|energy|education|university|school|church|club|inc|llc|ltd|gmbh"
    "|example|test|invalid|local|localdomain|internal|intranet|corp|lan|home|private"
)
_TLD = re.compile(r"(?i:(?:" + _GTLDS + r")|(?!(?:js|ts|md|py)\b)[a-z]{2})")
_TLD_SET = frozenset(_GTLDS.split("|"))
_NOT_TLD_2 = frozenset({"js", "ts", "md", "py"})
# The top-level domain is captured as any run of letters and checked against the list in
# Python: an alternation of ~150 case-insensitive words tried at every candidate cost more
# than the rest of the e-mail pass. Same matches: the lookahead at the end only lets a
# candidate end where its run of domain characters ends, so the TLD is that run's last label
# either way.
_EMAIL = re.compile(
    r"@(?<=[\w.%+'-]@)"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}"
    r"(?i:([a-z]{2,}))"
    # not a longer label, not a further domain label, not an scp/git remote (git@host:org/x)
    r"(?![\w-]|\.[A-Za-z0-9]|:[\w~/])"
)


# Every lower-case ASCII top-level domain the pattern accepts.
_TWO_LETTERS = frozenset(a + b for a in string.ascii_lowercase for b in string.ascii_lowercase)
_TLD_OK = _TLD_SET | (_TWO_LETTERS - _NOT_TLD_2)


def _email_count(text: str, pos: int) -> int:
    n = 0
    for tld in _EMAIL.findall(text, pos):
        if (tld.lower() in _TLD_OK) if tld.isascii() else _TLD.fullmatch(tld):
            # (non-ASCII: Unicode case folding as ``re`` does it, the Kelvin sign is a "k")
            n += 1
    return n


# ---- IBAN ------------------------------------------------------------------------------
_IBAN = re.compile(
    r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", re.ASCII
)
# Length per country (ISO 13616 registry); a candidate must have exactly this length.
_IBAN_LEN = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

# What precedes digits that continue an IBAN: country, check digits, up to three groups.
_IBAN_HEAD = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){0,3} ?$", re.ASCII)

# ---- payment cards ---------------------------------------------------------------------
# Contiguous 12-19 digits, or the printed groupings 4-4-4-4(-3), 4-4-4-1..4, 4-6-5, 4-6-4 with
# one consistent separator. Not preceded by "digit + separator" (a later group of an IBAN or
# of a longer number) and not followed by another 4-digit group.
_CARD = re.compile(
    r"[2-6](?<![\w-][2-6])(?<!\d[ -][2-6])"
    r"(?:\d{11,18}"
    r"|\d{3}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{3})?"
    r"|(?<=3)\d{3}([ -])\d{6}\2\d{4,5})"
    r"(?![\w]|[ -]\d{4}(?!\d))",
    re.ASCII,
)

# ---- US SSN ----------------------------------------------------------------------------
# AAA-GG-SSSS outside the ranges the SSA never issues (000, 666, 9xx; group 00; serial
# 0000). Found from its first dash, the area number checked behind it.
_SSN = re.compile(
    r"-(?<=(?<![\w-])(?!000|666|9\d\d)\d{3}-)(?!00)\d{2}-(?!0000)\d{4}(?![\w-])", re.ASCII
)
# Unformatted or space-separated only right after an SSN keyword: alone, nine digits are
# just a number.
_SSN_CTX = re.compile(
    r"(?i:\b(?:ssn|social security(?: number| no\.?| #)?))[\s:#.=\"'-]{0,4}(?:is\s+)?"
    r"(?!000|666|9)\d{3}( ?)(?!00)\d{2}\1(?!0000)\d{4}(?![\w-])",
    re.ASCII,
)

# ---- IP addresses ----------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Found from the first dot, the first octet checked behind it (one fixed-width lookbehind
# per octet length): digits are everywhere in logs, a dot right after a short number is not.
_V4_BEFORE = r"(?<![\w.])(?<![A-Za-z]-)"
# The empty group in each lookbehind marks where the first octet starts.
_IPV4 = re.compile(
    r"\.(?:(?<=" + _V4_BEFORE + r"()\d\.)|(?<=" + _V4_BEFORE + r"()[1-9]\d\.)"
    r"|(?<=" + _V4_BEFORE + r"()(?:25[0-5]|2[0-4]\d|1\d\d)\.))"
    + _OCTET + r"\." + _OCTET + r"\." + _OCTET + r"(?![\w]|\.\d)",
    re.ASCII,
)  # fmt: skip
# A word right before a dotted quad (up to 3 separators between) that makes it a version, a
# build or a section number rather than an address; or a version comparison operator.
# Matched once, anchored, against the reversed 16 characters before the address.
_VERSION_WORDS = (
    "version", "ver", "release", "rel", "build", "firmware", "fw", "revision", "rev",
    "section", "sec", "chapter", "clause", "article", "art", "paragraph", "para", "step",
    "oid", "v",
)  # fmt: skip
_VERSION_BEFORE_REVERSED = re.compile(
    r"[\s:=_#.-]{0,3}(?i:" + "|".join(w[::-1] for w in sorted(_VERSION_WORDS, key=len, reverse=True))
    + r")(?![A-Za-z])|\s?(?:==|=~|=>|=<|=!|\^|§)",
    re.ASCII,
)  # fmt: skip
_H = r"[0-9A-Fa-f]{1,4}"
_IPV6_ADDRESS = re.compile(
    r"(?:" + _H + r":){7}" + _H
    + r"|(?:" + _H + r"(?::" + _H + r"){0,6})?::(?:" + _H + r"(?::" + _H + r"){0,6})?",
    re.ASCII,
)  # fmt: skip
# Candidates are found from their first colon (the first group, 0-4 hex digits, checked
# behind it) and run over hex digits and colons; the whole run must then be an address.
_V6_BEFORE = r"(?<![\w:.])"
_IPV6 = re.compile(
    r":(?:(?<=" + _V6_BEFORE + r":)(?=:)"
    + "".join(r"|(?<=" + _V6_BEFORE + r"[0-9A-Fa-f]{" + str(k) + r"}:)" for k in range(1, 5))
    + r")[0-9A-Fa-f:]*",
    re.ASCII,
)  # fmt: skip
_HEX = frozenset("0123456789abcdefABCDEF")
_WORD_CHAR = re.compile(r"\w", re.ASCII)
# Only texts with "::" or four colon-separated hex groups are scanned for IPv6 at all.
_IPV6_FULL_HINT = re.compile(r":" + _H + r":" + _H + r":" + _H + r":", re.ASCII)

# ---- phone numbers ---------------------------------------------------------------------
# Every phone pattern refuses to start inside a word, a path, a decimal or a longer number
# ("digit + separator" right before it).
# An extension after the number ("x1234", "ext. 12"), and what may not follow a number.
_PHONE_EXT = r"(?:[ ]?(?:x|ext\.?|extension)[ ]?\d{1,6})?"
_PHONE_END = r"(?![\w]|[ .-]\d)"
# intl: "+" or "00", a country code, an optional "(0)" trunk prefix, then groups; and
# national numbers in shapes that are phone numbers wherever they appear: a bracketed area
# code that starts with 0, "(020) 7946 0958"; five pairs, "01 23 45 67 89"; 11 digits in
# space-separated groups after a 0, "020 7946 0958", "0151 496 0091". Each with the bounds on
# its digits (group "n").
_NATIONAL_START = r"0(?<![\w+./-]0)(?<!\d[ -]0)"
_INTL_NUMBER = (
    r"(?P<n>[1-9]\d{0,2}(?:[ .-]?\(0\))?[ .-]?(?:\(\d{1,4}\)|\d{1,5})"
    r"(?:[ .-]?(?:\(\d{1,4}\)|\d{2,5})){1,5})"
)
_PHONE_INTL = tuple(
    (re.compile(start + number + _PHONE_EXT + _PHONE_END, re.ASCII), lo, hi)
    for start, number, lo, hi in (
        (r"\+(?<![\w+./-]\+)(?<!\d[ -]\+)", _INTL_NUMBER, 8, 15),
        (r"00(?<![\w+./-]00)(?<!\d[ -]00)", _INTL_NUMBER, 8, 15),
        (
            r"\((?<![\w+./-]\()(?<!\d[ -]\()",
            r"(?P<n>0\d{1,4}\)[ -]?\d{2,8}(?:[ -]?\d{2,4}){0,2})",
            9,
            12,
        ),
        # five pairs (9 digits after the 0) or 11 digits in space-separated groups
        (
            _NATIONAL_START,
            r"(?:(?P<n>[1-9](?:[ .]\d\d){4})|(?=(?:\d ?){10}(?!\d))\d{2,4} \d{3,7}(?: \d{3,4})?)",
            0,
            99,
        ),
    )
)
# The last shapes as the weak pattern sees them (counted there only once).
_NATIONAL_STRONG = re.compile(
    r"0(?:[1-9](?: \d\d){4}|(?=(?:\d ?){10}$)\d{2,4} \d{3,7}(?: \d{3,4})?)"
)
# nanp: North American numbers with brackets, dashes or dots; area and exchange cannot start
# with 0/1, which rules out most part and order numbers. Three patterns, each found from a
# literal ("(", the dash or the dot after the area code) with the area code and an optional
# leading "1" checked behind it: as one pattern starting on a digit it was 5x slower.
_NANP_BEFORE = r"(?<![\w+./-])(?<!\d[ -])"
_NANP_END = r"\d{4}" + _PHONE_EXT + _PHONE_END
_PHONE_NANP = tuple(
    re.compile(
        "\\" + sep + r"(?:(?<=" + _NANP_BEFORE + area + "\\" + sep + r")|(?<="
        + _NANP_BEFORE + r"1[ .-]" + area + "\\" + sep + r"))" + rest + _NANP_END,
        re.ASCII,
    )
    for sep, area, rest in (
        ("(", "", r"[2-9]\d\d\)[ .-]?[2-9]\d\d[ .-]"),
        ("-", r"[2-9]\d\d", r"[2-9]\d\d-"),
        (".", r"[2-9]\d\d", r"[2-9]\d\d\."),
    )
)  # fmt: skip
# weak: plain digit groups (national numbers with a leading 0, NANP with spaces, ten digits
# in a row); they count only right after a phone word or in the rows of a table that has a
# phone column.
# One character class first, then the branch by what it was: ``re`` skips ahead only to a
# first character it knows, which an alternation of "0..." and "[2-9]..." hides (3x slower).
_PHONE_WEAK = re.compile(
    r"[02-9](?<![\w+./-][02-9])(?<!\d[ -][02-9])"
    r"(?:(?<=0)(?:\d{1,4}(?:[ -]\d{2,8}){1,4}|\d{9,10})"
    r"|(?<=[2-9])(?:\d\d [2-9]\d\d \d{4}|\d{9}))"
    r"(?![\w]|[ .-]\d)",
    re.ASCII,
)
_PHONE_WORDS = (
    r"phone|telephone|tel|mobile|mob|cell|cellphone|call|fax|whats ?app|sms|text|reach"
    r"|ring|contact|hotline|landline|ph"
)
# The phone word must lead up to the number: no other number or line break in between.
_PHONE_WORD_RE = r"(?i:\b(?:" + _PHONE_WORDS + r")\b)"
_PHONE_GAP = 30
_PHONE_CONTEXT = re.compile(_PHONE_WORD_RE + rf"[^\d\n]{{0,{_PHONE_GAP}}}$", re.ASCII)
_PHONE_WINDOW = 40
# Deletes the separators a phone pattern can match, leaving its digits.
_ONLY_DIGITS = str.maketrans("", "", " .-()+")
_HEADER_WORDS = r"phone|tel|mobile|cell|fax"
_HEADER_WORD = re.compile(r"(?i:\b(?:" + _HEADER_WORDS + r")\b)", re.ASCII)
_PHONE_HEADER = re.compile(
    r"^[^\n]*(?i:\b(?:" + _HEADER_WORDS + r")\b)[^\n]*[,;\t|][^\n]*$", re.MULTILINE | re.ASCII
)

# ---- bulk personal data ----------------------------------------------------------------
# A delimited line of 3+ fields (CSV, TSV, semicolons, Markdown or JSON-ish rows).
# Two delimiters spelled out rather than ``{2,}``, and no ``$`` (``[^\n]*`` always runs to the
# line's end): same lines, 40% faster.
_RECORD_LINE = re.compile(r"^[^\n,;\t|]*[,;\t|][^\n,;\t|]*[,;\t|][^\n]*", re.MULTILINE)
# A postal address: house number and street, in either order ("12 Main St", "Hauptstr. 5").
_STREET = (
    r"(?:St|Street|Ave|Avenue|Rd|Road|Blvd|Boulevard|Ln|Lane|Dr|Drive|Way|Ct|Court|Pl|Place"
    r"|Sq|Square|Str|Stra(?:ss|ß)e)"
)
_ADDRESS = re.compile(
    r"\b\d{1,5}[A-Za-z]? (?:[A-Z][a-z]+ ){1,3}" + _STREET + r"\b"
    r"|\b(?:[A-Z][a-z]+ ){1,3}" + _STREET + r"\.? \d{1,5}\b"
    r"|\b[A-Z][a-z]+(?:stra(?:ss|ß)e|str\.) \d{1,5}\b"
)
# Column names about people, compared after lower-casing and dropping " ", "_" and "-"
# ("First Name", "first_name" and "first-name" are all "firstname").
_PERSONAL_COLUMNS = frozenset(
    {
        "name", "firstname", "lastname", "fullname", "givenname", "familyname", "surname",
        "username", "displayname", "email", "phone", "mobile", "tel", "telephone", "address",
        "street", "city", "zip", "zipcode", "postcode", "postalcode", "dob", "birthday",
        "birthdate", "dateofbirth", "ssn", "salary", "gender", "customer", "employee", "patient",
    }
)  # fmt: skip
_FIELD_SPLIT = re.compile(r"[^a-z0-9]+")
_JOINERS = str.maketrans("", "", " _-")


def _personal_header(line: str) -> bool:
    """A header naming at least two personal columns (name + email, first + last name, ...)."""
    fields = set(
        _FIELD_SPLIT.split(line.lower().replace(" ", "").replace("_", "").replace("-", ""))
    )
    return len(fields & _PERSONAL_COLUMNS) >= 2


# Doubling a digit and adding the digits of the result, as a character table.
_LUHN_DOUBLE = str.maketrans("0123456789", "0246813579")


def luhn_ok(digits: str) -> bool:
    """Luhn check of a string of ASCII digits (no Python loop per digit: it runs per card
    candidate)."""
    s = digits[-1::-2] + digits[-2::-2].translate(_LUHN_DOUBLE)
    return (sum(s.encode()) - 48 * len(s)) % 10 == 0


_IBAN_LETTERS = {ord(c): str(10 + i) for i, c in enumerate(string.ascii_uppercase)}


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not (s.isascii() and s.isalnum()):
        return False
    # ISO 7064 mod 97-10: country and check digits to the end, letters as 10..35.
    return int((s[4:] + s[:4]).translate(_IBAN_LETTERS)) % 97 == 1


def _iban_count(text: str, pos: int) -> int:
    n = 0
    for m in _IBAN.finditer(text, pos):
        cand = m.group()
        want = _IBAN_LEN.get(cand[:2])
        if want is None:
            continue
        compact = cand.replace(" ", "")
        if len(compact) < want:
            continue
        if len(compact) > want:
            # The pattern may run on into following groups ("... 00 ABCD"); cut at the
            # country's length, but only where the printed groups allow a cut.
            cut, seen = len(cand), 0
            for i, ch in enumerate(cand):
                if ch != " ":
                    seen += 1
                    if seen == want:
                        cut = i + 1
                        break
            if cut < len(cand) and cand[cut] != " ":
                continue
            compact = compact[:want]
        if iban_ok(compact):
            n += 1
    return n


def _card_brand_ok(d: str) -> bool:
    """Issuer prefix and length of a real scheme: a Luhn pass alone is true for 1 in 10."""
    n = len(d)
    p2 = int(d[:2])
    if d[0] == "4":
        return n in (13, 16, 19)
    if 51 <= p2 <= 55:
        return n == 16
    if 22 <= p2 <= 27:
        return n == 16 and 2221 <= int(d[:4]) <= 2720
    if p2 in (34, 37):
        return n == 15
    if p2 in (36, 38, 39) or 300 <= int(d[:3]) <= 305:
        return 14 <= n <= 19
    if p2 == 35:
        return 16 <= n <= 19 and 3528 <= int(d[:4]) <= 3589
    if d[:4] == "6011" or p2 == 65 or 644 <= int(d[:3]) <= 649 or p2 == 62:
        return 16 <= n <= 19
    if d[:4] in ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763"):
        return 12 <= n <= 19  # Maestro
    if 56 <= p2 <= 58:
        return 12 <= n <= 19  # Maestro
    return False


def _card_count(text: str, pos: int) -> int:
    n = 0
    for m in _CARD.finditer(text, pos):
        d = m.group().replace(" ", "").replace("-", "")
        if _card_brand_ok(d) and luhn_ok(d):
            start = m.start()
            # the tail of an IBAN (even one that fails mod-97) is not a card
            if not _IBAN_HEAD.search(text, max(0, start - 20), start):
                n += 1
    return n


def _in_table_row(text: str, pos: int) -> bool:
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    return any(d in line for d in ",;\t|")


def _phone_header(text: str, pos: int) -> bool:
    """Whether a line of ``text`` is a table header with a phone column, given that no header
    word starts before ``pos``."""
    first = _HEADER_WORD.search(text, pos)
    if first is None:
        return False
    # The first header word's line is a header iff a delimiter follows that word on it (any
    # later word on the line has it after itself too); else look at the lines after it.
    end = text.find("\n", first.end())
    if end < 0:
        end = len(text)
    for d in ",;\t|":
        if text.find(d, first.end(), end) >= 0:
            return True
    return _PHONE_HEADER.search(text, end + 1) is not None


def _phone_count(text: str, at: list[int]) -> int:
    n = 0
    if (pos := at[_NANP]) >= 0:
        for p in _PHONE_NANP:
            n += len(p.findall(text, pos))
    for (pattern, lo, hi), k in zip(_PHONE_INTL, _INTL_PASSES, strict=True):
        if (pos := at[k]) >= 0:
            # findall gives group "n" ("" where that group took no part: always counted)
            for number in pattern.findall(text, pos):
                if not number or lo <= len(number.translate(_ONLY_DIGITS)) <= hi:
                    n += 1
    if (pos := at[_WEAK_NUMBER]) >= 0 and at[_PHONE_WORD] >= 0:
        header: bool | None = None
        for m in _PHONE_WEAK.finditer(text, pos):
            number = m.group()
            if not 10 <= len(number.translate(_ONLY_DIGITS)) <= 11:
                continue
            if _NATIONAL_STRONG.fullmatch(number):
                continue  # counted with the strong shapes
            start = m.start()
            if _PHONE_CONTEXT.search(text, max(0, start - _PHONE_WINDOW), start):
                n += 1
                continue
            if header is None:
                header = at[_HEADER_WORDS_AT] >= 0 and _phone_header(text, at[_HEADER_WORDS_AT])
            if header and _in_table_row(text, start):
                n += 1
    return n


def _ipv4_count(text: str, pos: int) -> int:
    n = 0
    for m in _IPV4.finditer(text, pos):
        start = m.start(m.lastindex or 0)  # the first octet (the match starts at its dot)
        while start and text[start - 1].isdigit():  # (non-ASCII digits before it too)
            start -= 1
        if not _VERSION_BEFORE_REVERSED.match(text[max(0, start - 16) : start][::-1]):
            n += 1
    return n


def _ipv6_count(text: str, pos: int) -> int:
    n = 0
    for m in _IPV6.finditer(text, pos):
        start, end = m.start(), m.end()
        after = text[end : end + 2]
        if after and (_WORD_CHAR.match(after) or (after[0] == "." and after[1:].isdigit())):
            continue  # runs on into a word, or an IPv4 tail (::ffff:1.2.3.4): not counted
        while start and text[start - 1] in _HEX:
            start -= 1
        s = text[start:end]
        if not _IPV6_ADDRESS.fullmatch(s):
            continue
        groups = sum(1 for g in s.split(":") if g)
        # "::1", "a[::2]" and friends are not worth a label; a real address has 2+ groups.
        if groups >= 2 and (groups == 8 or "::" in s):
            n += 1
    return n


def _ssn_count(text: str, at: list[int]) -> int:
    n = len(_SSN.findall(text, at[_SSN_DASHED])) if at[_SSN_DASHED] >= 0 else 0
    if at[_SSN_WORD] >= 0:
        n += len(_SSN_CTX.findall(text, at[_SSN_WORD]))
    return n


# Keeps only delimiters and line breaks of UTF-8 text (no other byte of it is one of these):
# a record line is then a run of 2+ bytes between line breaks. Counting those in C is several
# times faster than matching _RECORD_LINE line by line.
_NOT_RECORD_BYTES = bytes(set(range(256)) - set(b",;\t|\n"))
_RECORD_RUN = re.compile(rb"[^\n]{2,}")


def _bulk(text: str, emails: int, identifiers: int) -> bool:
    if emails >= BULK_EMAILS:
        return True
    if text.count("\n") < BULK_RECORD_LINES - 1:
        return False
    skeleton = text.encode("utf-8", "surrogatepass").translate(None, _NOT_RECORD_BYTES)
    # each record line has 2+ delimiters: a cheap necessary condition before the line count
    if len(skeleton) - skeleton.count(b"\n") < 2 * BULK_RECORD_LINES:
        return False
    if len(_RECORD_RUN.findall(skeleton)) < BULK_RECORD_LINES:
        return False
    # Rows about people: identifiers or postal addresses in (about) every row, or a header
    # naming at least two personal columns (name + email, first + last name, ...).
    if identifiers >= BULK_RECORD_LINES:
        return True
    lines = _RECORD_LINE.finditer(text)
    first = [m.group() for m in islice(lines, 4)]
    if any(_personal_header(line) for line in first[:2]):
        return True
    # Addresses: only when the first rows have them (the address pattern is slow-ish).
    if sum(1 for line in first if _ADDRESS.search(line)) < 2:
        return False
    with_address = sum(1 for line in first if _ADDRESS.search(line))
    return with_address + sum(1 for m in lines if _ADDRESS.search(m.group())) >= BULK_RECORD_LINES


# ---- gates ----------------------------------------------------------------------------
# A gate gives each pass the offset to start from, or -1 when the pass cannot find anything
# in this text. Passes (indexes into that list):
(
    _SECRETS,
    _IBANS,
    _CARDS,
    _SSN_DASHED,
    _SSN_WORD,
    _PLUS,
    _DOUBLE_ZERO,
    _TRUNK_BRACKET,
    _NATIONAL,
    _NANP,
    _WEAK_NUMBER,
    _PHONE_WORD,
    _HEADER_WORDS_AT,
    _IPV4S,
    _IPV6S,
) = range(15)
_PASSES = 15
# the same passes by name, for the native core
_PASS_NAMES = (
    "secrets", "ibans", "cards", "ssn_dashed", "ssn_word", "plus", "double_zero",
    "trunk_bracket", "national", "nanp", "weak_number", "phone_word", "header_words", "ipv4s",
    "ipv6s",
)  # fmt: skip
# the pass of each _PHONE_INTL pattern, in order
_INTL_PASSES = (_PLUS, _DOUBLE_ZERO, _TRUNK_BRACKET, _NATIONAL)
# Substrings of every phone word (context and table header).
_PHONE_WORD_PARTS = (
    "ph", "tel", "mob", "cell", "call", "fax", "whats", "sms", "text", "reach", "ring",
    "contact", "hotline", "landline",
)  # fmt: skip


def _re_gate(text: str) -> list[int]:
    """Without Hyperscan: every pass runs from the start, except where a cheap test of the
    whole text shows it cannot match."""
    at = [0] * _PASSES
    if "::" not in text and not _IPV6_FULL_HINT.search(text):
        at[_IPV6S] = -1
    # Ten substring tests (memchr speed) decide for every pass that needs a digit: most
    # prose has none, and each of those passes costs more than all ten tests.
    if not any(d in text for d in "0123456789"):
        for k in _NEED_DIGITS:
            at[k] = -1
        return at
    low = text.lower()
    if "ssn" not in low and "social security" not in low:
        at[_SSN_WORD] = -1
    if not any(w in low for w in _PHONE_WORD_PARTS):
        at[_PHONE_WORD] = -1
    return at


_NEED_DIGITS = (
    _IBANS, _CARDS, _SSN_DASHED, _SSN_WORD, *_INTL_PASSES, _NANP, _WEAK_NUMBER, _IPV4S,
)  # fmt: skip


# Hyperscan gate patterns: (pattern, pass, caseless, longest match or None). Each must match
# a prefix of every match its pass's pattern can make, starting at or before it (so it is a
# superset, and the first gate match, minus its longest length, is a safe offset to start
# the pass from). Hyperscan has no lookarounds: "not after a word character" becomes "start
# of text or a non-word byte". UTF-8 keeps ASCII bytes, and every gated pattern is ASCII-only.
_NOT_WORD = rb"(?:^|[^0-9A-Za-z_"
_HS_GATES: tuple[tuple[bytes, int, bool, int | None], ...] = (
    (
        rb"-----BEGIN |\.slack\.com/services/|" + _NOT_WORD + rb"])(?:A(?:KIA|SIA|GPA|IDA|ROA"
        rb"|IPA|NPA|NVA|PKA)|gh[pousr]_|github_pat_|xox[abeprs]-|sk-|eyJ)",
        _SECRETS,
        False,
        20,
    ),
    (rb"aws_secret_access_key", _SECRETS, True, 21),
    # the local part may end in any \\w, including non-ASCII letters (bytes >= 0x80 in UTF-8)
    (_NOT_WORD + rb"])[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4} ?[A-Z0-9]{4}", _IBANS, False, 15),
    (
        _NOT_WORD + rb"-])(?:[2-6][0-9]{3}(?:[ -]?[0-9]{4}){2}|3[0-9]{3}[ -][0-9]{6})",
        _CARDS,
        False,
        15,
    ),
    (rb"[0-9]{3}-[0-9]{2}-[0-9]{4}", _SSN_DASHED, False, 11),
    (rb"ssn|social security", _SSN_WORD, True, 15),
    (rb"\+[1-9]", _PLUS, False, 2),
    (_NOT_WORD + rb"+./-])00[1-9]", _DOUBLE_ZERO, False, 4),
    (rb"\(0[0-9]{1,4}\)", _TRUNK_BRACKET, False, 7),
    (
        _NOT_WORD + rb"+./-])0(?:[1-9][ .][0-9]{2}|[0-9]{2,4} [0-9]{3})",
        _NATIONAL,
        False,
        10,
    ),
    (
        rb"\([2-9][0-9]{2}\)|[2-9][0-9]{2}-[2-9][0-9]{2}-[0-9]{4}"
        rb"|[2-9][0-9]{2}\.[2-9][0-9]{2}\.[0-9]{4}",
        _NANP,
        False,
        12,
    ),
    (
        _NOT_WORD + rb"+./-])(?:0[0-9]{1,4}[ -][0-9]{2}|[2-9][0-9]{2} [2-9][0-9]{2} [0-9]{4}"
        # one class for "[2-9]" and "0" ten-digit runs: as two branches it cost Hyperscan 15%
        rb"|[02-9][0-9]{9})",
        _WEAK_NUMBER,
        False,
        13,
    ),
    # the phone words as _PHONE_CONTEXT and _PHONE_HEADER spell them (ASCII word boundaries)
    (rb"\b(?:" + _PHONE_WORDS.encode() + rb")\b", _PHONE_WORD, True, None),
    (rb"\b(?:" + _HEADER_WORDS.encode() + rb")\b", _HEADER_WORDS_AT, True, 6),
    (rb"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]", _IPV4S, False, 11),
    # an address can start before its "::" or its run of colons: always from the start
    (rb"::|:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:", _IPV6S, False, None),
)


# Per gate pattern id: its pass, and how far before the gate match's end that pass may start
# (a huge number: from the start).
_GATE_PASS = tuple(g[1] for g in _HS_GATES)
_GATE_BACK = tuple(10**9 if g[3] is None else g[3] for g in _HS_GATES)


def _on_match(id_: int, start: int, end: int, flags: int, at: Any) -> None:
    # Straight into the offsets list: Hyperscan calls this from C once per gate pattern at
    # most (SINGLEMATCH), and a Python call is most of what a gate costs on short texts.
    k = _GATE_PASS[id_]
    pos = end - _GATE_BACK[id_]
    if pos < 0:
        pos = 0
    if at[k] < 0 or pos < at[k]:
        at[k] = pos


def _hyperscan_gate() -> Callable[[str], list[int]]:
    import hyperscan

    db = hyperscan.Database()
    # SINGLEMATCH: at most one report per pattern, the one that ends first.
    db.compile(
        expressions=[g[0] for g in _HS_GATES],
        ids=list(range(len(_HS_GATES))),
        elements=len(_HS_GATES),
        flags=[
            hyperscan.HS_FLAG_SINGLEMATCH | (hyperscan.HS_FLAG_CASELESS if g[2] else 0)
            for g in _HS_GATES
        ],
    )
    local = threading.local()  # scratch space may not be shared between threads
    db_scan = db.scan

    def gate(text: str) -> list[int]:
        try:
            scratch = local.scratch
        except AttributeError:
            scratch = local.scratch = hyperscan.Scratch(db)
        at = [-1] * _PASSES
        # positional arguments: cheaper to call; surrogatepass: a lone surrogate (not valid
        # UTF-8, but a Python str may hold one) gets bytes too instead of raising
        db_scan(text.encode("utf-8", "surrogatepass"), _on_match, 0, at, scratch)
        if not text.isascii():  # byte offsets are character offsets only in ASCII text
            return [0 if k >= 0 else -1 for k in at]
        return at

    return gate


def _load_hyperscan() -> Callable[[str], list[int]] | None:
    try:
        return _hyperscan_gate()
    except Exception:  # not installed, or no wheel / CPU support here: pure re is complete
        return None


_HYPERSCAN = _load_hyperscan()
_gate = _HYPERSCAN if _HYPERSCAN is not None else _re_gate


def _pcre(pattern: re.Pattern[str]) -> tuple[str, bool]:
    """A pattern for the native core: its source and whether it is MULTILINE. Every other flag
    is written inline, so the source carries the whole meaning (ASCII is what the core's
    byte matching does; where a Unicode pattern could differ, it hands the text back)."""
    extra = pattern.flags & ~(re.ASCII | re.UNICODE | re.MULTILINE)
    if extra:
        raise ValueError(f"pattern flags {extra!r} not written inline: {pattern.pattern!r}")
    return pattern.pattern, bool(pattern.flags & re.MULTILINE)


def _load_native() -> Any | None:
    """The native core (``native/``, Rust + PCRE2), given this module's patterns and
    constants, so this file stays the single definition of what is detected."""
    try:
        import trustlog_detect  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # not built here: the Python detector is complete on its own
        return None
    patterns = {
        "secret": _SECRET, "email": _EMAIL, "iban": _IBAN, "iban_head": _IBAN_HEAD,
        "card": _CARD, "ssn": _SSN, "ssn_ctx": _SSN_CTX, "ipv4": _IPV4,
        "version_before_reversed": _VERSION_BEFORE_REVERSED, "ipv6": _IPV6,
        "ipv6_address": _IPV6_ADDRESS, "phone_weak": _PHONE_WEAK,
        "national_strong": _NATIONAL_STRONG, "phone_word": re.compile(_PHONE_WORD_RE, re.ASCII),
        "header_word": _HEADER_WORD, "phone_header": _PHONE_HEADER,
        "record_line": _RECORD_LINE, "address": _ADDRESS,
    }  # fmt: skip
    return trustlog_detect.Detector(
        gates=[
            (src.decode("ascii"), _PASS_NAMES[k], caseless, back)
            for (src, k, caseless, _), back in zip(_HS_GATES, _GATE_BACK, strict=True)
        ],
        secret_literals=list(_SECRET_LITERALS),
        patterns={name: _pcre(p) for name, p in patterns.items()},
        phone_intl=[(_pcre(p)[0], lo, hi) for p, lo, hi in _PHONE_INTL],
        phone_nanp=[_pcre(p)[0] for p in _PHONE_NANP],
        iban_len=_IBAN_LEN,
        tld_ok=sorted(_TLD_OK),
        personal_columns=sorted(_PERSONAL_COLUMNS),
        bulk_emails=BULK_EMAILS,
        bulk_record_lines=BULK_RECORD_LINES,
        phone_window=_PHONE_WINDOW,
        phone_gap=_PHONE_GAP,
    )


_NATIVE = _load_native()
# The engine in use: "native" (Rust core; the Python detector for the rare text it hands
# back), "hyperscan" (Python detector with the Hyperscan prefilter) or "re" (pure Python).
ENGINES = ("native", "hyperscan", "re")
_native: Any | None = _NATIVE  # the core while it is the engine in use, else None
_handed_back = 0


def available_engines() -> tuple[str, ...]:
    have = {"native": _NATIVE is not None, "hyperscan": _HYPERSCAN is not None, "re": True}
    return tuple(e for e in ENGINES if have[e])


def set_engine(name: str) -> bool:
    """Use detection engine ``name`` if it is available here; returns whether it is now in
    use (otherwise nothing changes). Every engine gives the same counts for every text."""
    global _gate, _native
    if name not in ENGINES:
        raise ValueError(f"unknown detection engine {name!r}; one of {ENGINES}")
    if name not in available_engines():
        return False
    _native = _NATIVE if name == "native" else None
    # the native core hands rare texts back to Python, which then uses its best prefilter
    _gate = _re_gate if name == "re" or _HYPERSCAN is None else _HYPERSCAN
    return True


def engine() -> str:
    if _native is not None:
        return "native"
    return "re" if _gate is _re_gate else "hyperscan"


def handed_back() -> int:
    """How many texts the native core handed back to the Python detector in this process
    (texts whose result depends on a Unicode rule only Python's ``re`` applies exactly)."""
    return _handed_back


def scan(text: str) -> dict[str, int]:
    """Count sensitive-data classes in ``text``. Returns class -> count (no text, no offsets),
    only the classes found."""
    global _handed_back
    if not text:
        return {}
    if _native is not None:
        found: dict[str, int] | None = _native.scan(text)
        if found is not None:
            return found
        _handed_back += 1
    return _scan_python(text)


def _scan_python(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    if not text:
        return found
    at = _gate(text)
    # one unpacking instead of an indexed global lookup per test: this runs for every text
    (
        secrets, ibans, cards, ssn_dashed, ssn_word, plus, double_zero,
        trunk_bracket, national, nanp, weak, _, _, ipv4s, ipv6s,
    ) = at  # fmt: skip
    if secrets >= 0 and (k := len(_SECRET.findall(text, secrets))):
        found["secret"] = k
    # every e-mail match starts on its "@": a memchr finds the first one, no gate needed
    emails = _email_count(text, at_sign) if (at_sign := text.find("@")) >= 0 else 0
    if emails:
        found["email"] = emails
    identifiers = emails
    if cards >= 0 and (k := _card_count(text, cards)):
        found["payment_card"] = k
        identifiers += k
    if ibans >= 0 and (k := _iban_count(text, ibans)):
        found["iban"] = k
        identifiers += k
    if (ssn_dashed >= 0 or ssn_word >= 0) and (k := _ssn_count(text, at)):
        found["us_ssn"] = k
        identifiers += k
    if (
        plus >= 0 or double_zero >= 0 or trunk_bracket >= 0 or national >= 0 or nanp >= 0
        or weak >= 0
    ) and (k := _phone_count(text, at)):  # fmt: skip
        found["phone"] = k
        identifiers += k
    ips = _ipv4_count(text, ipv4s) if ipv4s >= 0 else 0
    if ipv6s >= 0:
        ips += _ipv6_count(text, ipv6s)
    if ips:
        found["ip_address"] = ips
    if _bulk(text, emails, identifiers):
        found["bulk_personal_data"] = 1
    return found


def scan_all(*texts: str | None) -> dict[str, int]:
    """Class counts summed over ``texts`` (``None`` and empty texts are skipped)."""
    if _native is not None and (found := _native.scan_all(*texts)) is not None:
        return cast(dict[str, int], found)
    if len(texts) == 1:
        return scan(texts[0]) if texts[0] else {}
    total: dict[str, int] = {}
    for t in texts:
        if t:
            for c, k in scan(t).items():
                total[c] = total.get(c, 0) + k
    return total
