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
