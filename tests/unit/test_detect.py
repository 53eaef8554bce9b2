from __future__ import annotations

import pytest

from services.redactor.detect import iban_ok, luhn_ok, scan_all


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        ("pay with 4111 1111 1111 1111 today", "payment_card"),
        ("card 5500-0000-0000-0004", "payment_card"),
        ("IBAN DE89 3704 0044 0532 0130 00", "iban"),
        ("GB82WEST12345698765432", "iban"),
        ("ssn 123-45-6789", "us_ssn"),
        ("write to jane.doe@example.org", "email"),
        ("call +1 415-555-0100", "phone"),
        ("server at 192.168.10.20", "ip_address"),
        ("AKIAIOSFODNN7EXAMPLE", "secret"),
        ("ghp_" + "A1b2" * 9, "secret"),
        ("xoxb-1234567890-abcdefghij", "secret"),
        ("sk-proj-" + "x" * 40, "secret"),
        ("-----BEGIN RSA PRIVATE KEY-----", "secret"),
        (
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "secret",
        ),
    ],
)
def test_detects(text: str, cls: str) -> None:
    assert cls in scan_all(text)


@pytest.mark.parametrize(
    "text",
    [
        "order 1234 5678 9012 3456 shipped",  # fails Luhn
        "DE00 3704 0044 0532 0130 00",  # fails mod-97
        "ssn 000-12-3456",
        "the build took 12 minutes",
        "",
    ],
)
def test_rejects_lookalikes(text: str) -> None:
    found = scan_all(text)
    assert "payment_card" not in found and "iban" not in found and "us_ssn" not in found


def test_bulk_personal_data() -> None:
    emails = " ".join(f"user{i}@example.com" for i in range(12))
    assert scan_all(emails).get("bulk_personal_data") == 1
    rows = "\n".join(f"{i},Jane,Doe,Main St {i},NY" for i in range(25))
    assert scan_all(rows).get("bulk_personal_data") == 1


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")


def test_returns_counts_not_text() -> None:
    out = scan_all("a@b.co c@d.co 4111 1111 1111 1111")
    assert out == {"email": 2, "payment_card": 1}
    assert all(isinstance(v, int) for v in out.values())


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        ("call +44 20 7946 0958 tomorrow", "phone"),
        ("(415) 555-0132", "phone"),
        ("Tel: 020 7946 0958", "phone"),
        ('{"to": "+14155550132"}', "phone"),
        ("reach me on 07700 900123", "phone"),
        ("peer 2001:db8::8a2e:370:7334 dropped", "ip_address"),
        ("curl http://[fe80::1ff:fe23:4567:890a]:8080/", "ip_address"),
        ("allow 10.0.0.0/8", "ip_address"),
        ("Bank: GB29 NWBK 6016 1331 9268 19", "iban"),
        ("amex 3782 822463 10005", "payment_card"),
        ("SSN: 123456789", "us_ssn"),
        ("https://hooks.slack.com/services/T0ABCDEFG/B0ABCDEFG/abcdefghijklmnopqrstuvwx", "secret"),
        ("github_pat_" + "a1B2" * 6 + "_" + "Zz9" * 20, "secret"),
        ("sk-ant-api03-" + "Ab3_" * 24, "secret"),
        ("aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "secret"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n", "secret"),
    ],
)
def test_detects_more_formats(text: str, cls: str) -> None:
    assert cls in scan_all(text), text


@pytest.mark.parametrize(
    "text",
    [
        "upgrade to version 1.2.3.4 first",
        "pip install acme==1.2.3.4",
        "see section 4.2.1.3 of the contract",
        "OID 1.3.6.1.4.1.311.21.7",
        "app_version=2.10.0.7",
        "![logo](assets/icon@2x.png)",
        "git clone git@github.com:acme/api.git",
        "@app.route('/health')",
        "npm install lodash@4.17.21",
        "scores = q@k.transpose(-2, -1)",
        "shipped on 2024-05-15 at 10:32:05",
        "call back in 15 minutes",
        "ISBN 978-0-13-468599-1",
        "build 2024.05.123",
        "+123 -45 lines changed",
        "order number 2345678901",
        "batch sizes 256 512 1024",
        "ZIP 94107-1234",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----",
        "from sklearn import svm  # sk-learn",
        "export OPENAI_API_KEY=sk-your-openai-api-key-goes-here",
        "xoxo-hugs from the team",
        "export GITHUB_TOKEN=ghp_<your-token-here>",
        "std::vector<int> xs; evens = xs[::2]",
        "MAC 00:1a:2b:3c:4d:5e at 12:30:45",
        "tracking number 9400111899223397",
        "card ending in 4242",
        "ts=1718031234567",
    ],
)
def test_hard_negatives_find_nothing(text: str) -> None:
    assert scan_all(text) == {}, text


def test_table_of_people_is_bulk_but_table_of_metrics_is_not() -> None:
    people = "first_name\tlast_name\tdepartment\n" + "\n".join(
        f"Ann{i}\tLee\tsales" for i in range(25)
    )
    assert scan_all(people).get("bulk_personal_data") == 1
    metrics = "timestamp,host,cpu_pct,mem_mb\n" + "\n".join(
        f"2024-05-01T10:{i:02d}:00Z,web-1,{i}.5,{512 + i}" for i in range(40)
    )
    assert "bulk_personal_data" not in scan_all(metrics)


def test_every_engine_gives_the_same_counts() -> None:
    from services.redactor import detect

    texts = [
        "pay 4111 1111 1111 1111, mail a@b.co, call (415) 555-0132, host 10.0.0.1",
        "Tel: 020 7946 0958 / SSN: 123456789 / DE89 3704 0044 0532 0130 00 é ٣",
        "version 1.2.3.4 and 2001:db8::1 and sk-" + "a1B2" * 10,
    ]
    engines = detect.available_engines()
    try:
        results = {}
        for name in engines:
            assert detect.set_engine(name)
            assert detect.engine() == name
            results[name] = [scan_all(t) for t in texts]
        assert all(r == results["re"] for r in results.values()), results
    finally:
        detect.set_engine(engines[0])


def test_native_core_is_built() -> None:
    """Never skipped: scripts/bootstrap.sh builds the core, so a missing one is a failed
    build, and the redactor would run 3-5x slower without it."""
    from services.redactor import detect

    assert "native" in detect.available_engines(), (
        "trustlog_detect is not importable: run scripts/bootstrap.sh (it needs cargo)"
    )
    assert detect.engine() == "native"  # the default wherever it is built


def test_every_secret_pattern_needs_one_of_the_secret_literals() -> None:
    """The native core scans digit-free text for secrets only from the first of
    _SECRET_LITERALS it finds (with its case and word-boundary rule): each alternative of
    _SECRET must require one. Checked on a sample of every alternative: with the literal cut
    out, or a letter put before it where the list says none may stand, nothing matches."""
    import re

    from services.redactor import detect

    samples = [
        "-----BEGIN RSA PRIVATE KEY-----",
        "AKIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE", "AGPAIOSFODNN7EXAMPLE",
        "AIDAIOSFODNN7EXAMPLE", "AROAIOSFODNN7EXAMPLE", "AIPAIOSFODNN7EXAMPLE",
        "ANPAIOSFODNN7EXAMPLE", "ANVAIOSFODNN7EXAMPLE", "APKAIOSFODNN7EXAMPLE",
        *(f"gh{c}_" + "a" * 36 for c in "pousr"),
        "github_pat_" + "a" * 22,
        *(f"xox{c}-1234567890" for c in "abeprs"),
        "https://hooks.slack.com/services/T0123456/B0123456/abcdefghijklmnopqrstuvwx",
        "sk-proj-" + "a" * 20, "sk-" + "aB3" * 11, "sk-ant-" + "a" * 20,
        "eyJhbGciOiJI.eyJzdWIiOiJ.abcdefghijk",
        "AWS_SECRET_ACCESS_KEY = " + "A" * 40, "aws_secret_access_key: " + "b" * 40,
    ]  # fmt: skip
    for text in samples:
        assert detect._SECRET.search(text), text
        hits = [
            (lit, caseless, word_ok)
            for lit, caseless, word_ok in detect._SECRET_LITERALS
            if (lit.lower() in text.lower() if caseless else lit in text)
        ]
        assert hits, f"no literal in {text!r}"
        cut = text
        for lit, caseless, _ in hits:
            cut = re.sub(re.escape(lit), "", cut, flags=re.IGNORECASE if caseless else 0)
        assert not detect._SECRET.search(cut), f"{text!r} matches without its literal"
        if not any(word_ok for _, _, word_ok in hits):
            glued = text
            for lit, _, _ in hits:
                glued = glued.replace(lit, "q" + lit)
            assert not detect._SECRET.search(glued), f"{glued!r} matches after a letter"


def test_unknown_or_missing_engine_is_refused() -> None:
    from services.redactor import detect

    with pytest.raises(ValueError, match="unknown detection engine"):
        detect.set_engine("presidio")
    before = detect.engine()
    for name in set(detect.ENGINES) - set(detect.available_engines()):
        assert not detect.set_engine(name)
        assert detect.engine() == before


def test_phone_column_header_is_found_after_other_phone_words() -> None:
    """Bare numbers count in the rows of a table whose header names a phone column, also when
    a phone word comes earlier in prose; a header word with no delimiter after it on its
    line does not make a header."""
    from services.redactor import detect

    rows = "".join(f"Ann{i},0301234{i:03d},Berlin\n" for i in range(3))
    engines = detect.available_engines()
    try:
        for name in engines:
            detect.set_engine(name)
            assert scan_all("Please phone me later.\nname,phone,city\n" + rows) == {"phone": 3}
            assert scan_all("a,b,phone\n" + rows) == {}
    finally:
        detect.set_engine(engines[0])
