"""Keyed pseudonyms under versioned keys (docs/identity.md).

A pseudonym is ``p_`` + the first 128 bits of HMAC-SHA256(key, normalised user id), and every
redacted event records the key version that made it. Rotation is a settings change:
``TRUSTLOG_PSEUDONYM_KEYS`` holds every version still needed, ``TRUSTLOG_PSEUDONYM_KEY_VERSION``
picks the one new events get. :func:`pseudonyms_for` computes a person's pseudonym under every
configured version, so their own view or an incident can span a rotation.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from trustlog.settings import RedactorSettings

PREFIX = "p_"
HEX_CHARS = 32  # 128 bits: collisions are irrelevant at any realistic head count
# Pseudonyms remembered per Pseudonymizer: the same people call all day, and an HMAC per
# event was a tenth of the redactor's own work. Bounded; cleared whole when full.
CACHE_ENTRIES = 100_000


def normalize_user_id(user_id: str) -> str:
    """One person, one pseudonym: producers differ in case and stray whitespace."""
    return user_id.strip().casefold()


def pseudonym(key: bytes, user_id: str) -> str:
    mac = hmac.new(key, normalize_user_id(user_id).encode(), hashlib.sha256)
    return PREFIX + mac.hexdigest()[:HEX_CHARS]


class Pseudonymizer:
    """HMAC-SHA256 of the normalised user id under the current key version.

    A keyed hash, not a plain or salted one: user ids come from a small, guessable space,
    so without the key nobody can test candidate names against pseudonyms.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(
                f"pseudonym key version {current!r} is not configured "
                "(set TRUSTLOG_PSEUDONYM_KEYS and TRUSTLOG_PSEUDONYM_KEY_VERSION)"
            )
        self.version = current
        self._keys = dict(keys)
        self._key = keys[current]
        # raw user id -> pseudonym; in the redactor's memory only, which sees the ids anyway
        self._cache: dict[str, str] = {}

    def __call__(self, user_id: str) -> str:
        p = self._cache.get(user_id)
        if p is None:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            p = self._cache[user_id] = pseudonym(self._key, user_id)
        return p

    def all_versions(self, user_id: str) -> dict[str, str]:
        """The person's pseudonym under every configured key version."""
        return {v: pseudonym(k, user_id) for v, k in sorted(self._keys.items())}


def keys_from_settings(s: RedactorSettings) -> dict[str, bytes]:
    return {v: k.get_secret_value().encode() for v, k in s.pseudonym_keys.items()}


def pseudonymizer_from_settings(s: RedactorSettings) -> Pseudonymizer:
    return Pseudonymizer(keys_from_settings(s), s.pseudonym_key_version)


def pseudonyms_for(user_id: str, settings: RedactorSettings | None = None) -> dict[str, str]:
    """``{key version: pseudonym}`` for one user id under every configured key.

    For a person's own view and for incidents: rows made before a rotation carry the old
    version's pseudonym until their TTL, so a lookup must try every version still configured.
    A version removed from the settings can no longer be linked, which is the point of removing it.
    """
    s = settings if settings is not None else RedactorSettings()
    if not normalize_user_id(user_id):
        raise ValueError("empty user id")
    return pseudonymizer_from_settings(s).all_versions(user_id)
