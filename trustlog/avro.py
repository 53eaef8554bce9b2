"""Avro codec for every topic: fastavro schemaless records in Avro single-object encoding.

Single-object encoding (marker ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + body) makes each
message self-describing without a registry server: a reader finds the writer schema by its
fingerprint, so compatible schema versions can coexist on one topic.
"""

from __future__ import annotations

import io
import json
import struct
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from trustlog.settings import SCHEMAS_DIR

MARKER = b"\xc3\x01"
HEADER_LEN = 10


class DecodeError(ValueError):
    """A message that is not a valid record of a known schema. ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Codec:
    """Encoder/decoder for one record schema (the writer schema) and its known versions."""

    def __init__(self, schema_path: Path) -> None:
        raw = json.loads(schema_path.read_text())
        self.name = schema_path.name.removesuffix(".avsc")
        self.schema = fastavro.parse_schema(raw)
        canonical = to_parsing_canonical_form(raw)
        self.fingerprint = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        # CRC-64-AVRO fingerprints are written little-endian in single-object encoding.
        self.fingerprint = self.fingerprint[::-1]
        self.header = MARKER + self.fingerprint
        self.field_names = [f["name"] for f in raw["fields"]]
        self._readers: dict[bytes, Any] = {self.fingerprint: self.schema}

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        fastavro.schemaless_writer(buf, self.schema, record)
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < HEADER_LEN or data[:2] != MARKER:
            raise DecodeError("not_avro_single_object")
        writer = self._readers.get(data[2:HEADER_LEN])
        if writer is None:
            raise DecodeError("unknown_schema_fingerprint", data[2:HEADER_LEN].hex())
        body = io.BytesIO(data[HEADER_LEN:])
        try:
            # no reader schema for our own: fastavro would compare the two on every call
            rec = fastavro.schemaless_reader(
                body, writer, None if writer is self.schema else self.schema
            )
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid_utf8", type(exc).__name__) from None
        except Exception as exc:  # fastavro raises several types for truncated/garbled input
            raise DecodeError("malformed_avro", type(exc).__name__) from None
        if not isinstance(rec, dict):
            raise DecodeError("malformed_avro", "not a record")
        if body.tell() != len(data) - HEADER_LEN:
            # a valid record followed by junk is not one message: refuse rather than guess
            raise DecodeError("trailing_bytes")
        return rec


@cache
def codec(name: str) -> Codec:
    """``codec("raw_event.v1")`` -> the codec for ``schemas/raw_event.v1.avsc``."""
    return Codec(SCHEMAS_DIR / f"{name}.avsc")


def raw_codec() -> Codec:
    return codec("raw_event.v1")


def redacted_codec() -> Codec:
    return codec("redacted_event.v1")


def signal_codec() -> Codec:
    return codec("signal.v1")


def incident_codec() -> Codec:
    return codec("incident.v1")


def fingerprint_int(c: Codec) -> int:
    return int(struct.unpack("<Q", c.fingerprint)[0])
