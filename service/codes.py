"""Pickup codes: 6 digits from ``secrets``.

The database never holds a code in a form that opens a cabinet by itself: look-ups use a keyed
hash (HMAC of cabinet and code), and the owner's read-back uses the code masked with a keyed
stream per order (so a dump without the server secret reveals nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


def code_hash(secret: str, cabinet_id: str, code: str) -> bytes:
    return hmac.new(secret.encode(), f"code:{cabinet_id}:{code}".encode(), hashlib.sha256).digest()


def _mask(secret: str, order_id: str) -> int:
    digest = hmac.new(secret.encode(), f"seal:{order_id}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000


def seal(secret: str, order_id: str, code: str) -> str:
    return f"v1:{(int(code) + _mask(secret, order_id)) % 1_000_000:06d}"


def unseal(secret: str, order_id: str, sealed: str) -> str:
    version, _, value = sealed.partition(":")
    if version != "v1":
        raise ValueError("unknown sealing version")
    return f"{(int(value) - _mask(secret, order_id)) % 1_000_000:06d}"
