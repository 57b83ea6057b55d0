"""Bearer tokens: their format, how one is made, parsed and hashed.

A token is `acc1.<id>.<secret>`: `id` (16 base64url characters, 12 random bytes) names
the etcd record to look up, `secret` (43 base64url characters, 32 random bytes) proves
possession. etcd keeps only the SHA-256 of the secret. The secret is 256 random bits,
not a password: nobody can guess or brute-force it, so a fast hash is the right one
(a slow password hash such as bcrypt would add its cost to every cache miss for
nothing), and the digest is compared with hmac.compare_digest, in constant time.

Error handling: `parse` raises Unauthenticated for anything that is not a well-formed
token, saying what is wrong with it but never echoing it (it may be someone's secret).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from accord.coordinator.substrate.errors import Unauthenticated

PREFIX = "acc1"
ID_BYTES = 12
SECRET_BYTES = 32
_ID_RE = re.compile(r"[A-Za-z0-9_-]{16}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# The longest text worth parsing: anything longer is refused without looking further.
MAX_TOKEN_CHARS = 128


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    secret: bytes

    def __str__(self) -> str:
        return f"{PREFIX}.{self.id}.{_b64(self.secret)}"

    @property
    def digest(self) -> bytes:
        return digest(self.secret)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def new() -> Token:
    return Token(_b64(secrets.token_bytes(ID_BYTES)), secrets.token_bytes(SECRET_BYTES))


def digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def matches(secret: bytes, stored_digest: bytes) -> bool:
    """Whether secret is the one whose digest is stored, in constant time."""
    return hmac.compare_digest(digest(secret), stored_digest)


def parse(text: str) -> Token:
    """The token in text, or Unauthenticated saying why it is not one."""
    if len(text) > MAX_TOKEN_CHARS:
        raise Unauthenticated(f"the bearer token is too long to be an Accord token ({PREFIX}.…)")
    prefix, _, rest = text.partition(".")
    token_id, _, secret = rest.partition(".")
    if prefix != PREFIX or not _ID_RE.fullmatch(token_id) or not _SECRET_RE.fullmatch(secret):
        raise Unauthenticated(
            f"the bearer token is malformed: an Accord token reads {PREFIX}.<16-character id>."
            "<43-character secret>, as `accord auth token create` printed it",
            metadata={"token": "malformed"},
        )
    try:
        raw = base64.urlsafe_b64decode(secret + "=")
    except (binascii.Error, ValueError):
        raise Unauthenticated("the bearer token's secret is not base64url") from None
    return Token(token_id, raw)
