"""The native detector core (native/, Rust + PCRE2) against its specification, detect.py.

The core runs detect.py's own patterns and ports only the per-candidate checks, so the two
must give the same counts for every text; the one allowed difference is that the core hands
a text back (returns None) when its answer depends on a Unicode rule of Python's ``re``, and
that can only happen for text with non-ASCII characters.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.redactor import detect
from tests.corpus import SEED, build_corpus

pytestmark = pytest.mark.skipif(
    detect._NATIVE is None,
    reason="the native core is not built in this venv (scripts/bootstrap.sh builds it); "
    "tests/unit/test_detect.py::test_native_core_is_built fails instead of skipping",
)


def native(text: str) -> dict[str, int] | None:
    assert detect._NATIVE is not None
    result: dict[str, int] | None = detect._NATIVE.scan(text)
    return result


def python(text: str) -> dict[str, int]:
    return detect._scan_python(text) if text else {}


def test_same_counts_as_python_on_the_corpus() -> None:
    docs = [d.text for d in build_corpus(3000, SEED + 1)]  # not the quality test's seed
    handed_back = [t for t in docs if native(t) is None]
    assert all(not t.isascii() for t in handed_back)
    assert len(handed_back) < len(docs) // 50
    diff = [t[:120] for t in docs if (r := native(t)) is not None and r != python(t)]
    assert not diff, diff[:3]


def test_scan_all_sums_like_python() -> None:
    docs = [d.text for d in build_corpus(200, SEED + 2)]
    for a, b in itertools.pairwise(docs):
        want: dict[str, int] = {}
        for t in (a, None, "", b):
            for c, k in python(t or "").items():
                want[c] = want.get(c, 0) + k
        assert detect.scan_all(a, None, "", b) == want


@pytest.mark.parametrize(
    "text",
    [
        "reach me at jos\u00e9@example.com",  # a non-ASCII letter right before "@"
        "mail a@example.com\u212a today",  # the Kelvin sign, which (?i)[a-z] takes
        "mail a@example.com:\u00e9x",  # a non-ASCII character after "host:"
        "host \u00b21.2.3.4 up",  # str.isdigit() of a superscript two before an address
        "fe80::1.\u0663 link",  # str.isdigit() of an Arabic-Indic digit after an address
        "\ud800 lone surrogate 4111 1111 1111 1111",  # not UTF-8 encodable at all
    ],
)
def test_unicode_rules_go_back_to_python(text: str) -> None:
    assert native(text) is None
    before = detect.handed_back()
    assert detect.scan(text) == python(text)
    assert detect.handed_back() == before + 1


@pytest.mark.parametrize(
    "text",
    [
        "Prix : 4111 1111 1111 1111 \u2014 merci, Jos\u00e9",
        "\u201cCall me\u201d on 020 7946 0958 \U0001f44d",
        "IBAN DE89 3704 0044 0532 0130 00 \u00fcberwiesen",
        "Stra\u00dfe 5, ssn 123-45-6789, mail cafe@example.com, tsch\u00fcss",
        # typography next to the places the Unicode rules look at: neither word nor digit
        "write to \u201cann@example.com\u201d \u2014 or \u2018bob@example.org\u2019",
        "background: url(\u201cimg/hero@2x.png\u201d); host\u00a010.0.0.1 \u2014 ok",
        "mail ann@example.com:\u2014 and \U0001f44d@example.com and fe80::1.\u2014",
        "\n".join(f"Ann{i}, ann{i}@example.com, 12 Main Street \u2014 \u2713" for i in range(25)),
    ],
)
def test_other_non_ascii_text_stays_native(text: str) -> None:
    found = native(text)
    assert found is not None
    assert found == python(text)


# Pieces that exercise every class, the contexts and the Unicode corners; hypothesis strings
# them together with arbitrary text in between.
_PIECES = [
    "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005", "5555555555554444",
    "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "NL91ABNA0417164300",
    "123-45-6789", "SSN: 123456789", "social security number 123 45 6789",
    "ann@example.com", "x@y.io", "icon@2x.png", "git@github.com:org/x", "q@k.transpose",
    "+44 20 7946 0958", "0049 30 901820", "(020) 7946 0958", "01 23 45 67 89",
    "(415) 555-0132", "415-555-0132", "415.555.0132", "phone: 0301234567", "call 4155550132",
    "10.0.0.1", "version 1.2.3.4", "v1.2.3.4", "2001:db8::1", "fe80::", "::1",
    "1:2:3:4:5:6:7:8", "AKIAIOSFODNN7EXAMPLE", "ghp_" + "a" * 36, "sk-" + "a1B2" * 10,
    "xoxb-123456789012-abcdefghij", "eyJhbGciOi.eyJzdWIiOi.abcdefghijk",
    "-----BEGIN RSA PRIVATE KEY-----", "aws_secret_access_key = " + "A" * 40,
    "AwS_SeCrEt_AcCeSs_KeY: " + "b" * 40, "my_aws_secret_access_key=" + "c" * 40,
    "task-sk-" + "aB" * 20, "ask-", "risk-free", "Asia", "ghost_", "eyJust",
    "name,email,phone", "first_name\tlast_name", "12 Main Street", "Hauptstr. 5",
    "Tel", "fax", "ext. 12", "x1234", "\n", ",", ";", "|", "\t", " ", ".", "-", ":", "@",
    "\u00e9", "\u212a", "\u017f", "\u0663", "\u00b2", "\u2014", "\u201c", "\U0001f600",
    "\u0301", "\u00df", "\u0130", "\u00a7",
]  # fmt: skip


@st.composite
def texts(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(
            st.one_of(
                st.sampled_from(_PIECES),
                st.text(max_size=12),
                st.text(alphabet="0123456789 -.+()", max_size=16),
            ),
            max_size=40,
        )
    )
    return "".join(parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts())
def test_generated_text_same_as_python(text: str) -> None:
    found = native(text)
    if found is None:
        assert not text.isascii()
    else:
        assert found == python(text)
    assert detect.scan(text) == python(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts(), min_size=20, max_size=40), st.sampled_from([",", ";", "\t", " | "]))
def test_generated_tables_same_as_python(rows: list[str], delimiter: str) -> None:
    """Many lines at once, so the bulk-data rules (line and delimiter counts, headers,
    addresses) come into play."""
    text = "\n".join(f"{r}{delimiter}{r[::-1]}{delimiter}x" for r in rows)
    found = native(text)
    if found is None:
        assert not text.isascii()
    else:
        assert found == python(text)
