"""A labelled, synthetic corpus for sensitive-data detection: realistic prompts, fixed seed.

Every value is generated here from random digits and letters (fictional names, reserved or
made-up domains, NANP 555-01xx and UK 7946/7700 900 numbers from the ranges kept for fiction,
Luhn-completed card numbers, check-digit-correct IBANs); nothing is copied from real data.
Each document knows how many instances of each class it contains; the labels are set by the
generator, never by running a detector.

Documents mimic what people send to AI tools: support replies, chat questions, code and
config pastes, logs, CSV/TSV/JSON exports. Besides positives, every class has hard negatives
that look like it: Luhn failures and non-card prefixes, IBANs with a broken checksum, invalid
SSN ranges, ``icon@2x.png`` and ``git@github.com:org/repo.git``, dates, order numbers and
prices near phone keywords, version strings and OIDs shaped like IPv4, C++ ``::`` and MAC
addresses near IPv6, public keys and kebab-case names near secrets, metric, order, product
and place tables (capitalised words, no people) near bulk personal data, which also appears
without a header (names and postal addresses only).

``python -m tests.corpus --out corpus.jsonl`` writes it as JSON lines for inspection.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SEED = 20240611
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
# The corpus's definition of bulk personal data: this many e-mail addresses in one text, or
# a table of 20+ rows about people (named columns or an identifier in the rows).
BULK_EMAILS = 10


@dataclass(frozen=True)
class Doc:
    kind: str
    text: str
    labels: dict[str, int]


@dataclass
class _Builder:
    kind: str
    parts: list[str] = field(default_factory=list)
    labels: Counter[str] = field(default_factory=Counter)

    def add(self, text: str, *classes: str) -> None:
        self.parts.append(text)
        self.labels.update(classes)

    def doc(self, sep: str = " ") -> Doc:
        if self.labels["email"] >= BULK_EMAILS:  # many addresses in one text are a bulk paste
            self.labels["bulk_personal_data"] = 1
        parts = self.parts
        if sep == " ":
            # Fragments run together in one paragraph still end like sentences.
            parts = [p if p[-1] in ".!?:,\n" else p + "." for p in parts]
        text = sep.join(p if "\n" not in p else f"\n{p}\n" for p in parts)
        return Doc(self.kind, text.strip(), {k: v for k, v in self.labels.items() if v})


FIRST = [
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Chen",
    "Wei",
    "Priya",
    "Arjun",
    "Fatima",
    "Omar",
    "Lukas",
    "Anna",
    "Sofia",
    "Mateo",
    "Yuki",
    "Haruto",
    "Olga",
    "Ivan",
    "Amara",
    "Kwame",
    "Ingrid",
    "Lars",
    "Chloe",
    "Hugo",
    "Zanele",
    "Tariq",
    "Noor",
    "Elena",
    "Marco",
]
LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Walker",
    "Patel",
    "Nguyen",
    "Kim",
    "Mueller",
    "Schmidt",
    "Rossi",
    "Dubois",
    "Silva",
    "Kowalski",
    "Tanaka",
    "Okafor",
    "Haddad",
    "Lindqvist",
    "Novak",
]
DOMAINS = [
    "example.com",
    "example.org",
    "example.net",
    "corp.example",
    "mail.example.co.uk",
    "acme.io",
    "globex.co",
    "initech.com",
    "umbrella-labs.dev",
    "hooli.ai",
    "piedpiper.net",
    "vandelay.de",
    "wayne-ent.fr",
    "northwind.test",
    "contoso.example",
    "fabrikam.com",
    "stark-industries.org",
    "mail.initech.com",
]
CITIES = [
    "Berlin",
    "Paris",
    "Austin",
    "Denver",
    "Leeds",
    "Osaka",
    "Lagos",
    "Lyon",
    "Porto",
    "Oslo",
    "Dublin",
    "Seattle",
    "Madrid",
    "Toronto",
    "Chicago",
    "Munich",
    "Zurich",
    "Vienna",
    "Warsaw",
    "Boston",
]
STREETS = ["Main", "Oak", "Maple", "Cedar", "Elm", "Park", "Lake", "Hill", "High", "Station"]
TEAMS = ["support", "billing", "growth", "platform", "data", "legal", "sales", "finance"]

FILLER = [
    "Thanks for getting back to me so quickly.",
    "Could you summarise the notes below in three bullet points?",
    "The deployment finished without errors after 12 minutes.",
    "We have about 3,400 active users this quarter and churn is down to 2.1%.",
    "Please rewrite this paragraph in a friendlier tone.",
    "Here is the function that keeps failing in CI.",
    "The meeting moved to Thursday at 10:30, room 4B.",
    "Our Q3 target is 15% growth over the 2023 baseline.",
    "Refactor the class below so it uses dataclasses and type hints.",
    "Translate the following message into German, keep it formal.",
    "I'm not sure why the cache hit rate dropped to 61% yesterday.",
    "Can you explain what this stack trace means?",
    "The customer says the invoice total looks wrong by $14.20.",
    "Write a short apology for the delay and offer a 10% discount.",
    "Draft a reply that asks for the order number and a screenshot.",
    "Summarise the incident timeline for the postmortem.",
    "Make the tone less defensive and remove the jargon.",
    "We migrated 2 of the 7 services to the new cluster last week.",
    "List the pros and cons of moving the job to a queue.",
    "The report is due on 2024-11-30, please keep it under 500 words.",
    "Why does this regex not match the second line?",
    "Suggest three subject lines for the renewal email.",
    "The p95 latency went from 180 ms to 240 ms after the release.",
    "Check whether the SQL below is safe against injection.",
    "Convert this bash loop into a Python script.",
    "Our warehouse shipped 1,284 parcels on Monday.",
    "Please keep the answer short; the reader is a non-technical manager.",
    "I pasted the relevant part of the config; the rest is unchanged.",
    "The retry budget is 3 attempts with a 250 ms backoff.",
    "Rank these feature requests by expected impact.",
    "The customer has been with us since 2019 and is on the annual plan.",
    "Add unit tests for the edge cases you find.",
    "Give me a regular expression for ISO dates.",
    "It started failing after we bumped the dependency.",
    "Ticket #48213 was reopened by the customer this morning.",
    "Make sure the summary mentions the two open risks.",
]


def _luhn_check_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # doubled positions once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


_IBAN_BBAN = {
    "DE": "18n",
    "GB": "4a14n",
    "FR": "10n11c2n",
    "NL": "4a10n",
    "ES": "20n",
    "IT": "1a10n12c",
    "CH": "5n12c",
    "BE": "12n",
    "AT": "16n",
    "PL": "24n",
    "IE": "4a14n",
    "SE": "20n",
    "NO": "11n",
    "DK": "14n",
    "FI": "14n",
    "PT": "21n",
    "LU": "3n13c",
    "CZ": "20n",
    "RO": "4a16c",
}


def _iban_check(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    num = int("".join(str(int(c, 36)) for c in rearranged))
    return f"{98 - num % 97:02d}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Synth:
    def __init__(self, seed: int = SEED) -> None:
        self.r = random.Random(seed)

    # ---- small helpers ----------------------------------------------------------------
    def pick(self, seq: list[str] | tuple[str, ...]) -> str:
        return self.r.choice(seq)

    def digits(self, n: int) -> str:
        return "".join(self.r.choice(string.digits) for _ in range(n))

    def alnum(self, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def name(self) -> tuple[str, str]:
        return self.pick(FIRST), self.pick(LAST)

    def sentence(self) -> str:
        return self.pick(FILLER)

    def prose(self, lo: int = 1, hi: int = 3) -> str:
        return " ".join(self.sentence() for _ in range(self.r.randint(lo, hi)))

    # ---- payment cards -----------------------------------------------------------------
    def card_number(self) -> tuple[str, str]:
        """A Luhn-valid number of a real brand's prefix and length, and its grouping."""
        brand = self.r.choices(
            ["visa", "mc", "mc2", "amex", "discover", "jcb", "diners", "unionpay"],
            weights=[30, 20, 5, 12, 10, 8, 5, 5],
        )[0]
        prefix, length, groups = {
            "visa": ("4", self.r.choice([16, 16, 16, 13, 19]), "4444"),
            "mc": (str(self.r.randint(51, 55)), 16, "4444"),
            "mc2": (str(self.r.randint(2221, 2720)), 16, "4444"),
            "amex": (self.r.choice(["34", "37"]), 15, "465"),
            "discover": (self.r.choice(["6011", "65", str(self.r.randint(644, 649))]), 16, "4444"),
            "jcb": (str(self.r.randint(3528, 3589)), 16, "4444"),
            "diners": (self.r.choice(["36", "38"]), 14, "464"),
            "unionpay": ("62", self.r.choice([16, 19]), "4444"),
        }[brand]
        body = prefix + self.digits(length - len(prefix) - 1)
        return body + _luhn_check_digit(body), groups

    def group(self, number: str, groups: str, sep: str) -> str:
        if sep == "":
            return number
        sizes = [int(g) for g in groups]
        out, i = [], 0
        for s in sizes:
            out.append(number[i : i + s])
            i += s
        while i < len(number):  # 19-digit Visa/UnionPay: 4-4-4-4-3
            out.append(number[i : i + 4])
            i += 4
        return sep.join(p for p in out if p)

    def card(self) -> str:
        number, groups = self.card_number()
        return self.group(number, groups, self.r.choice(["", " ", " ", "-"]))

    def card_hard_negative(self) -> str:
        kind = self.r.randrange(6)
        if kind == 0:  # Luhn failure, formatted like a card
            number, groups = self.card_number()
            bad = number[:-1] + str((int(number[-1]) + self.r.randint(1, 9)) % 10)
            return f"order {self.group(bad, groups, self.r.choice([' ', '-']))} shipped"
        if kind == 1:  # Luhn-valid but no card brand starts with 1/7/8/9
            body = self.r.choice("1789") + self.digits(14)
            return f"tracking number {body + _luhn_check_digit(body)}"
        if kind == 2:
            return self.r.choice(
                [
                    f"card ending in {self.digits(4)}",
                    f"**** **** **** {self.digits(4)}",
                    f"XXXX-XXXX-XXXX-{self.digits(4)}",
                ]
            )
        if kind == 3:  # epoch milliseconds
            return f"ts={1_700_000_000_000 + self.r.randint(0, 99_999_999_999)}"
        if kind == 4:
            return f"Tracking: 1Z{self.alnum(6, string.ascii_uppercase + string.digits)}{self.digits(10)}"
        return f"invoice INV-{self.digits(4)}-{self.digits(6)} for {self.digits(2)} seats"

    def card_sentence(self) -> str:
        c = self.card()
        return self.pick(
            [
                f"Please charge the card {c} for the renewal.",
                f"My visa is {c}, expiry 09/27.",
                f'{{"card_number": "{c}", "cvv": "***"}}',
                f"cc={c}",
                f"The customer read out {c} over the phone.",
                f"Card on file: {c}",
            ]
        )

    # ---- IBAN --------------------------------------------------------------------------
    def iban(self, broken: bool = False) -> str:
        country = self.r.choice(list(_IBAN_BBAN))
        bban = ""
        spec = _IBAN_BBAN[country]
        num = ""
        for ch in spec:
            if ch.isdigit():
                num += ch
                continue
            n = int(num)
            num = ""
            alphabet = {
                "n": string.digits,
                "a": string.ascii_uppercase,
                "c": string.digits + string.ascii_uppercase,
            }[ch]
            bban += "".join(self.r.choice(alphabet) for _ in range(n))
        check = _iban_check(country, bban)
        if broken:  # change one character of the BBAN: mod-97 always fails then
            last = bban[-1]
            swap = (
                str((int(last) + 1) % 10)
                if last.isdigit()
                else "A"
                if last == "Z"
                else chr(ord(last) + 1)
            )
            bban = bban[:-1] + swap
        compact = country + check + bban
        if self.r.random() < 0.5:
            return compact
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))

    def iban_sentence(self) -> str:
        x = self.iban()
        return self.pick(
            [
                f"Please wire the refund to IBAN {x}.",
                f"IBAN: {x}",
                f"Bank details: {x} (BIC on the invoice).",
                f'"iban": "{x}"',
                f"Kontoinhaber {self.pick(LAST)}, {x}",
            ]
        )

    def iban_hard_negative(self) -> str:
        kind = self.r.randrange(4)
        if kind == 0:
            return f"the old account {self.iban(broken=True)} was closed"
        if kind == 1:
            return f"part AB{self.digits(2)} XK{self.digits(2)} {self.digits(4)} is on backorder"
        if kind == 2:
            return "we are ISO 27001 and SOC 2 certified"
        return f"batch ID GB{self.digits(2)}{self.alnum(8, string.ascii_uppercase)}{self.digits(4)} rolled back"

    # ---- US SSN ------------------------------------------------------------------------
    def ssn_parts(self) -> tuple[str, str, str]:
        area = self.r.randint(1, 899)
        while area == 666:
            area = self.r.randint(1, 899)
        return f"{area:03d}", f"{self.r.randint(1, 99):02d}", f"{self.r.randint(1, 9999):04d}"

    def ssn_sentence(self) -> str:
        a, g, s = self.ssn_parts()
        if self.r.random() < 0.75:
            x = f"{a}-{g}-{s}"
            return self.pick(
                [
                    f"SSN {x}",
                    f"Her social security number is {x}.",
                    f"applicant: {self.pick(FIRST)} {self.pick(LAST)}, {x}, DOB 1984-02-11",
                    f'"ssn": "{x}"',
                    f"The form lists {x} as the taxpayer id.",
                ]
            )
        return self.pick(
            [
                f"SSN: {a}{g}{s}",
                f"ssn {a} {g} {s}",
                f"Social Security No. {a}{g}{s}",
            ]
        )

    def ssn_hard_negative(self) -> str:
        a, g, s = self.ssn_parts()
        return self.pick(
            [
                f"id 000-{g}-{s} is a placeholder",
                f"666-{g}-{s}",
                f"ref 9{self.digits(2)}-{g}-{s}",
                f"{a}-00-{s}",
                f"{a}-{g}-0000",
                f"ZIP 94107-{self.digits(4)}",
                f"ISBN 0-306-40615-{self.digits(1)}",
                f"order 4829{self.digits(5)} is late",
            ]
        )

    # ---- e-mail ------------------------------------------------------------------------
    def email(self) -> str:
        f, last = self.name()
        dom = self.pick(DOMAINS)
        local = self.pick(
            [
                f"{f}.{last}".lower(),
                f"{f[0]}{last}".lower(),
                f"{f.lower()}+{self.pick(['news', 'billing', 'test'])}",
                f"{f.lower()}_{last.lower()}{self.r.randint(1, 99)}",
                f"{f}.{last}",
            ]
        )
        if self.r.random() < 0.1:
            dom = dom.upper() if self.r.random() < 0.3 else dom.capitalize()
        return f"{local}@{dom}"

    def email_sentence(self) -> str:
        e = self.email()
        f, last = self.name()
        return self.pick(
            [
                f"Please reply to {e} with the updated quote.",
                f"From: {f} {last} <{e}>",
                f"contact: mailto:{e}",
                f'{{"user": "{e}", "plan": "pro"}}',
                f"cc {e} on the thread.",
                f"Her address is {e}.",
                f"user={e}",
            ]
        )

    def email_hard_negative(self) -> str:
        return self.pick(
            [
                "![logo](assets/icon@2x.png)",
                'background: url("img/hero@3x.webp");',
                f"thanks @{self.pick(FIRST).lower()} for the review",
                "@app.route('/health')",
                "git clone git@github.com:acme/billing-api.git",
                "ssh deploy@localhost",
                "npm install lodash@4.17.21",
                "scores = q@k.transpose(-2, -1)",
                "write to support at example dot com",
                "pip install 'requests @ git+https://example.com/requests.git'",
                "@dataclass(frozen=True)",
            ]
        )

    # ---- phone -------------------------------------------------------------------------
    def nanp(self) -> tuple[str, str, str]:
        return f"{self.r.randint(2, 9)}{self.digits(2)}", "555", f"01{self.digits(2)}"

    def phone(self, strong: bool) -> str:
        a, x, n = self.nanp()
        if strong:
            return self.pick(
                [
                    f"({a}) {x}-{n}",
                    f"{a}-{x}-{n}",
                    f"{a}.{x}.{n}",
                    f"+1 {a} {x} {n}",
                    f"+1-{a}-{x}-{n}",
                    f"+1 ({a}) {x}-{n}",
                    f"+1{a}{x}{n}",
                    f"1-800-{x}-{n}",
                    f"+44 20 7946 0{self.digits(3)}",
                    f"+44 7700 900{self.digits(3)}",
                    f"+49 30 {self.digits(8)}",
                    f"+33 1 {self.digits(2)} {self.digits(2)} {self.digits(2)} {self.digits(2)}",
                    f"+91 98765 {self.digits(5)}",
                    f"+61 2 9876 {self.digits(4)}",
                    f"+81 3-1234-{self.digits(4)}",
                    f"+353 1 234 {self.digits(4)}",
                    f"{a}-{x}-{n} x{self.digits(self.r.randint(2, 4))}",
                    f"+1 {a} {x} {n} ext. {self.digits(3)}",
                    f"+44 (0)20 7946 0{self.digits(3)}",
                    f"0044 20 7946 0{self.digits(3)}",
                    f"(020) 7946 0{self.digits(3)}",
                    f"(0161) 496 0{self.digits(3)}",
                ]
            )
        return self.pick(
            [
                f"{a} {x} {n}",
                f"020 7946 0{self.digits(3)}",
                f"07700 900{self.digits(3)}",
                f"030 {self.digits(8)}",
                f"01 {self.digits(2)} {self.digits(2)} {self.digits(2)} {self.digits(2)}",
                f"{a}{x}{n}",
                f"0207946{self.digits(4)}",
            ]
        )

    def phone_sentence(self) -> str:
        strong = self.r.random() < 0.7
        p = self.phone(strong)
        with_context = [
            f"Call me at {p} after 5.",
            f"phone: {p}",
            f"Tel. {p}",
            f"mobile {p}",
            f"You can reach me on {p}.",
            f"My cell is {p}.",
            f"fax {p}",
            f"WhatsApp: {p}",
            f'"phone": "{p}"',
        ]
        bare = [
            f"{self.pick(FIRST)} {self.pick(LAST)}, {p}, {self.pick(CITIES)}",
            f"Escalations go to {p} during office hours.",
            f"({self.pick(TEAMS)} desk {p})",
        ]
        return self.pick(with_context + bare if strong else with_context)

    def phone_hard_negative(self) -> str:
        return self.pick(
            [
                f"on 2024-0{self.r.randint(1, 9)}-1{self.r.randint(0, 9)} at 10:32:05",
                f"due 03/1{self.r.randint(0, 9)}/2025",
                f"see 15.0{self.r.randint(1, 9)}.2024",
                f"ts 2024-03-15T10:32:{self.r.randint(10, 59)}Z",
                f"budget €12 345 6{self.digits(2)}",
                f"revenue 1,234,{self.digits(3)}",
                f"pages 120-1{self.digits(2)}",
                "ISBN 978-0-13-468599-1",
                f"build 2024.05.{self.digits(3)}",
                f"ZIP 10001-{self.digits(4)}",
                f"+{self.r.randint(10, 400)} -{self.r.randint(10, 99)} lines changed",
                f"coordinates 37.7749, -122.4{self.digits(3)}",
                "batch sizes 256 512 1024",
                "resolution 1920 1080",
                f"PO 45000{self.digits(5)}",
                f"ref 00{self.digits(18)}",
                f"(01) {self.digits(3)}",
                "call back in 15 minutes",
                f"order number 2{self.digits(9)}",
                f"call the endpoint {self.r.randint(2, 9)} times",
                f"version {self.r.randint(1, 9)}.{self.r.randint(0, 20)}.{self.r.randint(0, 9)}",
            ]
        )

    # ---- IP addresses ------------------------------------------------------------------
    def ipv4(self) -> str:
        return self.pick(
            [
                f"10.{self.r.randint(0, 255)}.{self.r.randint(0, 255)}.{self.r.randint(1, 254)}",
                f"192.168.{self.r.randint(0, 255)}.{self.r.randint(1, 254)}",
                f"172.{self.r.randint(16, 31)}.{self.r.randint(0, 255)}.{self.r.randint(1, 254)}",
                f"203.0.113.{self.r.randint(1, 254)}",
                f"198.51.100.{self.r.randint(1, 254)}",
                f"{self.r.randint(11, 223)}.{self.r.randint(0, 255)}.{self.r.randint(0, 255)}.{self.r.randint(1, 254)}",
            ]
        )

    def ipv6(self) -> str:
        h = lambda: f"{self.r.randint(1, 0xFFFF):x}"  # noqa: E731
        return self.pick(
            [
                f"2001:db8:{h()}::{h()}:{h()}",
                f"2001:0db8:{h():0>4}:0000:0000:{h():0>4}:{h():0>4}:{h():0>4}",
                f"fe80::{h()}:{h()}:{h()}:{h()}",
                f"2001:db8::{h()}",
                f"2a02:{h()}:{h()}:{h()}:{h()}:{h()}:{h()}:{h()}",
            ]
        )

    def ip_sentence(self) -> str:
        ip = self.ipv6() if self.r.random() < 0.2 else self.ipv4()
        v4 = ":" not in ip
        forms = [
            f"The server at {ip} stopped responding.",
            f"client_ip={ip}",
            f"allow from {ip}",
            f"Accepted publickey for deploy from {ip} port 5{self.digits(4)} ssh2",
            f'"remote_addr": "{ip}"',
        ]
        if v4:
            forms += [
                f"ssh admin@{ip}",
                f"curl http://{ip}:8080/health",
                f"allow {ip}/32",
                f"host: {ip}",
            ]
        else:
            forms += [f"curl http://[{ip}]:8080/health"]
        return self.pick(forms)

    def ip_hard_negative(self) -> str:
        v = ".".join(str(self.r.randint(0, 12)) for _ in range(4))
        return self.pick(
            [
                f"version {v}",
                f"upgrade to v{v}",
                f"Version: {v}",
                f"release {v} is out",
                f"pip install acme-sdk=={v}",
                f"see section {v} of the contract",
                "OID 1.3.6.1.4.1.311.21.7",
                f"build {v}",
                f"firmware {v}",
                f"app_version={v}",
                "1.2.3.4.5",
                "10.0.0 is not a full address",
                "MAC 00:1a:2b:3c:4d:5e",
                f"at 12:{self.r.randint(10, 59)}:{self.r.randint(10, 59)}",
                "std::vector<int> xs;",
                "evens = xs[::2]",
                "Foo::Bar::baz()",
                "ab:cd:ef",
            ]
        )

    # ---- secrets -----------------------------------------------------------------------
    def secret(self) -> str:
        up = string.ascii_uppercase
        an = string.ascii_letters + string.digits
        url = an + "_-"
        kind = self.r.randrange(11)
        if kind == 0:
            return self.r.choice(["AKIA", "ASIA"]) + self.alnum(16, up + "234567")
        if kind == 1:
            return "gh" + self.r.choice("pousr") + "_" + self.alnum(36, an)
        if kind == 2:
            return "github_pat_" + self.alnum(22, an) + "_" + self.alnum(59, an)
        if kind == 3:
            return f"xox{self.r.choice('bpa')}-{self.digits(12)}-{self.digits(13)}-{self.alnum(24, an)}"
        if kind == 4:
            return (
                "https://hooks.slack.com/services/T"
                + self.alnum(9, up + string.digits)
                + "/B"
                + self.alnum(9, up + string.digits)
                + "/"
                + self.alnum(24, an)
            )
        if kind == 5:
            return "sk-" + self.alnum(48, an)
        if kind == 6:
            return "sk-proj-" + self.alnum(self.r.randint(100, 150), url)
        if kind == 7:
            return "sk-ant-api03-" + self.alnum(93, url) + "AA"
        if kind == 8:
            label = self.r.choice(
                ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"]
            )
            body = "\n".join(self.alnum(64, an + "+/") for _ in range(self.r.randint(2, 5)))
            return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----"
        if kind == 9:
            header = _b64url(b'{"alg":"HS256","typ":"JWT"}')
            claims = json.dumps(
                {"sub": self.digits(8), "name": self.pick(FIRST), "iat": 1_716_000_000}
            ).encode()
            return f"{header}.{_b64url(claims)}.{self.alnum(43, url)}"
        return "aws_secret_access_key = " + self.alnum(40, an + "+/")

    def secret_sentence(self) -> str:
        s = self.secret()
        if s.startswith("-----BEGIN") or s.startswith("aws_secret"):
            return s
        return self.pick(
            [
                f"export API_TOKEN={s}",
                f"Authorization: Bearer {s}",
                f'token = "{s}"',
                f"It fails with my key {s} — what am I doing wrong?",
                f"  api_key: {s}",
            ]
        )

    def secret_hard_negative(self) -> str:
        hexd = "0123456789abcdef"
        return self.pick(
            [
                "-----BEGIN PUBLIC KEY-----\n" + self.alnum(64) + "\n-----END PUBLIC KEY-----",
                "-----BEGIN CERTIFICATE-----\n" + self.alnum(64) + "\n-----END CERTIFICATE-----",
                "from sklearn.linear_model import LogisticRegression  # sk-learn",
                "queue: task-runner-worker-pool-default-queue-eu-west",
                "xoxo-hugs from the whole team",
                "export GITHUB_TOKEN=ghp_<your-token-here>",
                "export OPENAI_API_KEY=sk-your-openai-api-key-goes-here",
                "set AWS_ACCESS_KEY_ID to the AKIA... value from the console",
                f"commit {self.alnum(40, hexd)}",
                f"sha256:{self.alnum(64, hexd)}",
                f"request_id={self.alnum(8, hexd)}-{self.alnum(4, hexd)}-4{self.alnum(3, hexd)}-a{self.alnum(3, hexd)}-{self.alnum(12, hexd)}",
                "header eyJhbGciOiJIUzI1NiJ9 decodes to the algorithm",
                f"blob {base64.b64encode(self.alnum(45).encode()).decode()}",
                "Authorization: Bearer <token>",
            ]
        )

    # ---- blocks ------------------------------------------------------------------------
    def code_block(self, b: _Builder) -> None:
        host_pos = self.r.random() < 0.5
        host = self.ipv4() if host_pos else self.pick(["db.internal", "localhost", "redis"])
        fn = self.pick(["load_config", "parse_rows", "retry_request", "normalise"])
        b.add(
            "```python\n"
            "import os\nfrom dataclasses import dataclass\n\n"
            "@dataclass(frozen=True)\nclass Settings:\n"
            f'    host: str = "{host}"\n'
            "    port: int = 5432\n    timeout_s: float = 2.5\n\n"
            f"def {fn}(rows, limit=100, *, strict=False):\n"
            "    out = []\n    for i, row in enumerate(rows[:limit]):\n"
            "        if strict and not row:\n"
            '            raise ValueError(f"empty row {i}")\n'
            "        out.append(row.strip())\n    return out\n```",
            *(["ip_address"] if host_pos else []),
        )

    def log_block(self, b: _Builder) -> None:
        lines = []
        labels: list[str] = []
        for i in range(self.r.randint(6, 18)):
            ts = f"2024-05-{self.r.randint(10, 28)}T{self.r.randint(10, 23)}:{self.r.randint(10, 59)}:{self.r.randint(10, 59)}.{self.digits(3)}Z"
            hexd = "0123456789abcdef"
            rid = self.alnum(16, hexd)
            roll = self.r.random()
            if roll < 0.35:
                ip = self.ipv4() if self.r.random() < 0.85 else self.ipv6()
                labels.append("ip_address")
                extra = f"client={ip}"
            elif roll < 0.45:
                labels.append("email")
                extra = f"user={self.email()}"
            elif roll < 0.55:
                extra = f"app_version={self.r.randint(1, 9)}.{self.r.randint(0, 9)}.{self.r.randint(0, 9)}.{self.r.randint(0, 99)}"
            else:
                extra = f"pid={self.r.randint(100, 65000)} mem={self.r.randint(64, 4096)}MB"
            status = self.pick(["200", "200", "201", "304", "404", "500"])
            lines.append(
                f"{ts} {self.pick(['INFO', 'WARN', 'ERROR'])} [{self.pick(TEAMS)}-svc] "
                f"req={rid} path=/api/v{self.r.randint(1, 3)}/items/{self.r.randint(1, 99999)} "
                f"status={status} dur_ms={self.r.randint(1, 2500)} {extra}"
                + (f" attempt {i}" if i % 5 == 4 else "")
            )
        b.add("Here are the logs:\n" + "\n".join(lines), *labels)

    def customer_table(self, b: _Builder) -> None:
        """A personal-data export: one bulk instance plus the identifiers in its rows."""
        rows = self.r.randint(20, 40)
        style = self.r.randrange(6)
        labels: list[str] = ["bulk_personal_data"]
        out: list[str] = []
        if style == 0:
            out.append("name,email,phone,city")
            for _ in range(rows):
                f, last = self.name()
                out.append(f"{f} {last},{self.email()},{self.phone(True)},{self.pick(CITIES)}")
                labels += ["email", "phone"]
        elif style == 1:
            wide = self.r.random() < 0.5
            out.append(
                "first_name\tlast_name\tdepartment" + ("\tstart_date\tmanager" if wide else "")
            )
            for _ in range(rows):
                f, last = self.name()
                out.append(
                    f"{f}\t{last}\t{self.pick(TEAMS)}"
                    + (
                        f"\t2021-0{self.r.randint(1, 9)}-1{self.r.randint(0, 9)}\t{self.pick(LAST)}"
                        if wide
                        else ""
                    )
                )
        elif style == 2:
            for i in range(rows):
                f, last = self.name()
                out.append(
                    json.dumps(
                        {
                            "id": i + 1,
                            "name": f"{f} {last}",
                            "email": self.email(),
                            "country": self.pick(["DE", "FR", "US", "GB"]),
                        }
                    )
                )
                labels.append("email")
        elif style == 3:
            out.append("| Name | Email | Phone | Plan |")
            out.append("|---|---|---|---|")
            for _ in range(rows):
                f, last = self.name()
                out.append(
                    f"| {f} {last} | {self.email()} | {self.phone(True)} | {self.pick(['pro', 'team'])} |"
                )
                labels += ["email", "phone"]
        elif style == 5:  # no header: names and postal addresses
            for i in range(rows):
                f, last = self.name()
                out.append(
                    f"{i + 1},{f},{last},{self.r.randint(1, 999)} {self.pick(STREETS)} "
                    f"{self.pick(['St', 'Street', 'Ave', 'Road'])},{self.pick(['NY', 'CA', 'TX', 'WA'])}"
                )
        else:
            out.append("customer_id;full_name;phone;street;zip")
            for i in range(rows):
                f, last = self.name()
                out.append(
                    f"C{1000 + i};{f} {last};{self.phone(False) if self.r.random() < 0.5 else self.phone(True)};{self.r.randint(1, 200)} Main St;{self.digits(5)}"
                )
                labels.append("phone")
        b.add(
            self.pick(["Clean up this export:", "Dedupe these rows:", "Find the typos here:"])
            + "\n"
            + "\n".join(out),
            *labels,
        )

    def email_list(self, b: _Builder) -> None:
        n = self.r.randint(10, 30)
        emails = [self.email() for _ in range(n)]
        b.add(
            "Send the launch note to: " + ", ".join(emails), *(["email"] * n), "bulk_personal_data"
        )

    def non_personal_table(self, b: _Builder) -> None:
        rows = self.r.randint(20, 50)
        style = self.r.randrange(6)
        out: list[str] = []
        if style == 0:
            out.append("timestamp,host,cpu_pct,mem_mb,disk_pct")
            for _ in range(rows):
                out.append(
                    f"2024-05-{self.r.randint(10, 28)}T{self.r.randint(10, 23)}:00:00Z,web-{self.r.randint(1, 9)},{self.r.randint(1, 99)}.{self.r.randint(0, 9)},{self.r.randint(128, 8192)},{self.r.randint(10, 95)}"
                )
        elif style == 1:
            out.append("order_id,sku,qty,unit_price,currency")
            for i in range(rows):
                out.append(
                    f"ORD-20240{self.r.randint(1, 9)}{self.r.randint(10, 28)}-{i:04d},SKU-{self.digits(4)}-{self.pick(['S', 'M', 'L', 'XL'])},{self.r.randint(1, 20)},{self.r.randint(1, 300)}.{self.digits(2)},EUR"
                )
        elif style == 2:
            out.append("POINTS = [")
            for _ in range(rows):
                out.append(
                    f"    ({self.r.randint(0, 999)}, {self.r.randint(0, 999)}, {self.r.randint(0, 255)}, {self.r.random():.3f}),"
                )
            out.append("]")
        elif style == 4:  # capitalised words, but products, not people
            out.append("product,colour,size,price")
            for _ in range(rows):
                out.append(
                    f"{self.pick(['Widget', 'Gadget', 'Sprocket', 'Lamp', 'Chair'])},"
                    f"{self.pick(['Blue', 'Red', 'Black', 'Oak'])},"
                    f"{self.pick(['Small', 'Large', 'Medium'])},{self.r.randint(1, 99)}.99"
                )
        elif style == 5:  # no header: places and numbers
            for _ in range(rows):
                out.append(
                    f"{self.pick(CITIES)},{self.pick(['Germany', 'France', 'Japan', 'Canada'])},"
                    f"{self.pick(['Europe', 'Asia', 'America'])},{self.r.randint(1, 9)}.{self.digits(1)}"
                )
        else:
            out.append("| region | quarter | revenue | margin |")
            out.append("|---|---|---|---|")
            for _ in range(rows):
                out.append(
                    f"| {self.pick(['EMEA', 'APAC', 'AMER'])} | Q{self.r.randint(1, 4)} | {self.r.randint(100, 999)}k | {self.r.randint(5, 40)}% |"
                )
        b.add("Summarise this table:\n" + "\n".join(out))

    def few_emails(self, b: _Builder) -> None:
        n = self.r.randint(2, 8)
        b.add("cc: " + ", ".join(self.email() for _ in range(n)), *(["email"] * n))

    # ---- documents ---------------------------------------------------------------------
    def document(self) -> Doc:
        kind = self.r.choices(
            ["chat", "support", "code", "logs", "table", "clean"], weights=[25, 20, 15, 12, 13, 15]
        )[0]
        b = _Builder(kind)
        positives: list[tuple[Callable[[], str], str]] = [
            (self.card_sentence, "payment_card"),
            (self.iban_sentence, "iban"),
            (self.ssn_sentence, "us_ssn"),
            (self.email_sentence, "email"),
            (self.phone_sentence, "phone"),
            (self.ip_sentence, "ip_address"),
            (self.secret_sentence, "secret"),
        ]
        negatives = [
            self.card_hard_negative,
            self.iban_hard_negative,
            self.ssn_hard_negative,
            self.email_hard_negative,
            self.phone_hard_negative,
            self.ip_hard_negative,
            self.secret_hard_negative,
        ]
        if kind == "support":
            f, _ = self.name()
            b.add(f"Hi {f},")
        b.add(self.prose(1, 4))
        if kind == "code":
            self.code_block(b)
        elif kind == "logs":
            self.log_block(b)
        elif kind == "table":
            r = self.r.random()
            if r < 0.45:
                self.customer_table(b)
            elif r < 0.6:
                self.email_list(b)
            elif r < 0.75:
                self.few_emails(b)
            else:
                self.non_personal_table(b)
        n_pos = 0 if kind == "clean" else self.r.choice([0, 1, 1, 2, 2, 3])
        n_neg = self.r.choice([1, 2, 3, 4])
        items: list[tuple[str, str | None]] = []
        for _ in range(n_pos):
            make, cls = self.r.choice(positives)
            items.append((make(), cls))
        for _ in range(n_neg):
            items.append((self.r.choice(negatives)(), None))
        self.r.shuffle(items)
        for text, label in items:
            b.add(text, *([label] if label else []))
            if self.r.random() < 0.5:
                b.add(self.sentence())
        if kind == "support":
            b.add(
                self.pick(["Best regards,", "Kind regards,", "Cheers,"]) + f"\n{self.pick(FIRST)}"
            )
        return b.doc(sep=self.pick([" ", "\n", "\n\n"]))


def build_corpus(n_docs: int = 1200, seed: int = SEED) -> list[Doc]:
    s = Synth(seed)
    return [s.document() for _ in range(n_docs)]


@dataclass(frozen=True)
class Score:
    """Count-based scores for one class: per document, min(predicted, true) instances are
    true positives, the excess of predictions false positives, the shortfall false negatives.
    Detectors report counts, not spans, so this is the comparison both sides support."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def score(
    docs: list[Doc], predictions: list[dict[str, int]], classes: tuple[str, ...] = CLASSES
) -> dict[str, Score]:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for d, pred in zip(docs, predictions, strict=True):
        for c in classes:
            p, t = pred.get(c, 0), d.labels.get(c, 0)
            tp[c] += min(p, t)
            fp[c] += max(0, p - t)
            fn[c] += max(0, t - p)
    return {c: Score(tp[c], fp[c], fn[c]) for c in classes}


def totals(docs: list[Doc]) -> Counter[str]:
    c: Counter[str] = Counter()
    for d in docs:
        c.update(d.labels)
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    docs = build_corpus(args.docs, args.seed)
    with args.out.open("w") as f:
        for d in docs:
            f.write(json.dumps({"kind": d.kind, "text": d.text, "labels": d.labels}) + "\n")
    size = sum(len(d.text.encode()) for d in docs)
    print(f"{len(docs)} docs, {size / 1e6:.2f} MB, positives: {dict(totals(docs))}")
